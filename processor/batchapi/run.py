"""``run_batch_job``: a job through the Batch API, with the online run's files, lock,
resume scan, bad-line reports, records and summary (only the sending differs)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

import orjson

from ..client.files import FilesAPI
from ..client.http import OpenAIClient
from ..errors import (
    APIError,
    AuthError,
    BatchProcError,
    ConfigError,
    QuotaExceeded,
    RetryableAPIError,
)
from ..idset import IdSet
from ..jobs import BadLine, Job, iter_jobs
from ..limits.limiter import Limiter
from ..run.config import JobConfig
from ..run.engine import Engine
from ..run.events import NO_EVENTS, Events
from ..run.observer import ProgressTap, plan_run_log
from ..run.outcomes import Outcomes
from ..run.parts import Parts, build_parts
from ..run.retry import RetryPolicy
from ..run.runner import _prepare_files, _sendable, default_paths
from ..stats import Stats, StopReason
from ..store.inputfilter import InputFilter
from ..store.ledger import ledger_path
from ..store.lock import JobLock
from ..store.paths import check_job_paths, job_locks, lock_path
from ..store.resume import ResumeState
from ..store.writer import ResultWriter
from .calls import BatchCalls
from .collect import Collector
from .driver import BatchConfig, Driver
from .plan import MAX_BYTES, Limits, Meta, iter_requests, plan_parts, read_meta
from .runlog import BatchEvents, open_batch_log
from .state import BatchState, PartState, drop_files, work_dir

__all__ = ["batch_client", "run_batch_job"]

log = logging.getLogger(__name__)


def batch_client(cfg: JobConfig) -> OpenAIClient:
    """The client of the Batch API calls: the (first) key; every key masked."""
    if cfg.azure:
        raise ConfigError("--via batch does not drive Azure OpenAI's Batch API; use --via "
                          "online")
    key = cfg.api_key or (cfg.api_keys[0][1] if cfg.api_keys else None)
    return OpenAIClient(cfg.base_url, key, timeout=cfg.timeout, max_connections=4,
                        headers=cfg.headers, secrets=[k for _, k in cfg.api_keys],
                        secret_headers=cfg.secret_headers)


async def run_batch_job(
    input_path: str | os.PathLike[str], config: JobConfig, batch: BatchConfig, *,
    output: str | os.PathLike[str] | None = None, errors: str | os.PathLike[str] | None = None,
    on_progress: Callable[[Stats], None] | None = None, handle_signals: bool = False,
) -> tuple[Stats, BatchState]:
    """Run (or resume, or collect) ``input_path`` through the Batch API.

    Returns:
        The run's stats (as the online run's: the same summary and exit codes) and the
        state (parts, API calls made).

    Raises:
        ConfigError: as :func:`processor.run.runner.run_job`, or a state file that is not
            one; JobLocked: another run holds the job.
    """
    if config.shard is not None:
        raise ConfigError("--shard splits online work between workers; --via batch submits "
                          "the whole job to the Batch API in one run (leave out --shard)")
    if config.pack is not None:
        raise ConfigError("--pack saves online requests; the Batch API takes each line as "
                          "it is (leave out --pack with --via batch)")
    src = Path(input_path)
    default_out, default_err = default_paths(src)
    out_path = Path(output) if output else default_out
    err_path = Path(errors) if errors else default_err
    check_job_paths(src, out_path, err_path)
    run_log = plan_run_log(config, src, out_path, err_path, ledger_path(out_path))
    with JobLock(job_locks(out_path, err_path) + ([lock_path(run_log)] if run_log else []),
                 files=[out_path, err_path, ledger_path(out_path)]):
        return await _run(src, out_path, err_path, config, batch, on_progress, handle_signals,
                          run_log)


async def _run(src: Path, out_path: Path, err_path: Path, cfg: JobConfig, bcfg: BatchConfig,
               on_progress: Callable[[Stats], None] | None, handle_signals: bool,
               run_log: Path | None) -> tuple[Stats, BatchState]:
    started = time.monotonic()
    folder = work_dir(out_path)
    # The resume/edit filter keeps what it finds in the input (stats.input, read-only).
    found, notes = InputFilter(), list[str]()
    rstate = await asyncio.to_thread(_prepare_files, cfg, src, out_path, err_path, found,
                                     notes, True)
    stats = Stats(input=found.tally, notes=notes, started=started)
    if cfg.fresh and folder.exists():
        aside = folder.with_name(f"{folder.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        folder.rename(aside)
        stats.note(f"--fresh: moved {folder} to {aside} (batches it still had running go on "
                   "on the server, unread)")
    folder.mkdir(parents=True, exist_ok=True)
    state = BatchState.load(folder / "state.json") or BatchState(job=src.name)
    parts = build_parts(cfg)
    if parts.azure:
        raise ConfigError("--via batch does not drive Azure OpenAI's Batch API; use --via "
                          "online")
    limiter = parts.lanes[0].limiter
    writer = ResultWriter(out_path, err_path)
    runlog = open_batch_log(
        run_log, cfg, asdict(bcfg), src, out_path, err_path, stats, len(rstate.done),
        len(rstate.failed), asyncio.get_running_loop().time) if run_log else None
    events = BatchEvents(runlog or NO_EVENTS)
    left = 0
    policy = RetryPolicy(cfg.max_attempts, base=cfg.backoff_base, cap=cfg.backoff_cap)
    try:
        async with batch_client(cfg) as client:
            calls = BatchCalls(FilesAPI(client), limiter, state)
            # --retry-failed moved the errors aside: no failure stands (all are sent again).
            collector = Collector(folder, writer, stats, client.masker, policy, rstate.done,
                                  IdSet(values=True) if cfg.retry_failed else rstate.failed)
            calls.events = collector.events = events
            driver = Driver(state, folder, calls, collector, bcfg, stats,
                            ProgressTap(runlog, on_progress) if runlog else on_progress)
            driver.events = events
            outcomes = Outcomes(writer, stats, parts.cost, Limiter())
            outcomes.events = runlog or NO_EVENTS
            new = await asyncio.to_thread(_plan, src, cfg, bcfg, state, folder, rstate,
                                          stats, found, outcomes, parts)
            if new:
                state.parts += new
                driver.save()
            remove = _on_signals(driver, stats) if handle_signals else (lambda: None)
            try:
                await driver.run()
                if state.online and not driver.stop.is_set():
                    await _online(state, folder, parts, client, writer, stats, rstate, driver,
                                  runlog or NO_EVENTS)
            except (AuthError, QuotaExceeded) as exc:
                stats.stop(StopReason.KEY_REFUSED, f"{exc.kind}: the API key was refused: "
                           f"{exc.message}")
            except RetryableAPIError as exc:
                stats.stop(StopReason.RERUN_LATER, f"the Batch API kept failing: {exc.kind}: "
                           f"{exc.message}; rerun the same command to resume")
            except APIError as exc:
                stats.stop(StopReason.ERROR, f"the Batch API refused a call: {exc.kind}: "
                           f"{exc.message}; what was collected is kept, rerun once fixed")
            finally:
                remove()
                left = driver.left
    except BaseException as exc:
        if runlog is not None:  # the log says how the run ended, whatever ended it
            # Our own errors' messages are masked where made; others: only their name.
            stats.stop(StopReason.ERROR, str(exc)[:300] if isinstance(exc, BatchProcError)
                       else type(exc).__name__)
            stats.finish(time.monotonic())
            runlog.end(stats)
        raise
    finally:
        writer.close()
    stats.finish(time.monotonic())
    _notes(state, stats, folder, bcfg, out_path, err_path, left)
    if runlog is not None:
        runlog.tick(stats)
        said = stats.stop_reason
        if not state.finished and stats.stopped is None:  # detached: the end says so
            waiting = sum(p.active or p.pending for p in state.parts)
            stats.stop_reason = (f"{waiting} parts left with the Batch API; the same "
                                 "command collects them")
        runlog.end(stats)
        stats.stop_reason = said
    return stats, state


def _plan(src: Path, cfg: JobConfig, bcfg: BatchConfig, state: BatchState, folder: Path,
          rstate: ResumeState, stats: Stats, found: InputFilter, outcomes: Outcomes,
          parts: Parts) -> list[PartState]:
    """New parts for the requests neither answered, failed for good, nor in a part."""
    covered: set[str] = set()
    for part in state.parts:
        if part.step != "done":
            covered.update(read_meta(folder, part))
    items = found.unreported(
        iter_jobs(src, default_endpoint=cfg.endpoint, skip=found.skip(rstate, cfg.retry_failed),
                  skip_line=found.skip_line(rstate)),
        rstate, _sendable(parts), stats.note)
    limits = Limits(requests=bcfg.part_requests, bytes=MAX_BYTES, tokens=bcfg.queue_tokens)
    return plan_parts(items, state, folder, outcomes.prepare, limits, covered.__contains__)


async def _online(state: BatchState, folder: Path, parts: Parts, client: OpenAIClient,
                  writer: ResultWriter, stats: Stats, rstate: ResumeState,
                  driver: Driver, events: Events) -> None:
    """``--fallback-online``: send the online parts' requests through the engine."""
    for key in list(state.online):
        part = state.part(key)
        metas = read_meta(folder, part)

        def jobs(part: PartState = part, metas: dict[str, Meta] = metas
                 ) -> Iterator[Job | BadLine]:
            for cid, raw in iter_requests(folder, part):
                meta = metas[cid]
                if cid in rstate.done or cid in rstate.failed:
                    continue
                body = orjson.loads(raw)["body"]
                yield Job(cid, meta.line, part.url, body, metadata=meta.metadata,
                          model=body.get("model"), line_hash=meta.hashed,
                          attempts=meta.attempts, history=meta.history)

        engine = parts.engine(client, writer, stats=stats, events=events,
                              on_progress=driver.on_progress)
        driver_stop = driver.stop
        watcher = asyncio.ensure_future(driver_stop.wait())
        watcher.add_done_callback(partial(_stop_engine, engine))
        try:
            await engine.run(jobs())
        finally:
            watcher.cancel()
        if engine.stopping and stats.stopped is not None:
            return
        state.online.remove(key)
        part.step = "done"
        driver.save()
        drop_files(folder, part)


