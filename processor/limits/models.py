"""Limits per model: the ``--limit MODEL=RPM/TPM[/RPD/TPD]`` syntax, shared buckets, the
scope of the bare flags, and one key's limiters kept per model bucket.

Servers count each model apart (OpenAI: gpt-4o and gpt-4o-mini have separate buckets
per organisation), so by default every model a job uses gets its own counters: the bare
``--rpm`` / ``--tpm`` (and ``--rpd`` / ``--tpd``) apply to *each* model
(:attr:`Scope.MODEL`), a ``--limit`` overrides them for one model, and ``auto`` learns
each model's limits from that model's answers. Some proxies count the whole key
instead: :attr:`Scope.KEY` makes the bare flags one set of counters the key's models
share, each model still held to its own ``--limit`` as well. Models the server counts
together (an alias and its dated snapshot) are declared with ``--shared-bucket``: they
are one bucket, named after the first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from .counter import Counter, flag_counters

__all__ = ["LimitPlan", "ModelLimit", "ModelLimiters", "Scope", "parse_limit_spec",
           "parse_limits_file", "parse_shared_bucket"]

_UNITS = ("rpm", "tpm", "rpd", "tpd")


class Scope(Enum):
    """What the bare ``--rpm/--tpm/--rpd/--tpd`` count."""

    MODEL = "model"
    """Each model apart, as OpenAI counts (the default)."""
    KEY = "key"
    """All of a key's models together, as some proxies count."""


@dataclass(frozen=True, slots=True)
class ModelLimit:
    """One model's limits (None: not given here; the bare flags or ``auto`` apply)."""

    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    tpd: float | None = None

    def merged(self, defaults: ModelLimit) -> ModelLimit:
        """These limits, with ``defaults`` where none is given."""
        return ModelLimit(*(mine if mine is not None else theirs
                            for mine, theirs in zip(self.values(), defaults.values(),
                                                    strict=True)))

    def values(self) -> tuple[float | None, float | None, float | None, float | None]:
        return self.rpm, self.tpm, self.rpd, self.tpd


