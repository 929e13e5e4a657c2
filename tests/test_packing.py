"""Packing (``--pack``): many embeddings (or legacy completions) lines in one request,
each line answered on its own; one bad input costs only its own line.

The end-to-end tests run the real CLI in a subprocess against the mock server, whose
vectors are drawn from a hash of each input text (``text_vector``), so a vector that
reached the wrong custom_id is caught.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.client.answers import Response
from processor.cost.packing import Packs, pack_key, pack_limits, parse_pack
from processor.errors import BadRequest, RateLimited, ResponseTooLarge, ServerError
from processor.jobs import Job
from processor.run.packing import PackedJob, packed_job, points_at_input, split_pack
from processor.run.runner import JobConfig, run_job
from processor.run.unpacking import shares, unpack
from processor.testing.bodies import text_vector
from tests.conftest import chat_line, read_jsonl, start_cli, until, write_jsonl

EMB = "/v1/embeddings"
CMPL = "/v1/completions"
MODEL = "text-embedding-3-small"


def emb_line(i: int, *, model: str = MODEL, text: str | None = None,
             **params: Any) -> dict[str, Any]:
    return {"custom_id": f"e-{i}", "method": "POST", "url": EMB,
            "body": {"model": model, "input": text if text is not None else f"text {i}",
                     **params}}


def text_of(line: dict[str, Any]) -> Any:
    return line["body"]["input"]


async def run_cli(job: Path, base_url: str, *extra: str, max_in_flight: int = 8
                  ) -> tuple[int, str]:
    proc = await start_cli(job, base_url, *extra, max_in_flight=max_in_flight)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def check_vectors(results: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    """Each result holds the vector of its own line's text, in the single-input shape."""
    by_id = {line["custom_id"]: line for line in lines}
    for record in results:
        body = record["response"]["body"]
        assert body["object"] == "list" and len(body["data"]) == 1
        item = body["data"][0]
        assert item["object"] == "embedding" and item["index"] == 0
        want = text_vector(text_of(by_id[record["custom_id"]]), len(item["embedding"]))
        assert item["embedding"] == pytest.approx(want), record["custom_id"]


# -- the rules, row by row -------------------------------------------------------------


@pytest.mark.parametrize(("body", "packable"), [
    ({"model": MODEL, "input": "a text"}, True),
    ({"model": MODEL, "input": [1, 2, 3]}, True),           # one token array
    ({"model": MODEL, "input": ["a", "b"]}, False),        # already a list: alone
    ({"model": MODEL, "input": [[1, 2], [3]]}, False),
    ({"model": MODEL, "input": ""}, False),                # refused anyway: alone
    ({"model": MODEL, "input": []}, False),
    ({"model": MODEL, "input": {"x": 1}}, False),
    ({"model": MODEL, "input": "x", "stream": True}, False),
], ids=["text", "tokens", "list", "token-lists", "empty", "empty-list", "object", "stream"])
def test_what_may_be_packed(body: dict[str, Any], packable: bool) -> None:
    assert (pack_key(EMB, body) is not None) is packable


def test_pack_key_compares_every_other_field() -> None:
    base = {"model": MODEL, "input": "a", "dimensions": 8, "user": "u"}
    assert pack_key(EMB, base) == pack_key(EMB, {"user": "u", "dimensions": 8, "model": MODEL,
                                                 "input": "other"})
    for change in ({"dimensions": 16}, {"user": "v"}, {"model": "text-embedding-3-large"},
                   {"encoding_format": "base64"}, {"input": [5, 6]}):
        assert pack_key(EMB, base | change) != pack_key(EMB, base), change
    assert pack_key("/v1/chat/completions", {"model": "m", "messages": []}) is None


def test_limits_by_model() -> None:
    limits = pack_limits("ft:text-embedding-3-large:org::x", EMB)
    assert limits is not None and (limits.max_inputs, limits.max_tokens,
                                   limits.max_input_tokens) == (2048, 300_000, 8192)
    unknown = pack_limits("bge-small", EMB)
    assert unknown is not None and unknown.max_inputs == 32  # the safe default
    assert pack_limits("gpt-4o", "/v1/chat/completions") is None


