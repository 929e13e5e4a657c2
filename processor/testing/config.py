"""The mock server's settings (:class:`MockConfig`) and counters (:class:`MockStats`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

__all__ = ["STATS_KEY", "MockConfig", "MockStats", "OutageMode"]


class OutageMode(str, enum.Enum):
    """What a request gets during an outage."""

    BAD_GATEWAY = "502"
    """A load balancer's ``502 Bad Gateway`` with an HTML body."""
    RESET = "reset"
    """The connection is reset before any answer."""
    MIXED = "mixed"
    """Either, half and half (seeded)."""


@dataclass(slots=True)
class MockConfig:
    """How the mock server behaves; each field maps to one CLI option.

    Attributes:
        rpm, tpm: requests / tokens per minute enforced (``None``: unlimited).
        rpd, tpd: requests / tokens per day enforced (``None``: unlimited).
        initial_fill: share of each per-minute bucket available at start (1.0 like OpenAI;
            0.0 as if another process had just spent it). Daily buckets start full.
        count_rejected: charge refused (429) requests against RPM/RPD, as OpenAI does.
        latency_ms, latency_jitter_ms: answer after ``latency_ms + U(0, jitter)``.
        fail_500, fail_503, reset, hang, truncate: per-request fault probabilities, mutually
            exclusive (one ``random.Random(seed)`` draw), summing to at most 1.
        seed: seeds the faults, jitter and completion lengths (the faults from a stream
            of their own: the n-th request judged meets the same fault in every run,
            however requests interleave).
        api_key: when set, other keys (``Authorization: Bearer``, Azure ``api-key``) get 401.
        revoked_keys: keys that get 401.
        insufficient_quota: every request gets 429 ``insufficient_quota``.
        models: when set, any other model (or Azure deployment) gets 404.
        overloaded_models: models that always answer 429 (to exercise a fallback model).
        embedding_dim: length of the embedding vectors (unless the body sets ``dimensions``).
        embedding_limits: an embeddings request's (most inputs, most tokens in all, most
            tokens per input), OpenAI's by default; more gets a 400.
        outage_at: seconds after the server started when an outage begins (``None``: never).
        outage_for: how long the outage lasts, in seconds.
        outage_mode: what requests get meanwhile (:class:`OutageMode`).
        model_limits: limits per model, ``{"gpt-4o": (rpm, tpm, rpd, tpd)}`` (None: no
            limit; the daily ones may be left out): each has its own buckets and its own
            ``x-ratelimit-*`` headers, as OpenAI counts; other models use ``rpm``...
        outage_from_first_request: count ``outage_at`` from the first request the server
            sees instead of from its start (tests whose client takes a while to start).

    Raises:
        ValueError: a limit below 1 request / not positive, a probability outside [0, 1],
            a negative outage time.
    """

    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    tpd: float | None = None
    initial_fill: float = 1.0
    count_rejected: bool = False
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_500: float = 0.0
    fail_503: float = 0.0
    reset: float = 0.0
    hang: float = 0.0
    truncate: float = 0.0
    seed: int | None = None
    api_key: str | None = None
    revoked_keys: frozenset[str] = frozenset()
    insufficient_quota: bool = False
    models: frozenset[str] | None = None
    overloaded_models: frozenset[str] = frozenset()
    embedding_dim: int = 8
    embedding_limits: tuple[int, int, int] = (2048, 300_000, 8192)
    outage_at: float | None = None
    outage_for: float = 0.0
    outage_mode: OutageMode = OutageMode.BAD_GATEWAY
    model_limits: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)
    outage_from_first_request: bool = False

    def __post_init__(self) -> None:
        limits = {m: tuple(v) + (None,) * (4 - len(v)) for m, v in self.model_limits.items()}
        for model, (rpm, tpm, rpd, tpd) in limits.items():
            if any(v is not None and v < 1 for v in (rpm, rpd)) or any(
                    v is not None and v <= 0 for v in (tpm, tpd)):
                raise ValueError(f"{model}: rpm/rpd at least 1, tpm/tpd positive")
        self.model_limits = limits
        faults = (self.fail_500, self.fail_503, self.reset, self.hang, self.truncate)
        if any(v is not None and v < 1 for v in (self.rpm, self.rpd)):
            raise ValueError("rpm and rpd must be at least 1")
        if any(v is not None and v <= 0 for v in (self.tpm, self.tpd)):
            raise ValueError("tpm and tpd must be positive")
        if not all(0 <= p <= 1 for p in (*faults, self.initial_fill)) or sum(faults) > 1:
            raise ValueError("fault probabilities and initial_fill must lie in [0, 1], sum <= 1")
        if min(self.latency_ms, self.latency_jitter_ms) < 0 or self.embedding_dim < 1:
            raise ValueError("latencies must be >= 0 and embedding_dim >= 1")
        if (self.outage_at is not None and self.outage_at < 0) or self.outage_for < 0:
            raise ValueError("outage_at and outage_for must be >= 0")
        self.outage_mode = OutageMode(self.outage_mode)


@dataclass(slots=True)
class MockStats:
    """Counters of what the server did (bounded memory: no per-request records).

    ``requests`` counts every POST to an API endpoint, whatever became of it. ``ok`` counts
    complete 200s; a truncated 200 counts in ``truncated`` and ``by_status[200]`` only.
    ``outage`` counts the requests refused by the outage (502s, also in ``n_5xx`` and
    ``by_status``, and resets, not in ``resets``). ``tokens_charged`` sums the token cost
    of every admitted request.
    """

    requests: int = 0
    ok: int = 0
    n_429: int = 0
    n_5xx: int = 0
    resets: int = 0
    hangs: int = 0
    truncated: int = 0
    outage: int = 0
    tokens_charged: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    #: per model: requests admitted and refused (429) by the limits, tokens admitted,
    #: and the clock's first and last admission.
    models: dict[str, dict[str, float]] = field(default_factory=dict)

    def by_model(self, model: str, now: float, admitted: bool, tokens: int) -> None:
        """Count one request of ``model`` that passed (or not) the rate limits."""
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = {"admitted": 0, "refused": 0, "tokens": 0,
                                      "first": now, "last": now}
        if admitted:
            m["admitted"] += 1
            m["tokens"] += tokens
            m["last"] = now
        else:
            m["refused"] += 1

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as a new plain dict (``by_status`` keyed by int)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return out | {"by_status": dict(self.by_status),
                      "models": {m: dict(v) for m, v in self.models.items()}}

    def clear(self) -> None:
        """Set every counter back to zero."""
        for f in fields(self):
            setattr(self, f.name, {} if f.name in ("by_status", "models") else 0)

    def count_status(self, status: int) -> None:
        """Count one answer with this HTTP status (and in ``n_429`` / ``n_5xx``)."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status == 429:
            self.n_429 += 1
        elif status >= 500:
            self.n_5xx += 1


#: typed key of the application's :class:`MockStats` (``app["stats"]`` holds the same object).
STATS_KEY = web.AppKey("stats", MockStats)
