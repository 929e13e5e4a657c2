"""Server-aware limits end to end: header sync, auto limits, daily budgets, several keys,
fallback model and Azure, against the mock server on loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from processor import JobConfig, run_job
from processor.run.runner import default_paths
from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl


def config(api: Any, **kw: Any) -> JobConfig:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("allow_download", False)
    kw.setdefault("max_attempts", 30)
    return JobConfig(base_url=kw.pop("base_url", api.base_url), **kw)


def answered_once(job: Path, n: int, prefix: str = "req-") -> list[dict[str, Any]]:
    results = read_jsonl(default_paths(job)[0])
    counts = Counter(r["custom_id"] for r in results)
    assert sorted(counts) == sorted(f"{prefix}{i}" for i in range(n))
    assert set(counts.values()) == {1}
    return results


@pytest.mark.slow
async def test_two_processes_share_one_budget(mock_api: Any, tmp_path: Path) -> None:
    # Two batchproc processes, each told the whole limit L; together they would send 2L.
    # Mirroring the server's remaining-requests header, each notices the other.
    limit = 1200  # 20/s
    api = await mock_api(rpm=limit, initial_fill=0.0, latency_ms=20)
    jobs = [write_jsonl(tmp_path / f"job{k}.jsonl",
                        [chat_line(i) for i in range(60)]) for k in range(2)]
    procs = [await start_cli(job, api.base_url, "--rpm", str(limit), "--tpm", "off",
                             "--max-attempts", "30", max_in_flight=10) for job in jobs]
    outs = [await p.communicate() for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()
    for job in jobs:
        answered_once(job, 60)
    # Without header sync both would run at L and about half of all requests would be
    # refused (~120 429s for 120 answers). With it, few are.
    print(f"combined 429s: {api.stats.n_429}")
    assert api.stats.n_429 < 30, api.stats.n_429
    assert api.stats.ok == 120


async def test_rpm_auto_learns_the_servers_limit(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(rpm=3000, tpm=1_000_000, initial_fill=0.0)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(80)])
    stats = await run_job(job, config(api))  # no --rpm / --tpm: auto
    answered_once(job, 80)
    assert stats.limits["rpm"] == 3000 and stats.limits["tpm"] == 1_000_000
    assert any("learned" in note for note in stats.notes)
    assert stats.n_429 <= 5
    assert stats.elapsed >= 80 / 50 * 0.9  # it ran at the learned 50/s, not faster


async def test_flag_daily_budget_stops_cleanly_and_resumes(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    stats = await run_job(job, config(api, rpd=8))
    assert stats.ok == 8 and stats.failed == 0
    assert stats.stop_reason is not None and "daily budget spent" in stats.stop_reason
    assert "requests/day 8" in stats.stop_reason and "rerun" in stats.stop_reason
    assert stats.rerun_later  # exit code 75: rerun later
    # The next day (a fresh budget), the same command finishes the job.
    again = await run_job(job, config(api, rpd=8))
    assert again.skipped == 8 and again.ok == 4 and again.stop_reason is None
    answered_once(job, 12)


async def test_server_daily_limit_stops_cleanly(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(rpd=5)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(10)])
    stats = await run_job(job, config(api, max_in_flight=1))
    assert stats.ok == 5
    assert stats.stop_reason is not None and "daily limit" in stats.stop_reason
    assert stats.resume_at is not None
    _, errors = default_paths(job)
    assert read_jsonl(errors) == []  # nothing failed for good: a rerun resumes


async def test_three_keys_one_revoked_mid_run(
    mock_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await mock_api(latency_ms=5)
    keys = [("KEY_A", "sk-aaaaaaaaaaaa"), ("KEY_B", "sk-bbbbbbbbbbbb"),
            ("KEY_C", "sk-cccccccccccc")]
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(150)])
    results_path = default_paths(job)[0]

    async def revoke_b() -> None:
        for _ in range(500):
            if results_path.exists() and results_path.stat().st_size > 0:
                break
            await asyncio.sleep(0.01)
        api.config.revoked_keys = frozenset({"sk-bbbbbbbbbbbb"})

    revoker = asyncio.create_task(revoke_b())
    stats = await run_job(job, config(api, api_keys=keys, rpm=3000, max_in_flight=6))
    await revoker
    results = answered_once(job, 150)
    assert stats.retired_keys == ["KEY_B"]
    assert any("$KEY_B retired" in note for note in stats.notes)
    by_key = Counter(r["batchproc"]["key"] for r in results)
    assert set(by_key) <= {"KEY_A", "KEY_B", "KEY_C"} and by_key["KEY_A"] and by_key["KEY_C"]
    for path in tmp_path.iterdir():
        for _, secret in keys:
            assert secret.encode() not in path.read_bytes()


async def test_fallback_model_after_repeated_429s(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(overloaded_models=frozenset({"gpt-busy"}))
    lines = [chat_line(i, model="gpt-busy" if i % 2 else "gpt-4o-mini") for i in range(6)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    stats = await run_job(job, config(api, fallback_model="gpt-4o-mini", fallback_after=2))
    results = answered_once(job, 6)
    fell_back = {r["custom_id"]: r for r in results if "batchproc" in r}
    assert sorted(fell_back) == ["req-1", "req-3", "req-5"]
    for r in fell_back.values():
        assert r["batchproc"] == {"model": "gpt-4o-mini", "fallback_from": "gpt-busy"}
        assert r["response"]["body"]["model"] == "gpt-4o-mini"
    assert stats.fallbacks == 3


async def test_fallback_on_model_not_found(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(models=frozenset({"gpt-4o-mini"}))
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0, model="gpt-gone")])
    stats = await run_job(job, config(api, fallback_model="gpt-4o-mini"))
    (result,) = answered_once(job, 1)
    assert result["batchproc"]["fallback_from"] == "gpt-gone" and stats.failed == 0


async def test_azure_deployments_end_to_end(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(api_key="azure-key-123456")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    stats = await run_job(job, config(api, base_url=api.root, azure=True,
                                      api_key="azure-key-123456"))
    results = answered_once(job, 5)
    assert stats.ok == 5 and all(r["response"]["status_code"] == 200 for r in results)
    assert api.stats.requests == 5
