"""``Parts``: what a run is made of (token counter, limiters, client, engine), built
from a :class:`~processor.run.config.JobConfig` and shared by the entry points."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..client.http import OpenAIClient, is_azure_url
from ..cost import Cost, TokenCounter
from ..jobs import Job
from ..limits.limiter import Limiter
from ..stats import Stats
from .config import JobConfig
from .engine import Engine, Lane, Sink
from .events import NO_EVENTS, Events
from .retry import Fallback, RetryPolicy

__all__ = ["Parts", "build_parts"]


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

    def exact_tokens(self, job: Job) -> int | None:
        return self.counter.exact_prompt_tokens(job.body, job.url)

    def client(self) -> OpenAIClient:
        cfg = self.cfg
        return OpenAIClient(cfg.base_url, self.default_key, timeout=cfg.timeout,
                            max_connections=cfg.max_in_flight, headers=cfg.headers,
                            azure=self.azure, api_version=cfg.api_version,
                            secrets=[key for _, key in cfg.api_keys],
                            secret_headers=cfg.secret_headers,
                            max_response_mb=cfg.max_response_mb)

    def engine(self, client: OpenAIClient, sink: Sink, *,
               on_progress: Callable[[Stats], None] | None = None,
               stats: Stats | None = None,
               before_admit: Callable[[], Awaitable[None]] | None = None,
               events: Events = NO_EVENTS) -> Engine:
        cfg = self.cfg
        fallback = Fallback(cfg.fallback_model, cfg.fallback_after) if cfg.fallback_model else None
        return Engine(client, self.lanes[0].limiter, sink, cost=self.cost,
                      policy=RetryPolicy(cfg.max_attempts, base=cfg.backoff_base,
                                         cap=cfg.backoff_cap),
                      max_in_flight=cfg.max_in_flight, on_progress=on_progress,
                      grace=cfg.grace, stats=stats, lanes=self.lanes, fallback=fallback,
                      refund_unused=cfg.refund_unused, before_admit=before_admit,
                      outage_window=cfg.outage_window, pack=cfg.pack,
                      exact_tokens=self.exact_tokens, events=events)


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
