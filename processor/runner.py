"""``run_job``: the whole job from a file, as the CLI runs it, for Python callers too."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .client import AZURE_API_VERSION, DEFAULT_BASE_URL, OpenAIClient, is_azure_url
from .engine import Engine, Lane, Sink
from .errors import ConfigError
from .jobs import (
    DEFAULT_ENDPOINT,
    Job,
    ResultWriter,
    count_lines,
    iter_jobs,
    ledger_path,
    line_hash,
)
from .limits import Limiter
from .resume import ResumeState, load_state, move_aside
from .retry import Fallback, RetryPolicy
from .stats import Stats
from .tokens import DEFAULT_MAX_TOKENS, Cost, TokenCounter

__all__ = ["JobConfig", "Parts", "build_parts", "default_paths", "run_job"]

log = logging.getLogger(__name__)


def default_paths(input_path: Path) -> tuple[Path, Path]:
    """``<stem>.results.jsonl`` and ``<stem>.errors.jsonl`` beside the input."""
    stem = input_path.name[:-6] if input_path.name.endswith(".jsonl") else input_path.stem
    return (input_path.with_name(f"{stem}.results.jsonl"),
            input_path.with_name(f"{stem}.errors.jsonl"))


@dataclass(slots=True)
class JobConfig:
    """Everything a run needs besides the input file. Defaults match the CLI's.

    Attributes:
        base_url: API base, e.g. ``https://api.openai.com/v1``.
        api_key: the key (never logged); None for servers that need none.
        rpm / tpm: requests and tokens per minute to stay under (None: no limit).
        max_in_flight: most requests on the wire at once.
        max_attempts: attempts per request, the first included.
        timeout: seconds per attempt.
        endpoint: endpoint for lines that do not name one.
        default_max_tokens: completion budget charged when a body states none.
        encodings_dir: folder with local tiktoken encoding files.
        headers: extra HTTP headers.
        azure: Azure OpenAI (``api-key`` header, deployment URLs); None: detect from
            the base URL.
        api_version: Azure's ``api-version``.
        api_keys: several ``(name, key)`` pairs, each with its own counters (instead of
            ``api_key``); a key the server refuses is retired and the run goes on.
        rpd / tpd: daily budgets; when spent, the run stops cleanly (resumable).
        auto_rpm / auto_tpm: learn RPM / TPM from the server's headers where not given.
        fallback_model / fallback_after: switch a request to this model after that
            many 429s (or at once on model-not-found).
        refund_unused: give back unused tokens after each answer (servers that count
            real usage; OpenAI charges max_tokens up front, so off by default).
        grace: seconds in-flight requests get after Ctrl-C / SIGTERM.
        fresh: move old outputs aside and start over.
        retry_failed: send again the requests that failed for good in earlier runs.
        outage_window: seconds the server may stay down (most attempts failing with
            5xx or connection errors) while batchproc probes it, spending no attempts,
            before the run stops (resumable); 0 turns this off.
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int = 100
    max_attempts: int = 5
    timeout: float = 600.0
    endpoint: str = DEFAULT_ENDPOINT
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    encodings_dir: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    azure: bool | None = None
    api_version: str = AZURE_API_VERSION
    api_keys: list[tuple[str, str]] = field(default_factory=list)
    rpd: float | None = None
    tpd: float | None = None
    auto_rpm: bool = True
    auto_tpm: bool = True
    fallback_model: str | None = None
    fallback_after: int = 3
    refund_unused: bool = False
    grace: float = 30.0
    fresh: bool = False
    retry_failed: bool = False
    burst_seconds: float = 1.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    allow_download: bool = True
    outage_window: float = 1800.0


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
        ConfigError: the input is missing or the options cannot work.
    """
    cfg = config or JobConfig()
    src = Path(input_path)
    default_out, default_err = default_paths(src)
    out_path = Path(output) if output else default_out
    err_path = Path(errors) if errors else default_err
    stats = Stats()
    for name, value in (("rpm", cfg.rpm), ("tpm", cfg.tpm), ("rpd", cfg.rpd), ("tpd", cfg.tpd)):
        if value:
            stats.limits[name] = value
    # File work before the first request (resume scan, line count) runs in a thread so
    # that a caller's event loop is never blocked by it.
    state = await asyncio.to_thread(_prepare_files, cfg, src, out_path, err_path, stats,
                                    count_total)

    parts = build_parts(cfg)
    counter = parts.counter
    skip = _resume_filter(state, cfg.retry_failed, stats)
    writer = ResultWriter(out_path, err_path)
    async with parts.client() as client:
        engine = parts.engine(client, writer, on_progress=on_progress, stats=stats)
        reported = state.bad_lines
        source = (
            item for item in iter_jobs(src, default_endpoint=cfg.endpoint, skip=skip)
            # Lines reported bad before (unparsable, or a request that cannot be
            # costed) are not reported again.
            if not (reported and item.line in reported)
        )
        remove = _install_signals(engine) if handle_signals else (lambda: None)
        try:
            await engine.run(source)
        finally:
            remove()
            writer.close()
    if stats.skipped_failed:
        stats.notes.append(
            f"{stats.skipped_failed:,} requests failed for good in an earlier run and were "
            "not sent again (--retry-failed sends them)")
    if stats.changed:
        stats.notes.append(_changed_note(stats.changed, stats.changed_examples))
        log.warning("%s", stats.notes[-1])
    stats.notes.append(f"results: {out_path}")
    stats.notes.append(f"errors:  {err_path}")
    counter.wait_loaded(timeout=1.0)
    if counter.mode != "exact":
        stats.notes.append(f"token counts: {counter.mode}")
    return stats


@dataclass(slots=True)
class Parts:
    """What a run is made of, built from a :class:`JobConfig` (shared by the entry points)."""

    cfg: JobConfig
    counter: TokenCounter
    lanes: list[Lane]
    default_key: str | None
    azure: bool

    def cost(self, job: Job) -> Cost:
        return self.counter.cost(job.body, job.url)

    def client(self) -> OpenAIClient:
        cfg = self.cfg
        return OpenAIClient(cfg.base_url, self.default_key, timeout=cfg.timeout,
                            max_connections=cfg.max_in_flight, headers=cfg.headers,
                            azure=self.azure, api_version=cfg.api_version,
                            secrets=[key for _, key in cfg.api_keys])

    def engine(self, client: OpenAIClient, sink: Sink, *,
               on_progress: Callable[[Stats], None] | None = None,
               stats: Stats | None = None,
               before_admit: Callable[[], Awaitable[None]] | None = None) -> Engine:
        cfg = self.cfg
        fallback = Fallback(cfg.fallback_model, cfg.fallback_after) if cfg.fallback_model else None
        return Engine(client, self.lanes[0].limiter, sink, cost=self.cost,
                      policy=RetryPolicy(cfg.max_attempts, base=cfg.backoff_base,
                                         cap=cfg.backoff_cap),
                      max_in_flight=cfg.max_in_flight, on_progress=on_progress,
                      grace=cfg.grace, stats=stats, lanes=self.lanes, fallback=fallback,
                      refund_unused=cfg.refund_unused, before_admit=before_admit,
                      outage_window=cfg.outage_window)


def build_parts(cfg: JobConfig) -> Parts:
    """Token counter, one limiter per key, client and engine settings for ``cfg``."""
    counter = TokenCounter(encodings_dir=cfg.encodings_dir, allow_download=cfg.allow_download,
                           default_max_tokens=cfg.default_max_tokens, background=True)
    azure = cfg.azure if cfg.azure is not None else is_azure_url(cfg.base_url)

    def new_limiter() -> Limiter:
        return Limiter.per_minute(
            cfg.rpm, cfg.tpm, rpd=cfg.rpd, tpd=cfg.tpd, burst_seconds=cfg.burst_seconds,
            auto_requests=cfg.auto_rpm and not cfg.rpm,
            auto_tokens=cfg.auto_tpm and not cfg.tpm,
        )

    if cfg.api_keys:
        header = "api-key" if azure else "Authorization"
        lanes = [Lane(name, new_limiter(), {header: key if azure else f"Bearer {key}"})
                 for name, key in cfg.api_keys]
        return Parts(cfg, counter, lanes, None, azure)
    return Parts(cfg, counter, [Lane(None, new_limiter())], cfg.api_key, azure)


def _prepare_files(
    cfg: JobConfig, src: Path, out_path: Path, err_path: Path, stats: Stats, count_total: bool
) -> ResumeState:
    """Check the input, move or repair old outputs, read what they hold, count lines."""
    if not src.is_file():
        raise ConfigError(f"input file not found: {src}")
    if cfg.fresh:
        for p in (out_path, err_path, ledger_path(out_path)):
            moved = move_aside(p)
            if moved:
                stats.notes.append(f"--fresh: moved {p} to {moved}")
    state = load_state(out_path, err_path)
    for side in state.torn:
        stats.notes.append(f"repaired a torn last line; its bytes are in {side}")
    if cfg.retry_failed and len(state.failed):
        moved = move_aside(err_path)
        stats.notes.append(f"--retry-failed: previous errors moved to {moved}")
        state.bad_lines.clear()
    if count_total:
        stats.total = count_lines(src)
    return state


def _resume_filter(
    state: ResumeState, retry_failed: bool, stats: Stats
) -> Callable[[str, bytes], bool] | None:
    """The ``skip`` test for a rerun: done ids (and failed ones unless retried) are left out.

    A done id whose input line hashes differently from the one answered (per the
    ledger) is counted as changed; its old answer is kept.
    """
    if state.empty:
        return None
    done, failed = state.done, state.failed
    check_changes = state.has_ledger

    def skip(custom_id: str, raw: bytes) -> bool:
        # One lookup: None, or the low 32 bits of the answered line's hash (0: unknown).
        answered = done.get(custom_id)
        if answered is not None:
            stats.skipped += 1
            if check_changes and answered and answered != line_hash(raw) & 0xFFFFFFFF:
                stats.changed += 1
                if len(stats.changed_examples) < 5:
                    stats.changed_examples.append(custom_id)
            return True
        if custom_id in failed:
            if retry_failed:
                stats.retried_failed += 1
                return False
            stats.skipped_failed += 1
            return True
        return False

    return skip


def _changed_note(n: int, examples: list[str]) -> str:
    return (
        f"input changed: {n} line(s) differ from the ones answered before "
        f"(e.g. {', '.join(examples)}); their old answers are kept. "
        "Use --fresh to start over (old outputs are moved aside)."
    )


def _install_signals(engine: Engine) -> Callable[[], None]:
    """First SIGINT/SIGTERM: graceful stop. Second: cancel what is in flight now."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def handler(signame: str) -> None:
        hits["n"] += 1
        if hits["n"] == 1:
            engine.stop(f"{signame} received")
        else:
            engine.grace = 0.0
            engine.stop(f"second {signame}")
            engine.stats.notes.append(f"second {signame}: in-flight requests abandoned")
            engine.kick()

    installed = []
    # SIGHUP too: a dropped ssh session ends the run like a SIGTERM, with a summary.
    for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"),
                      (signal.SIGHUP, "SIGHUP")):
        try:
            loop.add_signal_handler(sig, handler, name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove
