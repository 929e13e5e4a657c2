"""Limits per model: the ``--limit`` syntax, the plan (scope, shared buckets, auto), and
admission on a fake clock: a mixed job keeps every model at its own limit at once, and a
request waiting for one model's counters never holds up another model's."""

from __future__ import annotations

import math
from typing import Any

import pytest

from processor.jobs import Job
from processor.limits import Counter, Limiter
from processor.limits.models import (
    LimitPlan,
    ModelLimit,
    ModelLimiters,
    Scope,
    parse_limit_spec,
    parse_limits_file,
    parse_shared_bucket,
)
from processor.run.engine import Engine
from processor.run.keys import Lane
from processor.run.retry import RetryPolicy
from tests.test_engine_clock import FakeClock, Server, Sink


@pytest.mark.parametrize(("text", "model", "limit"), [
    ("gpt-4o=500/30000", "gpt-4o", ModelLimit(500, 30000)),
    ("gpt-4o=500", "gpt-4o", ModelLimit(500)),
    ("gpt-4o=-/30_000", "gpt-4o", ModelLimit(None, 30000)),
    ("o1 = 20/1e6/100/5_000_000", "o1", ModelLimit(20, 1e6, 100, 5e6)),
    ("ft:gpt-4o:org:x=10/1000", "ft:gpt-4o:org:x", ModelLimit(10, 1000)),
], ids=["rpm-tpm", "rpm", "tpm-only", "all-four", "fine-tuned"])
def test_limit_spec_parses(text: str, model: str, limit: ModelLimit) -> None:
    assert parse_limit_spec(text) == (model, limit)


@pytest.mark.parametrize("text", [
    "gpt-4o", "=500/3000", "gpt-4o=", "gpt-4o=-/-", "gpt-4o=0/100", "gpt-4o=nan",
    "gpt-4o=inf/1", "gpt-4o=1/2/3/4/5", "gpt-4o=-5", "gpt-4o=500,30000", "gpt-4o=a/b"])
def test_bad_limit_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_limit_spec(text)


def test_limits_file() -> None:
    text = "# per-model limits\ngpt-4o=500/30000  # tier 1\n\ngpt-4o-mini = 500/200_000\n"
    assert parse_limits_file(text) == {"gpt-4o": ModelLimit(500, 30000),
                                       "gpt-4o-mini": ModelLimit(500, 200000)}
    with pytest.raises(ValueError, match="line 2"):
        parse_limits_file("a=1\nb=oops\n")
    with pytest.raises(ValueError, match="twice"):
        parse_limits_file("a=1\na=2\n")


def test_shared_buckets() -> None:
    assert parse_shared_bucket("gpt-4o, gpt-4o-2024-08-06") == ["gpt-4o", "gpt-4o-2024-08-06"]
    for bad in ("gpt-4o", "a,a", ""):
        with pytest.raises(ValueError):
            parse_shared_bucket(bad)
    plan = LimitPlan(shared=[["gpt-4o", "gpt-4o-2024-08-06"]])
    assert plan.bucket("gpt-4o-2024-08-06") == "gpt-4o" and plan.bucket("x") == "x"
    with pytest.raises(ValueError, match="two shared buckets"):
        LimitPlan(shared=[["a", "b"], ["b", "c"]])
    with pytest.raises(ValueError, match="by its first model"):
        LimitPlan(shared=[["a", "b"]], per_model={"b": ModelLimit(1)})


def _local(bucket: str, own: list[Counter], shared: list[Counter], auto_rpm: bool,
           auto_tpm: bool) -> Limiter:
    return Limiter(own + shared, auto_requests=auto_rpm, auto_tokens=auto_tpm)


def _limits(limiter: Limiter) -> dict[str, float]:
    return {c.name: c.limit for c in limiter.counters}


def test_scope_model_gives_each_model_the_bare_flags() -> None:
    plan = LimitPlan(ModelLimit(100, 1000), per_model={"big": ModelLimit(500)})
    models = ModelLimiters(plan, _local)
    a, b, big = models.get("a"), models.get("b"), models.get("big")
    assert a is not b and models.get("a") is a
    assert _limits(a) == _limits(b) == {"requests/min": 100, "tokens/min": 1000}
    assert _limits(big) == {"requests/min": 500, "tokens/min": 1000}
    assert not any(c in b.counters for c in a.counters)  # counted apart


