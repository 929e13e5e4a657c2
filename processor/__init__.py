"""batchproc: push a JSONL job through a rate-limited OpenAI-compatible API, unattended."""

from __future__ import annotations

from .client.http import OpenAIClient, RateLimitInfo, Response
from .cost import Cost, TokenCounter, estimate_request_cost
from .errors import (
    APIError,
    APITimeout,
    AuthError,
    BadRequest,
    BatchProcError,
    ConfigError,
    FatalAPIError,
    JobFormatError,
    QuotaExceeded,
    RateLimited,
    Redirected,
    ResponseTooLarge,
    RetriesExhausted,
    RetryableAPIError,
    ServerError,
)
from .jobs import BadLine, Job, iter_jobs, parse_line
from .limits import Capacity, Counter, Limiter, Unit
from .run.config import JobConfig
from .run.engine import Engine, Lane
from .run.pipeline import stream_results
from .run.retry import Fallback, RetryPolicy, backoff, should_retry
from .run.runner import run_job
from .stats import Stats
from .store.writer import ResultWriter

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "APITimeout",
    "AuthError",
    "BadLine",
    "BadRequest",
    "BatchProcError",
    "Capacity",
    "ConfigError",
    "Cost",
    "Counter",
    "Engine",
    "Fallback",
    "FatalAPIError",
    "Job",
    "JobConfig",
    "JobFormatError",
    "Lane",
    "Limiter",
    "OpenAIClient",
    "QuotaExceeded",
    "RateLimitInfo",
    "RateLimited",
    "Redirected",
    "Response",
    "ResponseTooLarge",
    "ResultWriter",
    "RetriesExhausted",
    "RetryPolicy",
    "RetryableAPIError",
    "ServerError",
    "Stats",
    "TokenCounter",
    "Unit",
    "__version__",
    "backoff",
    "estimate_request_cost",
    "iter_jobs",
    "parse_line",
    "run_job",
    "should_retry",
    "stream_results",
]
