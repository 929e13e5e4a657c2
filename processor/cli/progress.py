"""What people watching a run see: a rich live display, plain log lines, a summary.

The engine knows nothing of this module: it calls ``on_progress(stats)`` a few times a
second and the reporters here render those :class:`~processor.run.engine.Stats`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any

from ..stats import Stats, human_duration
from ..tools.estimate import price_for
from .modelrates import ModelRates, models_line, models_summary, models_summary_line

if TYPE_CHECKING:
    from rich.console import Console

# rich is imported only by the live display: a run in a pipeline starts faster without it.

__all__ = ["LiveReporter", "PlainReporter", "Rates", "format_summary", "summary_dict"]


class Rates:
    """Achieved request and token rates over a sliding window of samples."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def update(self, stats: Stats, now: float | None = None) -> tuple[float, float, float]:
        """Record a sample; return (requests/min, tokens/min, finished/s) over the window."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, stats.attempts, stats.tokens_charged, stats.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        t0, a0, k0, d0 = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0, 0.0
        _, a1, k1, d1 = self._samples[-1]
        return (a1 - a0) / dt * 60, (k1 - k0) / dt * 60, (d1 - d0) / dt


def _eta(stats: Stats, per_s: float) -> str:
    if stats.total is None or per_s <= 0:
        return "?"
    left = max(0, stats.total - stats.done - stats.skipped)
    secs = int(left / per_s)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rate(value: float, stats: Stats, name: str) -> str:
    """``1,234/3,000`` against the limit; ``(learned)`` when the server told us it."""
    limit = stats.limits.get(name)
    if not limit:
        return f"{value:,.0f}"
    learned = " (learned)" if name in stats.learned else ""
    return f"{value:,.0f}/{limit:,.0f}{learned}"


def outage_line(stats: Stats) -> str:
    """``server down since 14:02, probing every 8s`` while the server is down,
    ``waiting for Redis ...`` while the shared limiter is, ``paused by the server (429)
    until 15:04, 49m58s left`` while a long pause it asked for lasts, else ``""``."""
    if stats.outage_since is None:
        return " | ".join(words for words in (stats.waiting_for, _server_pause(stats))
                          if words)
    since = time.strftime("%H:%M", time.localtime(stats.outage_since))
    every = f", probing every {human_duration(stats.probe_every)}" if stats.probe_every else ""
    return f"server down since {since}{every}"


def _server_pause(stats: Stats) -> str:
    until = stats.server_pause_until
    left = 0.0 if until is None else until - time.time()
    if until is None or left <= 0:
        return ""
    key = f", key ${stats.server_pause_key}" if stats.server_pause_key else ""
    at = time.strftime("%H:%M", time.localtime(until))
    return f"paused by the server (429{key}) until {at}, {human_duration(left)} left"


def _served(stats: Stats) -> str:
    """`` (cached N, shared M)`` when some answers needed no request of their own."""
    parts = [f"{name} {n:,}" for name, n in (("cached", stats.cached), ("shared", stats.shared))
             if n]
    return f" ({', '.join(parts)})" if parts else ""


def status_line(stats: Stats, rates: tuple[float, float, float], models: str = "") -> str:
    """One line of progress (``models``: each model's rate, when there are several)."""
    rpm, tpm, per_s = rates
    total = "?" if stats.total is None else f"{stats.total:,}"
    outage = outage_line(stats)
    return (
        f"done {stats.done + stats.skipped:,}/{total} ok {stats.ok:,}{_served(stats)} failed "
        f"{stats.failed + stats.bad_lines:,} retrying {stats.retrying:,} in-flight "
        f"{stats.in_flight:,} 429s {stats.n_429:,} | rpm {_rate(rpm, stats, 'rpm')} "
        f"tpm {_rate(tpm, stats, 'tpm')} | eta {_eta(stats, per_s)}"
        + (f" | {models}" if models else "") + (f" | {outage}" if outage else "")
    )


class PlainReporter:
    """One log line every ``every`` seconds: for pipelines and files, no terminal codes."""

    def __init__(self, stream: IO[str], every: float = 10.0) -> None:
        self.stream = stream
        self.every = every
        self.rates = Rates()
        self.models = ModelRates()
        self._last = 0.0

    def __call__(self, stats: Stats) -> None:
        rates = self.rates.update(stats)
        models = models_line(stats, self.models.update(stats))
        now = time.monotonic()
        if now - self._last >= self.every or stats.finished is not None:
            self._last = now
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} {status_line(stats, rates, models)}", file=self.stream,
                  flush=True)

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveReporter:
    """A rich progress bar with live counts, rates against the limits and an ETA."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.rates = Rates()
        self.models = ModelRates()
        self.progress = Progress(
            TextColumn("[bold]batchproc"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=console,
        )
        self.task = self.progress.add_task("run", total=None, total_text="?", eta="?")
        self._live = Live(self._render(""), console=console, refresh_per_second=4,
                          transient=False)

    def _render(self, detail: str) -> Any:
        from rich.table import Table

        grid = Table.grid()
        grid.add_row(self.progress)
        grid.add_row(detail)
        return grid

    def __call__(self, stats: Stats) -> None:
        rpm, tpm, per_s = self.rates.update(stats)
        self.progress.update(
            self.task, total=stats.total, completed=stats.done + stats.skipped,
            total_text="?" if stats.total is None else f"{stats.total:,}",
            eta=_eta(stats, per_s),
        )
        detail = (
            f"[green]ok {stats.ok:,}{_served(stats)}[/]  "
            f"[red]failed {stats.failed + stats.bad_lines:,}[/]  "
            f"[yellow]retrying {stats.retrying:,}[/]  in-flight {stats.in_flight:,}  "
            f"429s {stats.n_429:,}  skipped {stats.skipped:,}\n"
            f"rpm {_rate(rpm, stats, 'rpm')}  tpm {_rate(tpm, stats, 'tpm')}"
        )
        models = models_line(stats, self.models.update(stats))
        if models:
            from rich.markup import escape  # model names are the input's words

            detail += f"\nby model: {escape(models)}"
        outage = outage_line(stats)
        if outage:
            from rich.markup import escape  # a server's or Redis's words are not markup

            detail += f"\n[bold red]{escape(outage)}[/]"
        self._live.update(self._render(detail))

    def __enter__(self) -> LiveReporter:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()


def summary_dict(stats: Stats) -> dict[str, Any]:
    """The end-of-run figures, as plain data."""
    elapsed = max(stats.elapsed, 1e-9)
    return {
        "total": stats.total,
        "ok": stats.ok,
        "failed": stats.failed,
        "bad_lines": stats.bad_lines,
        "skipped_already_done": stats.skipped,
        "retried_failed": stats.retried_failed,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "http_429": stats.n_429,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "wall_s": round(elapsed, 3),
        "achieved_rpm": round(stats.attempts / elapsed * 60, 1),
        "achieved_tpm": round(stats.tokens_charged / elapsed * 60, 1),
        "failures": dict(stats.failures),
        "stop_reason": stats.stop_reason,
        "limits": dict(stats.limits),
        "tokens_charged_answered": stats.tokens_charged_answered,
        "tokens_used_answered": stats.tokens_used_answered,
        "estimate_error": _estimate_error(stats),
        "changed_inputs": stats.changed,
        "fallbacks": stats.fallbacks,
        "retired_keys": list(stats.retired_keys),
        "answered_by_key": dict(stats.answered_by_key),
        "outage_s": round(stats.outage_seconds, 3),
        "outages": stats.outages,
        "stopped": stats.reason.value,
        "still_bad_lines": stats.still_bad,
        "cached": stats.cached,
        "shared": stats.shared,
        "saved_usd": saved_usd(stats),
        "by_model": models_summary(stats),
    }


def saved_usd(stats: Stats) -> float | None:
    """What the answers served from the cache or shared would have cost at list
    prices (:data:`processor.tools.estimate.PRICES`); None if none was priced."""
    total, priced = 0.0, False
    for model, (_, prompt, completion) in stats.saved.items():
        price = price_for(model) if model else None
        if price is not None:
            priced = True
            total += (prompt * price.input + completion * price.output) / 1e6
    return round(total, 6) if priced else None


def _estimate_error(stats: Stats) -> float | None:
    """How far the tokens charged at admission were above (+) the real usage, as a share."""
    if not stats.tokens_used_answered:
        return None
    return round(stats.tokens_charged_answered / stats.tokens_used_answered - 1.0, 4)


def format_summary(stats: Stats) -> str:
    """A short human summary of a finished run."""
    s = summary_dict(stats)
    lines = [
        f"{'Stopped' if stats.stop_reason else 'Finished'} in {s['wall_s']:.1f}s: "
        f"{s['ok']:,} ok, {s['failed']:,} failed, {s['bad_lines']:,} bad lines, "
        f"{s['skipped_already_done']:,} skipped (already done)",
        f"  attempts {s['attempts']:,} (retries {s['retries']:,}, 429s {s['http_429']:,}); "
        f"achieved {s['achieved_rpm']:,.0f} rpm, {s['achieved_tpm']:,.0f} tpm",
        f"  tokens used: {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion",
    ]
    if stats.tokens_used_answered:
        err = _estimate_error(stats) or 0.0
        prompt = ""
        if stats.actual_prompt:
            p = stats.estimated_prompt / stats.actual_prompt - 1.0
            prompt = f"; prompt estimate {p:+.1%}"
        lines.append(
            f"  token estimate: charged {stats.tokens_charged_answered:,} for "
            f"{stats.tokens_used_answered:,} used ({err:+.1%}, max_tokens budget included"
            f"{prompt})"
        )
    if stats.limits:
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in stats.limits.items())
        lines.append(f"  limits: {shown}")
    if (by_model := models_summary_line(stats)) is not None:
        lines.append(f"  {by_model}")
    if stats.cached or stats.shared:
        usd = s["saved_usd"]
        lines.append(
            f"  cached: {stats.cached:,}, shared (single-flight): {stats.shared:,}; saved about "
            + ("?" if usd is None else f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}")
            + " at list prices")
    if stats.fallbacks:
        lines.append(f"  {stats.fallbacks:,} requests sent with the fallback model")
    if stats.answered_by_key:
        keys = ", ".join(f"${k}: {v:,}" for k, v in stats.answered_by_key.most_common())
        lines.append(f"  answered by key: {keys}")
    if stats.retried_failed:
        lines.append(f"  retried {stats.retried_failed:,} requests that had failed before")
    if stats.failures:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in stats.failures.most_common())
        lines.append(f"  failures by reason: {reasons}")
    if stats.outages:
        times = f" ({stats.outages} times)" if stats.outages > 1 else ""
        lines.append(f"  outage: {human_duration(stats.outage_seconds)}{times}: the server was "
                     "down (5xx or connection errors) and probed; no request spent attempts "
                     "on it")
    if stats.stop_reason:
        lines.append(f"  stopped early: {stats.stop_reason}")
    lines.extend(f"  {note}" for note in stats.notes)
    return "\n".join(lines)