def _number(text: str, what: str) -> float | None:
    text = text.strip().replace("_", "").replace(",", "")
    if text in ("", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {text!r}")
    return value


def parse_limit_spec(text: str) -> tuple[str, ModelLimit]:
    """``gpt-4o=500/30000`` -> ``("gpt-4o", ModelLimit(500, 30000))``.

    The values are requests/min, tokens/min, requests/day, tokens/day in that order;
    trailing ones may be left out and any may be ``-`` (not given: the bare flag or
    ``auto`` applies). Digits may be grouped with ``_`` (a ``,`` would be ambiguous).

    Raises:
        ValueError: no ``=``, an empty model, more than four values, a value that is not
            a positive number, or nothing given at all.
    """
    model, eq, values = text.partition("=")
    model = model.strip()
    if not eq or not model:
        raise ValueError(f"expected MODEL=RPM/TPM[/RPD/TPD], got {text!r}")
    parts = values.split("/")
    if len(parts) > 4:
        raise ValueError(f"at most four values (RPM/TPM/RPD/TPD) for {model}, got {values!r}")
    if any("," in p for p in parts):
        raise ValueError(f"group digits with _ not , in {text!r}")
    numbers = [_number(p, f"{model} {unit}") for p, unit in zip(parts, _UNITS, strict=False)]
    if not any(n is not None for n in numbers):
        raise ValueError(f"no limit given for {model} in {text!r}")
    numbers += [None] * (4 - len(numbers))
    return model, ModelLimit(*numbers)


def parse_limits_file(text: str) -> dict[str, ModelLimit]:
    """A limits file: one ``MODEL=RPM/TPM[/RPD/TPD]`` per line; ``#`` starts a comment.

    Raises:
        ValueError: a bad line (its number is in the message) or a model given twice.
    """
    limits: dict[str, ModelLimit] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.partition("#")[0].strip()
        if not line:
            continue
        try:
            model, limit = parse_limit_spec(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if model in limits:
            raise ValueError(f"line {number}: {model} is given twice")
        limits[model] = limit
    return limits


def parse_shared_bucket(text: str) -> list[str]:
    """``gpt-4o,gpt-4o-2024-08-06`` -> the models, at least two, none repeated."""
    models = [m.strip() for m in re.split(r"[,\s]+", text) if m.strip()]
    if len(models) < 2 or len(set(models)) != len(models):
        raise ValueError(f"a shared bucket names two or more different models, got {text!r}")
    return models


@dataclass(slots=True)
class LimitPlan:
    """The user's limits, for every key alike.

    Attributes:
        defaults: the bare flags (None: not given).
        auto_rpm / auto_tpm: learn what no flag gives from the server's headers.
        per_model: ``--limit`` / the limits file, by model (or bucket) name.
        shared: groups of models the server counts as one bucket.
        scope: what the bare flags count (:class:`Scope`).
        burst_seconds: credit a per-minute counter may save up, in seconds.
    """

    defaults: ModelLimit = field(default_factory=ModelLimit)
    auto_rpm: bool = True
    auto_tpm: bool = True
    per_model: Mapping[str, ModelLimit] = field(default_factory=dict)
    shared: list[list[str]] = field(default_factory=list)
    scope: Scope = Scope.MODEL
    burst_seconds: float = 1.0
    _bucket_of: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for group in self.shared:
            for model in group:
                if model in seen:
                    raise ValueError(f"{model} is in two shared buckets")
                seen[model] = group[0]
        self._bucket_of = seen
        for model in self.per_model:
            if seen.get(model, model) != model:
                raise ValueError(f"give the limit of the shared bucket {seen[model]}+ by its "
                                 f"first model, {seen[model]}, not {model}")

    def bucket(self, model: str | None) -> str:
        """The bucket ``model`` is counted in ("" for requests that name no model)."""
        if model is None:
            return ""
        return self._bucket_of.get(model, model)

    def limit(self, bucket: str) -> ModelLimit:
        """The limits a bucket's requests are held to (its own, else the bare flags)."""
        return self.per_model.get(bucket, ModelLimit()).merged(self.defaults)

    def auto(self, bucket: str) -> tuple[bool, bool]:
        """Whether the bucket learns its requests / tokens per minute from the server:
        where neither its ``--limit`` nor a bare flag gives one."""
        given = self.per_model.get(bucket, ModelLimit()).merged(self.defaults)
        return self.auto_rpm and given.rpm is None, self.auto_tpm and given.tpm is None

    @property
    def split(self) -> bool:
        """Whether models get counters of their own (else one set for the key)."""
        return self.scope is Scope.MODEL or bool(self.per_model)


L = TypeVar("L")

#: makes one bucket's limiter (a local one, or one whose counters live in Redis):
#: ``factory(bucket, own counters, the key's shared counters, auto_rpm, auto_tpm)``.
Factory = Callable[[str, list[Counter], list[Counter], bool, bool], L]


class ModelLimiters(Generic[L]):
    """One key's limiters, one per model bucket, made on first use.

    Args:
        plan: the user's limits.
        factory: makes a bucket's limiter from its counters (see :data:`Factory`).
        now: the clock's reading, for the counters' start.
    """

    def __init__(self, plan: LimitPlan, factory: Factory[L], now: float | None = None) -> None:
        self.plan = plan
        self.factory = factory
        self._now = now
        d = plan.defaults
        # Scope.KEY: the bare flags are one set of counters every model of the key passes.
        self.key_counters = (flag_counters(d.rpm, d.tpm, d.rpd, d.tpd,
                                           burst_seconds=plan.burst_seconds, now=now)
                             if plan.scope is Scope.KEY else [])
        self.by_bucket: dict[str, L] = {}

    def bucket(self, model: str | None) -> str:
        """The bucket ``model``'s requests are counted in ("" for all when not split)."""
        return self.plan.bucket(model) if self.plan.split else ""

    def get(self, model: str | None) -> L:
        """The limiter ``model``'s requests are admitted by (made on first use)."""
        bucket = self.bucket(model)
        limiter = self.by_bucket.get(bucket)
        if limiter is None:
            limiter = self.by_bucket[bucket] = self._make(bucket)
        return limiter

    def _make(self, bucket: str) -> L:
        plan = self.plan
        own = plan.per_model.get(bucket, ModelLimit()) if plan.scope is Scope.KEY \
            else plan.limit(bucket)
        counters = flag_counters(*own.values(), burst_seconds=plan.burst_seconds, now=self._now)
        auto_rpm, auto_tpm = plan.auto(bucket)
        return self.factory(bucket, counters, self.key_counters, auto_rpm, auto_tpm)

    def all(self) -> list[L]:
        return list(self.by_bucket.values())
