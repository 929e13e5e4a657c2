"""``JobConfig``: everything a run needs besides the input file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..client.http import AZURE_API_VERSION, DEFAULT_BASE_URL, DEFAULT_MAX_RESPONSE_MB
from ..cost import DEFAULT_MAX_TOKENS
from ..jobs import DEFAULT_ENDPOINT
from ..limits.models import ModelLimit
from ..shards import Shard
from ..store.cachekey import DEFAULT_IGNORE

__all__ = ["JobConfig"]


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
        resend_changed: lines whose content changed since they were answered (or failed
            for good) are sent again, their earlier records moved to side files. Without
            it, a changed line without a custom_id (named by its position) stops the run
            before anything is sent, and one with a custom_id keeps its old answer.
        secret_headers: extra headers whose values are masked wherever a server might
            echo them (credential headers in ``headers`` are masked anyway).
        max_response_mb: the largest answer kept, in MiB; a larger one is an error
            record (``response_too_large``).
        outage_window: seconds the server may stay down (most attempts failing with
            5xx or connection errors) while batchproc probes it, spending no attempts,
            before the run stops (resumable); 0 turns this off.
        pack: send consecutive embeddings (and legacy completions) requests that differ
            only in their input as one request of at most this many inputs, or
            ``"auto"``; None: never (see :mod:`processor.run.packing`).
        cache_path: the response cache, a SQLite file (None: no cache); see
            :mod:`processor.store.cache`.
        cache_mode: ``all``, ``deterministic``, ``read-only`` or ``refresh``
            (:class:`~processor.store.cachekey.CacheMode`).
        cache_ignore: top-level body fields left out of the cache key.
        single_flight: ``all``, ``deterministic`` or ``off``
            (:class:`~processor.store.cachekey.Share`): identical requests in flight
            at once are sent once.
        shard: take only this shard's lines (``--shard K/N``), with its own output
            files and resume state (see :mod:`processor.shards`).
        run_log: the run log (:mod:`processor.store.runlog`): True for
            ``<stem>.run.jsonl`` beside the results, a path, or False for none.
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)  # never in a repr
    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int = 100
    max_attempts: int = 5
    timeout: float = 600.0
    endpoint: str = DEFAULT_ENDPOINT
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    encodings_dir: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    azure: bool | None = None
    api_version: str = AZURE_API_VERSION
    api_keys: list[tuple[str, str]] = field(default_factory=list, repr=False)
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
    resend_changed: bool = False
    secret_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    outage_window: float = 1800.0
    limits: Mapping[str, ModelLimit] = field(default_factory=dict)
    shared_buckets: list[list[str]] = field(default_factory=list)
    limit_scope: str = "model"
    limiter: str | None = field(default=None, repr=False)  # a URL may hold a password
    limiter_password: str | None = field(default=None, repr=False)
    limiter_namespace: str | None = None
    pack: int | str | None = None
    cache_path: str | None = None
    cache_mode: str = "all"
    cache_ignore: tuple[str, ...] = DEFAULT_IGNORE
    single_flight: str = "all"
    shard: Shard | None = None
    run_log: bool | str = True
