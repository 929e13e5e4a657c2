"""The exceptions batchproc raises.

The tree::

    BatchProcError
     ├── JobFormatError          a bad input line (carries its line number)
     ├── ConfigError             bad options, missing key, unknown model file, ...
     │    └── JobLocked          another run holds the job's lock (names its PID)
     ├── OutputError             an output file cannot be written (also an OSError)
     ├── APIError                one attempt at one request went wrong
     │    ├── RetryableAPIError  worth another attempt
     │    │    ├── RateLimited   HTTP 429 (carries the server's Retry-After)
     │    │    ├── ServerError   408, 409, 5xx, a 2xx whose body is not JSON
     │    │    └── APITimeout    connection errors, resets, timeouts
     │    └── FatalAPIError      no retry will help
     │         ├── AuthError     401 / 403: the key is wrong or revoked
     │         ├── BadRequest    400, 404, 422 and other 4xx
     │         ├── QuotaExceeded 429 with code ``insufficient_quota``
     │         ├── Redirected    a 3xx: never followed (the key stays with its host)
     │         └── ResponseTooLarge  an answer over ``--max-response-mb``
     └── RetriesExhausted        a request used up its attempts (``last_attempt``); the
                                 policy words a written-off request with it

Only :mod:`processor.client.http` turns aiohttp exceptions into these (``raise ... from exc``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "APIError",
    "APITimeout",
    "AuthError",
    "BadRequest",
    "BatchProcError",
    "ConfigError",
    "FatalAPIError",
    "JobFormatError",
    "JobLocked",
    "OutputError",
    "QuotaExceeded",
    "RateLimited",
    "Redirected",
    "ResponseTooLarge",
    "RetriesExhausted",
    "RetryableAPIError",
    "ServerError",
]


class BatchProcError(Exception):
    """Base class of every error batchproc raises on purpose."""


class JobFormatError(BatchProcError):
    """An input line that is not a valid request."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class ConfigError(BatchProcError):
    """Options that cannot work together, or a missing API key."""


class JobLocked(ConfigError):
    """Another run holds the job (its results or errors file); rerun when it is done.

    Attributes:
        lock: the lock file.
        pid / host / since: who holds it, as its lock file says (None when unreadable).
    """

    def __init__(self, lock: str, pid: int | None = None, host: str | None = None,
                 since: str | None = None) -> None:
        who = f"PID {pid} on {host}" if pid is not None else "another process"
        when = f" since {since}" if since else ""
        super().__init__(
            f"another batchproc run ({who}{when}) is working on this job (lock {lock}); "
            "wait for it to finish, or stop it, then rerun")
        self.lock = lock
        self.pid = pid
        self.host = host
        self.since = since


class OutputError(BatchProcError, OSError):
    """An output file (results, errors, ledger, side file, lock) cannot be written.

    Also an :class:`OSError`, so code that stops on a failed write stops on this too.
    Its message names the file and the cause, e.g. ``/d/r.jsonl: No space left on device``.

    Args:
        path: the file.
        cause: the underlying error (its ``strerror`` is quoted).
        what: what was being done, when not a plain write.
    """

    def __init__(self, path: str | os.PathLike[str], cause: BaseException | str,
                 what: str = "") -> None:
        reason = cause if isinstance(cause, str) else (
            getattr(cause, "strerror", None) or str(cause) or type(cause).__name__)
        message = f"{os.fspath(path)}: {reason}" + (f" ({what})" if what else "")
        super().__init__(message)
        self.path = os.fspath(path)
        self.errno = getattr(cause, "errno", None)

    def __str__(self) -> str:
        return str(self.args[0])


class APIError(BatchProcError):
    """One attempt failed.

    Args:
        message: human-readable reason, never containing the API key.
        status: the HTTP status, or ``None`` for a transport error.
        body: the parsed (or raw text) error body, if any.
        request_id: the server's ``x-request-id``, if any.
        retry_after: seconds the server asked us to wait, if it said.
        ratelimit: the response's parsed ``x-ratelimit-*`` headers, if any.
        code: the error body's ``code`` (else ``type``), e.g. ``model_not_found``.
    """

    kind = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        ratelimit: Any = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.ratelimit = ratelimit
        self.code = code
        self.message = message
        self.status = status
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after


class RetryableAPIError(APIError):
    """An attempt that may succeed if repeated."""

    kind = "retryable"


class RateLimited(RetryableAPIError):
    """HTTP 429: too many requests or tokens for now."""

    kind = "rate_limited"


class ServerError(RetryableAPIError):
    """408, 409, 5xx, or a 2xx with a body that is not valid JSON."""

    kind = "server_error"


class APITimeout(RetryableAPIError):
    """A connection error, a reset or a request that did not finish in time."""

    kind = "connection_error"


class FatalAPIError(APIError):
    """An attempt that no repetition will fix."""

    kind = "fatal"


class AuthError(FatalAPIError):
    """401 or 403: the key is missing, wrong or revoked."""

    kind = "auth_error"


class BadRequest(FatalAPIError):
    """400, 404, 422 and other 4xx: the request itself is wrong."""

    kind = "bad_request"


class QuotaExceeded(FatalAPIError):
    """429 with ``insufficient_quota``: the account is out of credit."""

    kind = "insufficient_quota"


class Redirected(FatalAPIError):
    """A 3xx answer. Redirects are not followed: the credentials would go to the host the
    redirect names, and a 301/302/303 turns the POST into a GET whose answer is not the
    answer to the request sent. ``location`` is the target, with anything secret masked."""

    kind = "redirect"

    def __init__(self, message: str, *, location: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.location = location


class ResponseTooLarge(FatalAPIError):
    """An answer larger than the client's cap (``--max-response-mb``); it is not kept."""

    kind = "response_too_large"


class RetriesExhausted(BatchProcError):
    """A request failed on every attempt; ``last_attempt`` holds the final error."""

    def __init__(self, attempts: int, last_attempt: APIError) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_attempt.message}")
        self.attempts = attempts
        self.last_attempt = last_attempt
