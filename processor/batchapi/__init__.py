"""Running a job through OpenAI's Batch API (``batchproc run --via batch``).

Floor 6, beside :mod:`processor.run`; the core never imports it. Parts:
:mod:`.state` (the state file, written before each step), :mod:`.plan` (the job split
into Batch input files), :mod:`.calls` (every API call under the limiter), :mod:`.driver`
(upload, create within the queue quota, poll, collect), :mod:`.collect` (output and error
lines -> the usual records), :mod:`.run` (``run_batch_job``), :mod:`.status` (the
``batches`` command's table and cancel).
"""

from __future__ import annotations

from .driver import BatchConfig
from .run import run_batch_job
from .state import BatchState, PartState, work_dir

__all__ = ["BatchConfig", "BatchState", "PartState", "run_batch_job", "work_dir"]
