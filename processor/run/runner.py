"""``run_job``: the whole job from a file, as the CLI runs it, for Python callers too."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ..errors import OutputError
from ..jobs import Job, iter_jobs
from ..stats import Stats, StopReason
from ..store.cache import check_cache_path
from ..store.edits import check_edits
from ..store.inputfilter import InputFilter
from ..store.ledger import ledger_path
from ..store.lock import JobLock
from ..store.paths import check_job_paths, job_locks, lock_path
from ..store.resume import ResumeState, ScanInterrupted, load_state, move_aside
from ..store.shardfiles import check_marker, marker_path
from ..store.writer import ResultWriter
from .config import JobConfig
from .engine import Engine
from .events import NO_EVENTS
from .observer import ProgressTap, open_run_log, plan_run_log, start_fields
from .parts import Parts, build_parts
from .sharding import ShardScope, shard_defaults

# JobConfig is defined in .config, Parts in .parts; both stay importable from here.
__all__ = ["JobConfig", "default_paths", "run_job"]

log = logging.getLogger(__name__)


def _job_files(results: Path, errors: Path, run_log: Path | None) -> list[tuple[str, Path]]:
    files = [("results (--output)", results), ("errors (--errors)", errors),
             ("the ledger", ledger_path(results)), ("the shard marker", marker_path(results))]
    files += [("the run log", run_log)] if run_log else []
    return files + [(f"the lock of {role}", lock_path(p)) for role, p in list(files)]


def default_paths(input_path: Path) -> tuple[Path, Path]:
    """``<stem>.results.jsonl`` and ``<stem>.errors.jsonl`` beside the input."""
    stem = input_path.name[:-6] if input_path.name.endswith(".jsonl") else input_path.stem
    return (input_path.with_name(f"{stem}.results.jsonl"),
            input_path.with_name(f"{stem}.errors.jsonl"))


async def run_job(
    input_path: str | os.PathLike[str],
    config: JobConfig | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    errors: str | os.PathLike[str] | None = None,
    on_progress: Callable[[Stats], None] | None = None,
    handle_signals: bool = False,
    count_total: bool = True,
) -> Stats:
    """Run a JSONL job file to the end (or resume it) and return the final :class:`Stats`.

    Args:
        input_path: the JSONL job.
        config: limits, endpoint and client settings.
        output: results file (default ``<stem>.results.jsonl`` beside the input).
        errors: errors file (default ``<stem>.errors.jsonl``).
        on_progress: called with live stats a few times a second.
        handle_signals: stop gracefully on SIGINT / SIGTERM (the CLI sets this).
        count_total: count the input's lines first, for progress and ETA.

    Raises:
        ConfigError: the input is missing or not a file, an output path cannot be a file
            or is another of the files, the options cannot work, or lines without a
            custom_id changed since they were answered (see ``JobConfig.resend_changed``).
        JobLocked: another run holds this job's results or errors file (a ConfigError).
        OutputError: an output file cannot be created, or a torn line not repaired. A
            write that fails during the run does not raise: it stops the run, and the
            returned stats say so in ``output_error``.
    """
    cfg = config or JobConfig()
    src = Path(input_path)
    default_out, default_err = default_paths(src)
    if cfg.shard is not None:
        # Checked before the job's lock: the default names of a shard name K and N.
        output, errors = shard_defaults(src, cfg.shard, Path(output) if output else None,
                                        Path(errors) if errors else None)
    out_path = Path(output) if output else default_out
    err_path = Path(errors) if errors else default_err
    # Before anything is read or written: paths that would destroy data, then the
    # lock, held across the resume scan and the torn-line repair to the last write.
    check_job_paths(src, out_path, err_path)
    run_log = plan_run_log(cfg, src, out_path, err_path, ledger_path(out_path))
    if cfg.cache_path:  # none of the job's files (a SQLite file over one spoils both)
        check_cache_path(Path(cfg.cache_path), [("the input", src)], _job_files(
            out_path, err_path, run_log))
    with JobLock(job_locks(out_path, err_path) + ([lock_path(run_log)] if run_log else []),
                 files=[out_path, err_path, ledger_path(out_path)]):
        return await _run(cfg, src, out_path, err_path, on_progress, handle_signals,
                          count_total, run_log)


async def _run(
    cfg: JobConfig, src: Path, out_path: Path, err_path: Path,
    on_progress: Callable[[Stats], None] | None, handle_signals: bool, count_total: bool,
    run_log: Path | None = None,
) -> Stats:
    started = time.monotonic()
    limits: dict[str, float] = {name: value for name, value in
              (("rpm", cfg.rpm), ("tpm", cfg.tpm), ("rpd", cfg.rpd), ("tpd", cfg.tpd)) if value}
    # The resume/edit filter writes what it finds in the input; the run's stats (the
    # engine's) show it. Notes from before the engine starts are handed to the stats.
    found = InputFilter()
    notes: list[str] = []
    # File work before the first request (resume scan, line count) runs in a thread so
    # that a caller's event loop is never blocked by it. Signals are handled from before
    # it starts: Ctrl-C during a long scan stops it within a few thousand lines.
    signals = _SignalStop() if handle_signals else None
    scope = ShardScope(cfg.shard, found, notes) if cfg.shard is not None else None
    try:
        state = await asyncio.to_thread(_prepare_files, cfg, src, out_path, err_path, found,
                                        notes, count_total, signals.flag if signals else None,
                                        scope)
        parts = build_parts(cfg)
        cache = await asyncio.to_thread(parts.open_cache)
    except BaseException as exc:
        if signals is not None:
            signals.remove()
        if not isinstance(exc, ScanInterrupted):
            raise
        # No engine ever ran: the run's stats are made here, finished.
        reason, message = (signals.first if signals else None) or (StopReason.SIGINT,
                                                                   "interrupted")
        notes.append("stopped while reading the earlier outputs; nothing was sent")
        return Stats(input=found.tally, limits=limits, notes=notes, started=started,
                     finished=time.monotonic(), stopped=reason, stop_reason=message)

    counter = parts.counter
    stats = Stats(input=found.tally, limits=limits, notes=notes, started=started)
    writer = ResultWriter(out_path, err_path)
    runlog = open_run_log(run_log, cfg, asyncio.get_running_loop().time, start_fields(
        cfg, src, out_path, err_path, stats, len(state.done), len(state.failed))
    ) if run_log else None
    async with parts.client() as client, parts.limits():
        engine = parts.engine(client, writer, stats=stats, cache=cache,
                              events=runlog or NO_EVENTS,
                              on_progress=ProgressTap(runlog, on_progress) if runlog
                              else on_progress)
        # Bad lines reported before (by content) are not reported again.
        source = found.unreported(
            iter_jobs(src, default_endpoint=cfg.endpoint, skip=found.skip(state, cfg.retry_failed),
                      skip_line=found.skip_line(state), keep=ShardScope.filter_for(scope)),
            state, _sendable(parts), stats.note)
        if scope is not None:
            source = scope.counted(source)
        remove = signals.attach(engine) if signals else (lambda: None)
        try:
            await engine.run(source)
        except OutputError:
            pass  # a write outside an attempt (a bad line's record): noted below
        finally:
            remove()
            try:
                writer.close()
            except OutputError:
                pass  # kept in writer.failure
            if cache is not None:  # commits its last answers
                await asyncio.to_thread(cache.close)
        if writer.failure is not None:
            engine.output_failed(str(writer.failure))
        if runlog is not None:
            runlog.end(stats)
    for note in found.notes():
        stats.note(note)
    stats.note(f"results: {out_path}")
    stats.note(f"errors:  {err_path}")
    if cache is not None:
        lost = f"; {cache.dropped:,} could not be stored" if cache.dropped else ""
        stats.note(f"cache:   {cache.path} ({cache.stored:,} answers stored{lost})")
    await counter.wait_loaded_async(timeout=1.0)
    if counter.mode != "exact":
        stats.note(f"token counts: {counter.mode}")
    return stats


def _prepare_files(
    cfg: JobConfig, src: Path, out_path: Path, err_path: Path, found: InputFilter,
    notes: list[str], count_total: bool, stop: threading.Event | None = None,
    scope: ShardScope | None = None,
) -> ResumeState:
    """Check the input, move or repair old outputs, read what they hold, count lines.

    Raises:
        ConfigError: lines without a custom_id changed since they were answered (and
            ``resend_changed`` is off).
        ScanInterrupted: ``stop`` was set during the scan.
    """
    if cfg.fresh:
        for p in (out_path, err_path, ledger_path(out_path), marker_path(out_path)):
            moved = move_aside(p)
            if moved:
                notes.append(f"--fresh: moved {p} to {moved}")
    check_marker(out_path, err_path, cfg.shard, src)  # outputs of another shard: refused
    if out_path.exists() or err_path.exists():
        log.info("reading the earlier outputs (%s, %s) to resume", out_path, err_path)
    state = load_state(out_path, err_path, stop=stop)
    for side in state.torn:
        notes.append(f"repaired a torn last line; its bytes are in {side}")
    if cfg.retry_failed and len(state.failed):
        moved = move_aside(err_path)
        notes.append(f"--retry-failed: previous errors moved to {moved}")
        state.forget_bad_lines()
    if len(state.done) and not state.has_ledger:
        notes.append(
            f"{out_path} has no ledger beside it (written by another tool or an older "
            "version): edits to the input since those answers cannot be detected")
    if state.comparable and (state.positional or cfg.resend_changed):
        state, moved_lines = check_edits(src, out_path, err_path, notes, state, stop=stop,
                                         resend_changed=cfg.resend_changed,
                                         retry_failed=cfg.retry_failed)
        found.superseded(moved_lines)
    if count_total:
        found.count(src, stop)
        if scope is not None:
            scope.estimate_total()
    return state


def _sendable(parts: Parts) -> Callable[[Job], bool]:
    """Whether the engine would accept ``job`` (it serialises and can be costed)."""

    def check(job: Job) -> bool:
        try:
            orjson.dumps(job.body)
            orjson.dumps(job.metadata)
            parts.cost(job)
        except Exception:  # noqa: BLE001 - any failure: the engine reports it the same way
            return False
        return True

    return check


class _SignalStop:
    """SIGINT / SIGTERM / SIGHUP for a whole run, start-up scan included.

    During the scan a signal sets :attr:`flag` (the scan thread stops within a few
    thousand lines); once an engine is attached, the first signal stops it gracefully
    and the second abandons what is in flight.
    """

    def __init__(self) -> None:
        self.flag = threading.Event()
        #: the first signal's reason and message, before an engine is attached.
        self.first: tuple[StopReason, str] | None = None
        self.engine: Engine | None = None
        self.hits = 0
        self._loop = asyncio.get_running_loop()
        self._installed: list[signal.Signals] = []
        # SIGHUP too: a dropped ssh session ends the run like a SIGTERM, with a summary.
        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"),
                          (signal.SIGHUP, "SIGHUP")):
            try:
                self._loop.add_signal_handler(sig, self._handle, name)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass

    def _handle(self, signame: str) -> None:
        self.hits += 1
        self.flag.set()
        engine = self.engine
        reason = StopReason[signame]
        if engine is None:
            self.first = self.first or (reason, f"{signame} received")
        elif self.hits == 1 and not engine.stopping:
            engine.stop(f"{signame} received", reason)
        else:
            # A second signal, or one while the engine winds down by itself (a grace
            # period of up to --grace seconds): abandon what is in flight now.
            engine.stop(f"{signame} received", reason)
            engine.abandon_in_flight(f"second {signame}" if self.hits > 1 else
                                     f"{signame} while stopping")

    def attach(self, engine: Engine) -> Callable[[], None]:
        """Hand signals to ``engine`` (stopped at once if one came during the scan).

        Returns:
            :meth:`remove`, to call when the run is over.
        """
        self.engine = engine
        if self.first is not None:
            reason, message = self.first
            engine.stop(message, reason)
        return self.remove

    def remove(self) -> None:
        for sig in self._installed:
            self._loop.remove_signal_handler(sig)
        self._installed = []