def test_scope_key_shares_the_bare_flags_across_models() -> None:
    plan = LimitPlan(ModelLimit(100, None), scope=Scope.KEY, per_model={"big": ModelLimit(50)},
                     auto_tpm=False)
    models = ModelLimiters(plan, _local)
    a, big = models.get("a"), models.get("big")
    shared = [c for c in a.counters if c in big.counters]
    assert [c.limit for c in shared] == [100]  # one key-wide counter, in both
    assert sorted(c.limit for c in big.counters) == [50, 100]  # and its own --limit


def test_scope_key_without_model_limits_is_one_limiter() -> None:
    models = ModelLimiters(LimitPlan(ModelLimit(100), scope=Scope.KEY), _local)
    assert models.get("a") is models.get("b") is models.get(None)


def test_auto_is_learned_only_where_nothing_is_given() -> None:
    plan = LimitPlan(ModelLimit(None, 1000), per_model={"x": ModelLimit(10)})
    assert plan.auto("x") == (False, False)
    assert plan.auto("y") == (True, False)
    models = ModelLimiters(plan, _local)
    assert models.get("y").learning and not models.get("x").learning


# -- admission on a fake clock ----------------------------------------------------------


def _jobs(models: list[str]) -> list[Job]:
    return [Job(custom_id=f"{m}-{i}", url="/v1/chat/completions", line=i + 1, model=m,
                body={"model": m, "messages": [{"role": "user", "content": f"{m}-{i}"}]})
            for i, m in enumerate(models)]


def _engine(clock: FakeClock, server: Any, plan: LimitPlan, **kw: Any) -> tuple[Engine, Sink]:
    def factory(bucket: str, own: list[Counter], shared: list[Counter], auto_rpm: bool,
                auto_tpm: bool) -> Limiter:
        return Limiter(own + shared, clock=clock, auto_requests=auto_rpm,
                       auto_tokens=auto_tpm)

    sink = Sink()
    lane = Lane(None, Limiter(), models=ModelLimiters(plan, factory, now=clock()))
    return Engine(server, lane.limiter, sink, cost=lambda job: 10, clock=clock,
                  sleep=clock.sleep, wall=lambda: 1_000_000.0, progress_interval=5.0,
                  lanes=[lane], policy=RetryPolicy(max_attempts=3, rng=lambda: 0.0), **kw), sink


def _times(server: Server, prefix: str) -> list[float]:
    return [t for t, cid in server.sent if cid.startswith(prefix + "-")]


async def test_a_slow_model_never_holds_up_a_fast_one() -> None:
    """10 requests for a 60/min model first, then 50 for a 600/min one: the fast model
    goes at its own rate from the start instead of waiting behind the slow one's line."""
    clock = FakeClock()
    server = Server(clock, latency=0.2)
    plan = LimitPlan(per_model={"slow": ModelLimit(60), "fast": ModelLimit(600)},
                     auto_rpm=False, auto_tpm=False)
    eng, sink = _engine(clock, server, plan)
    stats = await clock.drive(eng.run(_jobs(["slow"] * 10 + ["fast"] * 50)))
    assert stats.ok == 60 and len(sink.results) == 60
    slow, fast = _times(server, "slow"), _times(server, "fast")
    # Each at its own rate, both at once: the fast ones are done within ~5 s, while
    # the slow ones take ~9 s (one a second, a burst of one).
    assert fast[-1] <= 5.1 and slow[-1] >= 8.9
    assert fast[0] <= 0.2
    for k, t in enumerate(slow):  # never faster than 60/min
        assert k + 1 <= t + 1 + 1e-9
    for k, t in enumerate(fast):  # never faster than 600/min
        assert k + 1 <= 10 * t + 1 + 1e-9


async def test_each_model_keeps_its_order() -> None:
    clock = FakeClock()
    server = Server(clock, latency=0.1)
    plan = LimitPlan(per_model={"a": ModelLimit(120), "b": ModelLimit(60)},
                     auto_rpm=False, auto_tpm=False)
    eng, _ = _engine(clock, server, plan)
    await clock.drive(eng.run(_jobs(["a", "b"] * 8)))
    for prefix in ("a", "b"):
        sent = [int(cid.split("-")[1]) for _, cid in server.sent if cid.startswith(prefix)]
        assert sent == sorted(sent)