@pytest.mark.parametrize(("value", "want"), [
    ("off", None), ("1", None), ("0", None), ("auto", "auto"), ("AUTO", "auto"), ("100", 100),
])
def test_parse_pack(value: str, want: object) -> None:
    assert parse_pack(value) == want


@pytest.mark.parametrize("value", ["-3", "many", "1.5"])
def test_parse_pack_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        parse_pack(value)


def cut(packs: Packs[int], rows: list[tuple[dict[str, Any], int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for i, (body, tokens) in enumerate(rows):
        out += packs.add(i, EMB, body, body.get("model"), tokens)
    return out + packs.flush()


def test_packs_cut_at_size_key_budget_and_lone_lines() -> None:
    a: dict[str, Any] = {"model": MODEL, "input": "x"}
    other: dict[str, Any] = {"model": "text-embedding-3-large", "input": "x"}
    listed: dict[str, Any] = {"model": MODEL, "input": ["x", "y"]}
    rows = [(a, 1)] * 5 + [(other, 1)] * 2 + [(a, 1), (listed, 1), (a, 1), (a, 9000), (a, 1)]
    assert cut(Packs(3), rows) == [[0, 1, 2], [3, 4], [5, 6], [7], [8], [9], [10], [11]]
    # A token budget (one TPM burst): a pack closes before it would go over.
    assert cut(Packs(None, lambda: 10.0), [(a, 4)] * 5) == [[0, 1], [2, 3], [4]]
    # auto: the model's own limit on inputs.
    assert [len(p) for p in cut(Packs(None), [(a, 1)] * 5000)] == [2048, 2048, 904]


def test_shares_sum_to_the_total() -> None:
    assert shares(10, [3, 7]) == [3, 7]              # the counts agree: exact
    assert shares(10, [1, 1, 1]) == [4, 3, 3] or sum(shares(10, [1, 1, 1])) == 10
    got = shares(101, [10, 20, 30, 40])
    assert sum(got) == 101 and got == sorted(got)
    assert shares(5, [0, 0]) in ([3, 2], [2, 3])


def _job(i: int, url: str = EMB, **body: Any) -> Job:
    job = Job(f"c{i}", i, url, {"model": MODEL, "input": f"t{i}"} | body, model=MODEL)
    job.payload = orjson.dumps(job.body)
    job.tokens = job.prompt_tokens = 2 + i
    return job


def test_unpack_matches_by_index_not_position() -> None:
    pack = packed_job([_job(i) for i in range(3)])
    data = [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in (2, 0, 1)]
    answer = Response(200, {"object": "list", "data": data, "model": MODEL,
                            "usage": {"prompt_tokens": 9, "total_tokens": 9}}, "req_1")
    pieces = unpack(pack, answer)
    assert [part.custom_id for part, _ in pieces] == ["c0", "c1", "c2"]
    assert [p.body["data"] for _, p in pieces] == [
        [{"object": "embedding", "index": 0, "embedding": [float(i)]}] for i in range(3)]
    assert [p.body["usage"]["prompt_tokens"] for _, p in pieces] == [2, 3, 4]  # exact
    assert {p.request_id for _, p in pieces} == {"req_1"}


@pytest.mark.parametrize("data", [
    [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}],           # one short
    [{"index": 0, "embedding": []}] * 3,                                      # repeated
    [{"index": i, "embedding": []} for i in (0, 1, 3)],                       # out of range
    [{"embedding": []}] * 3,                                                  # no index
])
def test_unpack_refuses_answers_that_do_not_map(data: list[Any]) -> None:
    pack = packed_job([_job(i) for i in range(3)])
    with pytest.raises(ServerError, match="packing 3 lines"):
        unpack(pack, Response(200, {"object": "list", "data": data}, None))


def test_unpack_completions_n_choices_per_prompt() -> None:
    parts = [_job(i, CMPL, prompt=f"p{i}", n=2) for i in range(2)]
    for part in parts:
        del part.body["input"]
    pack = packed_job(parts)
    assert pack.body["prompt"] == ["p0", "p1"]
    choices = [{"index": i, "text": f"{i // 2}:{i % 2}", "finish_reason": "length"}
               for i in range(4)]
    answer = Response(200, {"object": "text_completion", "choices": choices[::-1],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 8,
                                      "total_tokens": 13}}, None)
    pieces = unpack(pack, answer)
    assert [[c["text"] for c in p.body["choices"]] for _, p in pieces] == [["0:0", "0:1"],
                                                                           ["1:0", "1:1"]]
    assert all([c["index"] for c in p.body["choices"]] == [0, 1] for _, p in pieces)
    assert sum(p.body["usage"]["completion_tokens"] for _, p in pieces) == 8
    assert sum(p.body["usage"]["total_tokens"] for _, p in pieces) == 13


def _bad(status: int, param: str | None, code: str | None = None) -> BadRequest:
    body = {"error": {"message": "m", "type": "invalid_request_error", "param": param,
                      "code": code}}
    return BadRequest("m", status=status, body=body, code=code)


@pytest.mark.parametrize(("exc", "split"), [
    (_bad(400, None), True),                      # "maximum context length": no param
    (_bad(400, "input"), True),
    (_bad(400, "input[3]"), True),
    (_bad(422, None), True),
    (_bad(413, None), True),
    (BadRequest("Request too large", status=429, code="request_too_large"), True),
    (ResponseTooLarge("over --max-response-mb"), True),  # halves answer in less
    (_bad(400, "dimensions"), False),             # every half would be refused too
    (_bad(404, None, "model_not_found"), False),
    (RateLimited("slow down", status=429), False),
    (ServerError("boom", status=500), False),
], ids=["no-param", "input", "input-i", "422", "413", "too-large", "answer-too-large",
        "dimensions", "404",
        "429", "500"])
def test_which_failures_split(exc: Any, split: bool) -> None:
    assert points_at_input(exc) is split


def test_split_halves_down_to_lines_sent_as_written() -> None:
    pack = packed_job([_job(i) for i in range(3)])
    pack.attempts = 1
    pack.history.append({"attempt": 1, "status": 400})
    requeued: list[Any] = []
    assert split_pack(pack, _bad(400, None), lambda job, delay: requeued.append(job))
    assert [type(j) for j in requeued] == [Job, PackedJob]
    alone = requeued[0]
    assert alone.custom_id == "c0" and alone.body["input"] == "t0" and alone.attempts == 0
    assert alone.history == pack.history
    assert requeued[1].body["input"] == ["t1", "t2"] and requeued[1].tokens == 3 + 4
    assert not split_pack(_job(9), _bad(400, None), lambda job, delay: None)


# -- the real CLI against the mock server -----------------------------------------------


async def test_20k_embeddings_pack_100_fiftieth_of_the_unpacked_bound(
        mock_api: Any, tmp_path: Path) -> None:
    rpm, n = 3000, 20_000
    api = await mock_api(rpm=rpm)
    lines = [emb_line(i) for i in range(n)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    started = time.monotonic()
    code, err = await run_cli(job, api.base_url, "--rpm", str(rpm), "--tpm", "off",
                              "--pack", "100", max_in_flight=20)
    wall = time.monotonic() - started
    assert code == 0, err
    unpacked_bound = n / rpm * 60  # 400 s
    assert wall < unpacked_bound / 10, wall
    assert 200 <= api.stats.requests <= 210 and api.stats.n_429 <= 5
    results = read_jsonl(tmp_path / "job.results.jsonl")
    counts = Counter(r["custom_id"] for r in results)
    assert len(counts) == n and max(counts.values()) == 1
    check_vectors(results, lines)
    assert all(r["batchproc"]["packed"] == 100 for r in results)
    # Its share of usage: the shares of one request sum to what the server counted.
    assert sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in results) == \
        api.stats.tokens_charged
    assert "packed: 20,000 lines sent in 200 requests" in err


async def test_one_too_long_input_costs_only_its_own_line(mock_api: Any, tmp_path: Path
                                                        ) -> None:
    # The server takes 1,000 tokens per input: line 17 (1,250 by the server's count, far
    # under the 8,192 batchproc expects of the model) goes in a pack and spoils it.
    api = await mock_api(embedding_limits=(2048, 300_000, 1000))
    lines = [emb_line(i) for i in range(50)]
    lines[17] = emb_line(17, text="word " * 1000)
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    code, err = await run_cli(job, api.base_url, "--rpm", "off", "--tpm", "off",
                              "--pack", "50")
    assert code != 0  # one line failed
    results = read_jsonl(tmp_path / "job.results.jsonl")
    errors = read_jsonl(tmp_path / "job.errors.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(
        f"e-{i}" for i in range(50) if i != 17)
    check_vectors(results, lines)
    assert [e["custom_id"] for e in errors] == ["e-17"]
    error = errors[0]
    assert error["response"]["status_code"] == 400
    assert "maximum context length is 1000 tokens" in error["error"]["message"]
    # Bisection: the pack of 50, then two halves per level down to the bad line.
    assert api.stats.requests <= 1 + 2 * 6
    assert api.stats.by_status[400] <= 7


async def test_kill_9_mid_run_then_rerun_answers_each_line_once(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=150)
    n = 600
    lines = [emb_line(i) for i in range(n)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    results = tmp_path / "job.results.jsonl"
    proc = await start_cli(job, api.base_url, "--rpm", "off", "--tpm", "off", "--pack", "10",
                           max_in_flight=2)
    await until(lambda: results.exists() and results.stat().st_size > 0, "pack written",
                alive=proc)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    first = results.read_bytes().count(b"\n")
    assert 0 < first < n, "the run finished before the kill: make it longer"
    code, err = await run_cli(job, api.base_url, "--rpm", "off", "--tpm", "off",
                              "--pack", "10")
    assert code == 0, err
    records = read_jsonl(results)
    counts = Counter(r["custom_id"] for r in records)
    assert len(counts) == n and max(counts.values()) == 1
    check_vectors(records, lines)
    ledger = (tmp_path / "job.results.jsonl.ledger").stat().st_size
    assert ledger >= 16 * n  # one ledger entry per packed line


async def test_mixed_jobs_pack_only_what_may_be_packed(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    lines: list[dict[str, Any]] = []
    for i in range(30):
        lines.append(emb_line(i))
        if i % 10 == 9:
            lines.append(chat_line(i))                    # cuts the pack
    lines += [emb_line(100 + i, model="text-embedding-3-large") for i in range(5)]
    lines += [emb_line(200 + i, dimensions=4) for i in range(5)]
    lines.append(emb_line(300, text=["already", "a list"]))  # type: ignore[arg-type]
    lines += [emb_line(400 + i, text=[7, 8, i]) for i in range(3)]  # type: ignore[arg-type]
    lines += [{"custom_id": f"p-{i}", "url": CMPL, "body": {
        "model": "gpt-3.5-turbo-instruct", "prompt": f"prompt {i}", "max_tokens": 5, "n": 2}}
        for i in range(4)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    code, err = await run_cli(job, api.base_url, "--rpm", "off", "--tpm", "off",
                              "--pack", "8")
    assert code == 0, err
    records = {r["custom_id"]: r for r in read_jsonl(tmp_path / "job.results.jsonl")}
    assert len(records) == len(lines)
    # 30 embeddings cut by 3 chat lines into 10 + 10 + 10, each 8 + 2; 3 chats; 5 large
    # (8 fit: one); 5 at 4 dimensions: one; the list alone; 3 token arrays: one; 4
    # prompts: one.
    assert api.stats.requests == 6 + 3 + 1 + 1 + 1 + 1 + 1
    check_vectors([r for cid, r in records.items() if cid.startswith("e-")
                   and cid != "e-300"], [line for line in lines if line["custom_id"] != "e-300"])
    assert [len(d["embedding"]) for d in records["e-200"]["response"]["body"]["data"]] == [4]
    assert len(records["e-300"]["response"]["body"]["data"]) == 2
    assert "batchproc" not in records["e-300"]
    assert records["chat-9" if "chat-9" in records else "req-9"]["response"]["body"]["choices"]
    for i in range(4):
        body = records[f"p-{i}"]["response"]["body"]
        assert [c["text"] for c in body["choices"]] == [f"Mock completion of: prompt {i}"] * 2
        assert [c["index"] for c in body["choices"]] == [0, 1]
        assert records[f"p-{i}"]["batchproc"]["packed"] == 4


def test_estimate_shows_the_packed_bound(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from processor.cli.app import app

    job = write_jsonl(tmp_path / "job.jsonl", [emb_line(i) for i in range(1000)])
    runner = CliRunner()
    args = ["estimate", str(job), "--json", "--offline", "--rpm", "3000"]
    plain = orjson.loads(runner.invoke(app, args).output)
    packed = orjson.loads(runner.invoke(app, [*args, "--pack", "100"]).output)
    assert plain["http_requests"] == 1000 and plain["min_seconds"] == pytest.approx(20.0)
    assert packed["http_requests"] == 10 and packed["min_seconds"] == pytest.approx(0.2)
    assert packed["requests"] == 1000
    shown = runner.invoke(app, ["estimate", str(job), "--offline", "--rpm", "3000",
                                "--pack", "100"]).output
    assert "in 10 HTTP requests (--pack 100)" in shown
    # auto: as many per request as the model takes (2,048), within one TPM burst.
    auto = orjson.loads(runner.invoke(app, [*args, "--pack", "auto"]).output)
    assert auto["http_requests"] == 1
    burst = orjson.loads(runner.invoke(app, [*args, "--pack", "auto", "--tpm", "6000"]).output)
    assert burst["http_requests"] >= burst["prompt_tokens"] / 100 > 1  # 100 tokens a burst
    assert runner.invoke(app, [*args, "--pack", "many"]).exit_code == 2


async def test_an_answer_that_does_not_map_is_split_down_to_lines(
        hostile_api: Any, tmp_path: Path) -> None:
    # This server answers every embeddings request with one vector, whatever it holds.
    api = await hostile_api()
    lines = [emb_line(i) for i in range(8)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    code, err = await run_cli(job, api.base_url, "--rpm", "off", "--tpm", "off",
                              "--pack", "8")
    assert code == 0, err
    records = read_jsonl(tmp_path / "job.results.jsonl")
    assert sorted(r["custom_id"] for r in records) == sorted(f"e-{i}" for i in range(8))
    assert all("batchproc" not in r for r in records)  # each went alone in the end
    assert len(api.requests) == 1 + 2 + 4 + 8


async def test_transient_failures_retry_the_pack_whole(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(fail_500=0.25, fail_503=0.1, reset=0.1, seed=3)
    lines = [emb_line(i) for i in range(300)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    # In process, for retries 100 times faster than the CLI's 1 s backoff.
    stats = await run_job(job, JobConfig(base_url=api.base_url, pack=20, max_attempts=12,
                                         backoff_base=0.01, backoff_cap=0.05,
                                         outage_window=0, auto_rpm=False, auto_tpm=False))
    assert stats.ok == 300 and stats.failed == 0
    records = read_jsonl(tmp_path / "job.results.jsonl")
    counts = Counter(r["custom_id"] for r in records)
    assert len(counts) == 300 and max(counts.values()) == 1
    check_vectors(records, lines)
    assert all(r["batchproc"]["packed"] == 20 for r in records)  # retried whole, never split
    assert api.stats.n_5xx + api.stats.resets > 0 and api.stats.ok == 15


async def test_a_pack_written_off_gives_each_line_its_own_record(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(models=frozenset({"gpt-4o"}))  # the embedding model is refused
    job = write_jsonl(tmp_path / "job.jsonl", [emb_line(i) for i in range(5)])
    code, _ = await run_cli(job, api.base_url, "--rpm", "off", "--tpm", "off", "--pack", "5")
    assert code != 0
    errors = read_jsonl(tmp_path / "job.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == [f"e-{i}" for i in range(5)]
    assert {e["response"]["status_code"] for e in errors} == {404}
    assert {e["error"]["line"] for e in errors} == {1, 2, 3, 4, 5}
    assert api.stats.requests == 1  # refused as a whole: not split


def test_a_pack_holds_at_most_one_tpm_burst() -> None:
    from processor.limits.limiter import Limiter
    from processor.run.engine import Lane
    from processor.run.packing import Packer
    from processor.stats import Stats

    lanes = [Lane(None, Limiter.per_minute(3000, 6000)), Lane("b", Limiter.per_minute(None, 9000))]
    packer = Packer(None, lambda item: item if isinstance(item, Job) else None, lanes, Stats())
    assert packer.budget() == pytest.approx(100.0)  # the smaller burst: 6,000 / 60
    jobs = [_job(i) for i in range(20)]
    for job in jobs:
        job.tokens = 30
    requests = list(packer.source(iter(jobs)))
    assert [len(r.parts) for r in requests if isinstance(r, PackedJob)] == [3] * 6 + [2]
    assert sum(r.tokens for r in requests) == 600 and packer.packs == 7
    assert Packer(None, lambda i: None, [Lane(None, Limiter.per_minute(60, None))],
                  Stats()).budget() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "list", "other-model"]),
                          st.integers(1, 40)), max_size=60),
       st.integers(2, 7), st.sampled_from([None, 50.0]))
def test_packs_keep_order_and_limits(rows: list[tuple[str, int]], size: int,
                                     budget: float | None) -> None:
    bodies: dict[str, dict[str, Any]] = {
        "a": {"model": MODEL, "input": "x"},
        "b": {"model": MODEL, "input": "y", "user": "u"},
        "list": {"model": MODEL, "input": ["x", "y"]},
        "other-model": {"model": "text-embedding-3-large", "input": "x"},
    }
    packs: Packs[int] = Packs(size, lambda: budget)
    out: list[list[int]] = []
    for i, (kind, tokens) in enumerate(rows):
        out += packs.add(i, EMB, bodies[kind], bodies[kind]["model"], tokens)
    out += packs.flush()
    assert [i for pack in out for i in pack] == list(range(len(rows)))  # order, each once
    for pack in out:
        kinds = {rows[i][0] for i in pack}
        assert len(kinds) == 1 and (len(pack) == 1 or "list" not in kinds)
        assert len(pack) <= size
        if budget is not None and len(pack) > 1:
            assert sum(rows[i][1] for i in pack) <= budget


def test_usage_shared_by_exact_counts_where_known() -> None:
    parts = [_job(i) for i in range(3)]  # admission counts 2, 3, 4 (say, estimates)
    pack = packed_job(parts, [5, None, 1])  # tiktoken's counts where known
    data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(3)]
    answer = Response(200, {"object": "list", "data": data,
                            "usage": {"prompt_tokens": 9, "total_tokens": 9}}, None)
    assert [p.body["usage"]["prompt_tokens"] for _, p in unpack(pack, answer)] == [5, 3, 1]
    # Split, each half keeps its lines' counts.
    halves: list[Any] = []
    split_pack(pack, _bad(400, None), lambda job, delay: halves.append(job))
    assert halves[1].counts == [None, 1]


async def test_stream_results_packs_too(mock_api: Any) -> None:
    from processor.run.pipeline import stream_results

    api = await mock_api()
    lines = [emb_line(i) for i in range(10)]
    config = JobConfig(base_url=api.base_url, pack=5, auto_rpm=False, auto_tpm=False)
    records = [record async for record in stream_results(lines, config)]
    assert sorted(r["custom_id"] for r in records) == sorted(f"e-{i}" for i in range(10))
    check_vectors(records, lines)
    assert api.stats.requests == 2
