"""The Batch API's commands around ``run --via batch``: --detach then collect, ``batches``
and ``batches --cancel``, ``estimate --via batch``, ``--via auto``, and the online path
refusing a job whose batches still run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.batchkit import (
    HeldClock,
    batch_api,  # noqa: F401 - fixture
    cli,
    ids_of,
    run_batch,
    state_of,
    write_job,
)

pytestmark = pytest.mark.slow  # the CLI in subprocesses

async def test_detach_submits_and_exits_then_the_same_command_collects(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 1.0})
    job = write_job(tmp_path / "d.jsonl", 30)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--detach")
    assert code == 0, err
    assert "detached: 3 parts with the Batch API" in err and "batchproc batches" in err
    assert (api.store.stats.uploads, api.store.stats.creates, api.store.stats.polls) == (3, 3, 0)
    assert not ids_of(tmp_path / "d.results.jsonl")
    # The online path will not send what the batches hold.
    code, _, err = await cli("run", str(job), "--base-url", api.base_url, "--plain")
    assert code == 2 and "--via batch" in err and api.stats.requests == 0
    # `batches` lists the parts.
    code, out, err = await cli("batches", str(job), "--plain")
    assert code == 0, err
    assert out.count("step=submitted") == 3 and "status=validating" in out
    await asyncio.sleep(1.2)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 0, err
    assert (api.store.stats.uploads, api.store.stats.creates) == (3, 3)
    assert sorted(ids_of(tmp_path / "d.results.jsonl")) == sorted(f"r{i}" for i in range(30))
    code, out, _ = await cli("batches", str(job), "--plain")
    assert out.count("status=completed") == 3
    # Done: a rerun sends nothing, and the online path may run it again (nothing to do).
    code, _, err = await run_batch(job, api)
    assert code == 0 and api.store.stats.creates == 3
    code, _, err = await cli("run", str(job), "--base-url", api.base_url, "--plain")
    assert code == 0 and api.stats.requests == 0


async def test_a_batch_the_server_lost_is_submitted_again(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 0.5})
    job = write_job(tmp_path / "l.jsonl", 10)
    code, _, err = await run_batch(job, api, "--detach")
    assert code == 0, err
    api.store.batches.clear()
    api.store.files.clear()
    code, _, err = await run_batch(job, api)
    assert code == 0, err
    assert (api.store.stats.uploads, api.store.stats.creates) == (2, 2)
    assert state_of(job)["parts"][0]["gen"] == 2
    assert sorted(ids_of(tmp_path / "l.results.jsonl")) == sorted(f"r{i}" for i in range(10))


async def test_batches_cancel_keeps_what_ran_and_leaves_the_rest_for_a_rerun(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 8.0})
    api.store.clock = clock = HeldClock()  # the batches run as far as the test says
    job = write_job(tmp_path / "c.jsonl", 20)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--detach")
    assert code == 0, err
    clock.advance(0.3 * 8.0)  # part of the work done: (0.3 - 0.1) / 0.7 of it, 2 of 10
    code, out, err = await cli("batches", str(job), "--cancel", "--plain",
                               "--base-url", api.base_url)
    assert code == 0, err
    assert api.store.stats.cancels == 2 and "cancelled 2 batches" in err
    clock.run()  # the cancellations end 0.8 s on
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 1 and "cancelled batches were not sent again" in err
    assert api.store.stats.creates == 2
    answered = ids_of(tmp_path / "c.results.jsonl")
    assert len(answered) == 4 and len(set(answered)) == len(answered)  # what ran, kept
    assert [p["status"] for p in state_of(job)["parts"]] == ["cancelled", "cancelled"]
    # The next run sends the rest, only the rest (batches now finish in half a second).
    api.store.config.seconds = 0.5
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 0, err
    assert sorted(ids_of(tmp_path / "c.results.jsonl")) == sorted(f"r{i}" for i in range(20))
    assert set(api.store.stats.submitted.values()) <= {1, 2}
    assert sum(v == 2 for v in api.store.stats.submitted.values()) == 20 - len(answered)


async def test_estimate_via_batch_halves_the_price_and_names_the_window(
        tmp_path: Path) -> None:
    job = write_job(tmp_path / "e.jsonl", 100, model="gpt-4o")
    code, out, err = await cli("estimate", str(job), "--json", "--offline")
    assert code == 0, err
    online = orjson.loads(out)
    code, out, err = await cli("estimate", str(job), "--json", "--offline", "--via", "batch")
    assert code == 0, err
    batch = orjson.loads(out)
    assert batch["cost_usd"] == online["cost_usd"] / 2 and batch["via"] == "batch"
    code, out, _ = await cli("estimate", str(job), "--offline", "--via", "batch",
                             "--rpm", "10")
    assert "24h completion window" in out and "not the rate limit" in out


async def test_via_auto_picks_online_for_a_small_job(tmp_path: Path,
                                                   batch_api: Any) -> None:  # noqa: F811
    api = await batch_api()
    job = write_job(tmp_path / "a.jsonl", 5)
    code, _, err = await cli("run", str(job), "--base-url", api.base_url, "--plain",
                             "--via", "auto")
    assert code == 0, err
    assert api.stats.ok == 5 and api.store.stats.creates == 0
    # Over two hours online at --tpm 20 (200 requests of some 15 tokens): batch.
    job = write_job(tmp_path / "b.jsonl", 200)
    code, _, err = await cli("run", str(job), "--base-url", api.base_url, "--plain",
                             "--via", "auto", "--tpm", "20", "--batch-poll-every", "0.1",
                             "--batch-poll-max", "0.2")
    assert code == 0, err
    assert api.store.stats.creates == 1 and api.stats.ok == 5


async def test_odd_flags_and_states_are_refused(tmp_path: Path,
                                                batch_api: Any) -> None:  # noqa: F811
    api = await batch_api()
    job = write_job(tmp_path / "o.jsonl", 3)
    code, _, err = await cli("run", str(job), "--base-url", api.base_url, "--via", "boat")
    assert code == 2 and "--via" in err
    code, _, err = await run_batch(job, api, "--batch-poll-every", "10", "--batch-poll-max", "1")
    assert code == 2
    code, _, err = await cli("batches", str(job))
    assert code == 1 and "no Batch API run" in err
    # A state file that is not one: said so, nothing sent.
    folder = tmp_path / "o.batch"
    folder.mkdir()
    (folder / "state.json").write_text("{not json")
    code, _, err = await run_batch(job, api)
    assert code == 2 and "not a batchproc batch state file" in err
    assert api.store.stats.uploads == 0


def test_mock_server_batch_flags(monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from processor.cli.app import app
    from processor.testing import BatchMockConfig

    seen: list[BatchMockConfig] = []
    monkeypatch.setattr("processor.testing.run",
                        lambda config, host, port, batch: seen.append(batch))
    result = CliRunner().invoke(app, ["mock-server", "--batch-seconds", "3", "--batch-expire",
                                      "1", "--batch-error-every", "7",
                                      "--batch-queue-tokens", "900"])
    assert result.exit_code == 0, result.output
    (batch,) = seen
    assert (batch.seconds, batch.expire, batch.error_every, batch.queue_tokens) == (3, 1, 7, 900)


async def test_ctrl_c_stops_and_the_rerun_collects(tmp_path: Path,
                                                   batch_api: Any) -> None:  # noqa: F811
    import signal

    from tests.batchkit import FAST, start
    from tests.conftest import until

    api = await batch_api(batch={"seconds": 3600.0})  # running until told (below)
    job = write_job(tmp_path / "s.jsonl", 20)
    proc = await start("run", str(job), "--base-url", api.base_url, "--via", "batch",
                       "--plain", *FAST, "--batch-part-requests", "10")
    await until(lambda: api.store.stats.creates >= 2 and api.store.stats.polls >= 1,
                "two batches created and polled")
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    assert "rerun the same command to collect" in err.decode()
    api.store.config.seconds = 0.5  # the batches end now
    code, _, err2 = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 0, err2
    assert (api.store.stats.uploads, api.store.stats.creates) == (2, 2)
    assert sorted(ids_of(tmp_path / "s.results.jsonl")) == sorted(f"r{i}" for i in range(20))