def _stop_engine(engine: Engine, fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        engine.stop("interrupted", StopReason.SIGINT)


def _on_signals(driver: Driver, stats: Stats) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def handle(name: str) -> None:
        stats.stop(StopReason[name], f"{name} received; the batches go on on the server: "
                   "rerun the same command to collect them")
        driver.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, handle, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


def _notes(state: BatchState, stats: Stats, folder: Path, bcfg: BatchConfig,
           out_path: Path, err_path: Path, driver_left: int) -> None:
    # Nothing was charged at admission: the online estimate line would mislead.
    stats.tokens_used_answered = stats.tokens_charged_answered = stats.actual_prompt = 0
    calls = state.calls
    done = sum(p.step == "done" for p in state.parts)
    stats.note(f"batch: {len(state.parts)} parts ({done} done), API calls: "
               + ", ".join(f"{calls.get(k, 0)} {k}" for k in
                           ("uploads", "creates", "polls", "downloads", "lists", "cancels")))
    if driver_left:
        stats.stop(StopReason.CALLER, f"{driver_left:,} requests of cancelled batches were not "
                   "sent again: rerun the same command to send them")
    if not state.finished and stats.stopped is None:
        waiting = sum(p.active or p.pending for p in state.parts)
        stats.note(f"{waiting} parts still with the Batch API"
                   + ("; detached" if bcfg.detach else "")
                   + ": rerun the same command to collect them (`batchproc batches` shows "
                   "their status)")
    stats.note(f"batch state: {folder / 'state.json'}")
    stats.note(f"results: {out_path}")
    stats.note(f"errors:  {err_path}")
