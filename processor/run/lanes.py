"""The run's keys and their limiters: per model (:mod:`processor.limits.models`), in this
process or shared through Redis (:mod:`processor.limits.redis`), from a
:class:`~processor.run.config.JobConfig`."""

from __future__ import annotations

from collections.abc import Mapping

from ..limits import Counter, Limiter
from ..limits.models import Factory, LimitPlan, ModelLimit, ModelLimiters, Scope
from ..limits.redis import RedisBudget, RedisLimiter, fingerprint, namespace_of
from .config import JobConfig
from .keys import Lane

__all__ = ["build_budget", "build_lanes", "limit_plan"]


def limit_plan(cfg: JobConfig) -> LimitPlan:
    """The user's limits: the bare flags, ``--limit``, shared buckets and the scope.

    Raises:
        ValueError: a model in two shared buckets, a shared bucket's limit given by a
            model other than its first, an unknown scope.
    """
    return LimitPlan(ModelLimit(cfg.rpm, cfg.tpm, cfg.rpd, cfg.tpd), auto_rpm=cfg.auto_rpm,
                     auto_tpm=cfg.auto_tpm, per_model=dict(cfg.limits),
                     shared=[list(group) for group in cfg.shared_buckets],
                     scope=Scope(cfg.limit_scope), burst_seconds=cfg.burst_seconds)


def build_budget(cfg: JobConfig) -> RedisBudget | None:
    """The Redis connection for ``cfg.limiter`` (None: counters in this process).

    Raises:
        ConfigError: not a Redis URL, or redis-py is not installed.
    """
    if not cfg.limiter:
        return None
    return RedisBudget(cfg.limiter, password=cfg.limiter_password,
                       namespace=cfg.limiter_namespace or namespace_of(cfg.base_url),
                       give_up_after=cfg.outage_window or 1800.0)


def build_lanes(cfg: JobConfig,
                keys: list[tuple[str | None, str | None, Mapping[str, str] | None]],
                budget: RedisBudget | None = None) -> list[Lane]:
    """One lane per ``(name, key, headers)``, each with its limiters per model bucket
    (in Redis when ``budget`` is given, named by a fingerprint of the key)."""
    plan = limit_plan(cfg)
    # ``Lane.limiter``: the bare flags, for calls that are no model's (the Batch API's
    # files and batches); requests go by ``Lane.limiter_for(model)``.
    return [Lane(name, Limiter.per_minute(cfg.rpm, cfg.tpm, rpd=cfg.rpd, tpd=cfg.tpd,
                                          burst_seconds=cfg.burst_seconds), headers,
                 models=ModelLimiters(plan, _factory(cfg, key, budget)))
            for name, key, headers in keys]


def _factory(cfg: JobConfig, key: str | None, budget: RedisBudget | None) -> Factory[Limiter]:
    fp = fingerprint(key)

    def make(bucket: str, own: list[Counter], shared: list[Counter], auto_rpm: bool,
             auto_tpm: bool) -> Limiter:
        if budget is None:
            return Limiter(own + shared, auto_requests=auto_rpm, auto_tokens=auto_tpm,
                           burst_seconds=cfg.burst_seconds)
        names = [budget.key(fp, bucket)] + ([budget.key(fp, None)] if shared else [])
        return RedisLimiter(budget, names, own, shared, auto_requests=auto_rpm,
                            auto_tokens=auto_tpm, burst_seconds=cfg.burst_seconds)

    return make
