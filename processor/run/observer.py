"""The run log around a run: where it goes, what its start says (the settings without a
secret), and the progress tap that writes it about once a second."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..client.masking import MASK, Masker, header_secrets, is_credential_header
from ..errors import ConfigError
from ..stats import Stats
from ..store.paths import check_distinct, check_output, lock_path
from ..store.runlog import RunLog, is_run_log, plain, run_log_path
from .config import JobConfig

__all__ = ["ProgressTap", "open_run_log", "plan_run_log", "safe_config", "start_fields"]

log = logging.getLogger(__name__)

#: settings left out of the log: the secrets, and what :func:`safe_config` shows apart.
_LEFT_OUT = {"api_key", "api_keys", "headers", "secret_headers", "base_url", "limiter",
             "limiter_password"}
#: settings that are URLs: shown with their user info and query values masked.
_URLS = ("base_url", "limiter")


def plan_run_log(cfg: JobConfig, src: Path, results: Path, errors: Path,
                 ledger: Path) -> Path | None:
    """The run log's path for this run (None: off), checked like the other outputs.

    Raises:
        ConfigError: ``--run-log`` names a stream, a folder, or one of the job's files.
    """
    if cfg.run_log is False:
        return None
    others = [("the input", src), ("results (--output)", results),
              ("errors (--errors)", errors), ("the ledger", ledger)]
    if cfg.run_log is True:
        path = run_log_path(results)
        if any(_same(path, p) for _, p in others):
            path = results.with_name(results.name + ".run.jsonl")
    else:
        path = Path(cfg.run_log)
    check_output(path, "--run-log", "give a file, or --no-run-log")
    check_distinct(others, [("--run-log", path), ("the run log's lock", lock_path(path))])
    if not is_run_log(path):
        raise ConfigError(f"the run log {path} exists and is not a run log (another job's "
                          "results?): appending to it would spoil it; give --run-log another "
                          "file, or --no-run-log")
    return path


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _secrets(cfg: JobConfig) -> list[str]:
    found = [cfg.api_key] if cfg.api_key else []
    found += [key for _, key in cfg.api_keys]
    found += [cfg.limiter_password or ""]
    for url in (cfg.base_url, cfg.limiter):
        found += _url_secrets(url)
    for name, value in list(cfg.headers.items()) + list(cfg.secret_headers.items()):
        if is_credential_header(name) or name in cfg.secret_headers:
            found += header_secrets(name, value)
    return [s for s in found if s]


def _url_secrets(url: str | None) -> list[str]:
    """A URL's password (and user name), as written and percent-decoded."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.username or "", parts.password or ""]
    except ValueError:
        return []
    return found + [unquote(s) for s in found]


def safe_config(cfg: JobConfig) -> dict[str, Any]:
    """The run's settings fit for a log: never a key, a credential header's value or a
    password in the URL (key names and header names only)."""
    masker = Masker(_secrets(cfg))
    out: dict[str, Any] = {}
    for name, spec in cfg.__dataclass_fields__.items():
        # A field kept out of the config's repr holds a secret (a key, a password): so
        # a secret setting added later stays out of the log without a word here.
        if name not in _LEFT_OUT and spec.repr:
            out[name] = plain(getattr(cfg, name))  # the per-model limits as data
    for name in _URLS:
        value = getattr(cfg, name)
        out[name] = masker.url(value) if value else value
    out["limiter_password"] = MASK if cfg.limiter_password else None
    out["keys"] = [name for name, _ in cfg.api_keys] or (["(one key)"] if cfg.api_key else [])
    out["headers"] = {
        name: MASK if is_credential_header(name) or name in cfg.secret_headers
        else masker.text(value)
        for name, value in list(cfg.headers.items()) + list(cfg.secret_headers.items())}
    return out


def _version() -> str:
    # The package's own ``__version__`` (processor/__init__ ran before any of its
    # modules). Not importlib.metadata: its search of sys.path costs 0.2 s at start-up.
    return str(getattr(sys.modules.get("processor"), "__version__", "unknown"))


def start_fields(cfg: JobConfig, src: Path, results: Path, errors: Path, stats: Stats,
                 done: int, failed: int) -> dict[str, Any]:
    """What a ``start`` event holds besides its number and time."""
    return {"v": _version(), "pid": os.getpid(), "input": str(src), "results": str(results),
            "errors": str(errors), "cfg": safe_config(cfg), "limits": dict(stats.limits),
            "total": stats.total, "resume": {"done": done, "failed": failed}}


class ProgressTap:
    """Wraps the engine's ``on_progress``: the run log's tick first, then the display.

    A display that raises is dropped (as the engine would) without dropping the log.
    """

    def __init__(self, runlog: RunLog, inner: Callable[[Stats], None] | None) -> None:
        self.runlog = runlog
        self.inner = inner

    def __call__(self, stats: Stats) -> None:
        self.runlog.tick(stats)
        if self.inner is not None:
            try:
                self.inner(stats)
            except Exception as exc:  # noqa: BLE001 - a broken display must not stop
                log.warning("progress display failed (%s); continuing without it",
                            type(exc).__name__)
                self.inner = None


def open_run_log(path: Path, cfg: JobConfig, clock: Callable[[], float],
                 fields: dict[str, Any]) -> RunLog:
    """Open the log at ``path`` and write the start event (``fields``); every string in
    it goes through the run's masker as well, so a secret never reaches the log."""
    return RunLog(path, clock=clock).open(**Masker(_secrets(cfg)).tree(fields))