async def test_shared_bucket_models_spend_one_counter() -> None:
    clock = FakeClock()
    server = Server(clock, latency=0.1)
    plan = LimitPlan(per_model={"gpt-4o": ModelLimit(60)}, auto_rpm=False, auto_tpm=False,
                     shared=[["gpt-4o", "gpt-4o-2024-08-06"]])
    eng, _ = _engine(clock, server, plan)
    await clock.drive(eng.run(_jobs(["gpt-4o", "gpt-4o-2024-08-06"] * 5)))
    times = sorted(t for t, _ in server.sent)
    for k, t in enumerate(times):  # ten requests at 60/min together, not 120/min
        assert k + 1 <= t + 1 + 1e-9
    assert times[-1] >= 8.9


async def test_held_requests_are_bounded() -> None:
    """A slow model's backlog is held up to the bound, then new lines pause."""
    clock = FakeClock()
    server = Server(clock, latency=0.1)
    plan = LimitPlan(per_model={"slow": ModelLimit(60)}, auto_rpm=False, auto_tpm=False)
    eng, _ = _engine(clock, server, plan, max_in_flight=2, max_requeue=4)
    most = 0

    original = eng.admission.held.hold

    def hold(bucket: str, job: Job) -> None:
        nonlocal most
        original(bucket, job)
        most = max(most, len(eng.admission.held))

    eng.admission.held.hold = hold  # type: ignore[method-assign]
    stats = await clock.drive(eng.run(_jobs(["slow"] * 20)))
    assert stats.ok == 20 and most <= 4


async def test_a_spent_daily_budget_of_one_model_stops_the_run() -> None:
    clock = FakeClock()
    server = Server(clock, latency=0.1)
    plan = LimitPlan(per_model={"a": ModelLimit(600, None, 3)}, auto_rpm=False,
                     auto_tpm=False)
    eng, _ = _engine(clock, server, plan)
    stats = await clock.drive(eng.run(_jobs(["a"] * 5 + ["b"] * 3)))
    assert stats.stop_reason is not None and "daily budget" in stats.stop_reason
    assert len([1 for _, c in server.sent if c.startswith("a-")]) == 3
    assert math.isfinite(clock.now)


def test_a_packs_token_budget_is_its_models_counters() -> None:
    """--pack with limits per model: a pack of gpt-4o lines fits gpt-4o's TPM burst."""
    from processor.run.config import JobConfig
    from processor.run.lanes import build_lanes
    from processor.run.packing import Packer
    from processor.stats import Stats

    cfg = JobConfig(tpm=600_000, limits={"small": ModelLimit(None, 6_000)})
    lanes = build_lanes(cfg, [(None, None, None)])
    packer = Packer(None, lambda item: item if isinstance(item, Job) else None, lanes, Stats())
    packer._model = "small"
    assert packer.budget() == pytest.approx(100.0)  # 6,000/min: a burst of one second
    packer._model = "big"
    assert packer.budget() == pytest.approx(10_000.0)


async def test_a_fallback_model_is_charged_to_its_own_counters() -> None:
    """Requests moved to --fallback-model go at the fallback's limit, not the first's."""
    from processor.errors import APIError, RateLimited
    from processor.run.retry import Fallback

    clock = FakeClock()
    sent_models: list[tuple[float, str]] = []

    class ModelServer(Server):
        async def post(self, endpoint: str, payload: bytes, *, headers: Any = None,
                       model: str | None = None) -> Any:
            sent_models.append((clock.now, model or ""))
            return await super().post(endpoint, payload, headers=headers, model=model)

    def fail(cid: str, n: int) -> APIError | None:
        return RateLimited("busy", status=429, retry_after=0.0) if n == 1 else None

    server = ModelServer(clock, latency=0.1, fail=fail)
    plan = LimitPlan(per_model={"a": ModelLimit(6000), "b": ModelLimit(60)}, auto_rpm=False,
                     auto_tpm=False)
    eng, sink = _engine(clock, server, plan, fallback=Fallback("b", after=1),
                        outage_window=0)
    stats = await clock.drive(eng.run(_jobs(["a"] * 5)))
    assert stats.ok == 5 and stats.fallbacks == 5
    on_b = [t for t, m in sent_models if m == "b"]
    assert len(on_b) == 5
    for k, t in enumerate(on_b):  # at b's 60/min, from b's own (empty) counter
        assert k + 1 <= t + 1 + 1e-9
