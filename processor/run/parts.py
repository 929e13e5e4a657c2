"""``Parts``: what a run is made of (token counter, limiters, client, engine), built
from a :class:`~processor.run.config.JobConfig` and shared by the entry points."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..client.http import OpenAIClient, is_azure_url
from ..client.masking import Masker
from ..cost import Cost, TokenCounter
from ..errors import ConfigError
from ..jobs import Job
from ..limits.redis import RedisBudget
from ..stats import Stats
from ..store.cache import ResponseCache
from ..store.cachekey import CacheMode, KeyMaker, Share
from .config import JobConfig
from .engine import Engine, Lane, Sink
from .events import NO_EVENTS, Events
from .lanes import build_budget, build_lanes
from .retry import Fallback, RetryPolicy
from .singleflight import Dedupe

__all__ = ["Parts", "build_parts"]


@dataclass(slots=True)
class Parts:
    """What a run is made of, built from a :class:`JobConfig` (shared by the entry points)."""

    cfg: JobConfig
    counter: TokenCounter
    lanes: list[Lane]
    default_key: str | None
    azure: bool
    budget: RedisBudget | None = None

    @contextlib.asynccontextmanager
    async def limits(self) -> AsyncIterator[None]:
        """Hold the shared limiter's connection for the run (nothing without one)."""
        if self.budget is None:
            yield
            return
        try:
            await self.budget.check()
            yield
        finally:
            await self.budget.aclose()

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

    def open_cache(self) -> ResponseCache | None:
        """The response cache ``cfg.cache_path`` names (None without one); close it after
        the run (that commits its last answers).

        Raises:
            ConfigError: it cannot be opened, or is not a batchproc cache.
        """
        cfg = self.cfg
        if not cfg.cache_path:
            return None
        mode = CacheMode(cfg.cache_mode)
        return ResponseCache(cfg.cache_path, writes=mode.writes,
                             replace=mode is CacheMode.REFRESH)

    def engine(self, client: OpenAIClient, sink: Sink, *,
               on_progress: Callable[[Stats], None] | None = None,
               stats: Stats | None = None,
               before_admit: Callable[[], Awaitable[None]] | None = None,
               cache: ResponseCache | None = None,
               events: Events = NO_EVENTS) -> Engine:
        cfg = self.cfg
        dedupe = Dedupe(KeyMaker(cfg.base_url, cfg.cache_ignore), Share(cfg.single_flight),
                        cache, CacheMode(cfg.cache_mode))
        fallback = Fallback(cfg.fallback_model, cfg.fallback_after) if cfg.fallback_model else None
        return Engine(client, self.lanes[0].limiter, sink, cost=self.cost,
                      policy=RetryPolicy(cfg.max_attempts, base=cfg.backoff_base,
                                         cap=cfg.backoff_cap),
                      max_in_flight=cfg.max_in_flight, on_progress=on_progress,
                      grace=cfg.grace, stats=stats, lanes=self.lanes, fallback=fallback,
                      refund_unused=cfg.refund_unused, before_admit=before_admit,
                      outage_window=cfg.outage_window, pack=cfg.pack,
                      exact_tokens=self.exact_tokens, dedupe=dedupe, events=events)


def build_parts(cfg: JobConfig) -> Parts:
    """Token counter, one limiter per key, client and engine settings for ``cfg``."""
    counter = TokenCounter(encodings_dir=cfg.encodings_dir, allow_download=cfg.allow_download,
                           default_max_tokens=cfg.default_max_tokens, background=True)
    azure = cfg.azure if cfg.azure is not None else is_azure_url(cfg.base_url)
    _check_url_credentials(cfg, azure)
    budget = build_budget(cfg)
    try:
        if cfg.api_keys:
            header = "api-key" if azure else "Authorization"
            lanes = build_lanes(cfg, [(name, key, {header: key if azure else f"Bearer {key}"})
                                      for name, key in cfg.api_keys], budget)
            return Parts(cfg, counter, lanes, None, azure, budget)
        lanes = build_lanes(cfg, [(None, cfg.api_key, None)], budget)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Parts(cfg, counter, lanes, cfg.api_key, azure, budget)


def _check_url_credentials(cfg: JobConfig, azure: bool) -> None:
    """A base URL with ``user:pass@`` asks for Basic auth, which cannot go beside the
    key's own ``Authorization`` header: every request failed locally, taken for an
    outage without end. Refused before anything is sent (the message masks it).

    Raises:
        ConfigError: credentials in the URL and an Authorization header to send.
    """
    try:
        parts = urlsplit(cfg.base_url)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return  # the client reports a URL it cannot use
    bearer = not azure and bool(cfg.api_key or cfg.api_keys)
    header = any(name.strip().lower() == "authorization"
                 for name in list(cfg.headers) + list(cfg.secret_headers))
    if userinfo and (bearer or header):
        raise ConfigError(
            f"the base URL {Masker().url(cfg.base_url)} holds a user name or password "
            "(user:pass@), which would go as an Authorization header beside the API key's; "
            "give the URL without them (the key goes by --api-key-env)")
