"""The resume contract as a property: whatever the kills and the edits between runs, after
the last rerun every valid line of the input has exactly one answer, for its current
content, and every bad line an error record, in files that are all valid JSONL.

Jobs of 5-30 lines, with custom_ids or bare (named by position), are run in-process
against the mock server. Between runs the test edits the input (fixes a bad line, breaks a
good one, inserts, deletes, changes a request) and "kills" runs the ways ``kill -9`` can:
stopped part way, a torn last line in the results or errors file, a torn ledger entry, a
ledger entry whose result line was never written. A run that refuses (changed bare lines)
is rerun with ``--resend-changed``, as its message says.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processor.errors import ConfigError
from processor.jobs import line_hash
from processor.run.runner import JobConfig, run_job
from processor.stats import Stats
from processor.testing import MockConfig, build_app

BAD_LINES = [
    b"\n",
    b"{oops\n",
    b'{"model": "gpt-4o-mini"}\n',  # no messages
    b'{"custom_id": 7, "body": {}}\n',
    # Parses, but nested deeper than the JSON writer allows: unsendable.
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": '
    + b"[" * 300 + b"]" * 300 + b"}\n",
]


@dataclass
class Line:
    """One line of the model input: a request ``u<uid>`` at some version, or a bad line."""

    uid: int
    version: int = 0
    bad: int | None = None  # index into BAD_LINES

    @property
    def too_large(self) -> bool:
        """Odd versions ask for more tokens than the whole TPM limit: failed for good."""
        return self.version % 2 == 1

    def render(self, explicit: bool) -> bytes:
        if self.bad is not None:
            return BAD_LINES[self.bad]
        body = {"model": "gpt-4o-mini", "max_tokens": TOO_LARGE if self.too_large else 4,
                "messages": [{"role": "user", "content": f"u{self.uid}v{self.version}"}]}
        if explicit:
            return orjson.dumps({"custom_id": f"u{self.uid}", "body": body}) + b"\n"
        return orjson.dumps(body) + b"\n"


TPM = 600_000
TOO_LARGE = 2 * TPM

# One step between runs: an edit, then a run that may be killed.
edits = st.one_of(
    st.tuples(st.just("none")),
    st.tuples(st.just("fix"), st.integers(0, 99)),
    st.tuples(st.just("fix"), st.integers(0, 99)),
    st.tuples(st.just("break"), st.integers(0, 99), st.integers(0, len(BAD_LINES) - 1)),
    st.tuples(st.just("insert"), st.integers(0, 99), st.one_of(
        st.none(), st.integers(0, len(BAD_LINES) - 1))),
    st.tuples(st.just("delete"), st.integers(0, 99)),
    st.tuples(st.just("change"), st.integers(0, 99)),
    st.tuples(st.just("change"), st.integers(0, 99)),
)
kills = st.sampled_from(["none", "stop", "torn-results", "torn-errors", "torn-ledger",
                         "result-lost"])
steps = st.lists(st.tuples(edits, kills, st.booleans()), min_size=1, max_size=5)
# The first input: mostly requests, some bad lines (None: a request; -1: a request too
# large to send; else an index into BAD_LINES).
first_lines = st.lists(
    st.one_of(st.none(), st.none(), st.none(), st.integers(-1, len(BAD_LINES) - 1)),
    min_size=5, max_size=30)


def apply(lines: list[Line], edit: tuple[Any, ...], next_uid: list[int]) -> None:
    kind = edit[0]
    if kind == "none" or (not lines and kind != "insert"):
        return
    i = edit[1] % (len(lines) + (kind == "insert"))
    if kind == "fix":
        bad = [j for j, x in enumerate(lines) if x.bad is not None]
        if bad:
            j = bad[i % len(bad)]
            lines[j] = Line(next_uid[0])
            next_uid[0] += 1
    elif kind == "break":
        lines[i] = Line(lines[i].uid, lines[i].version, bad=edit[2])
    elif kind == "insert":
        lines.insert(i, Line(next_uid[0], bad=edit[2]))
        next_uid[0] += 1
    elif kind == "delete":
        del lines[i]
    elif kind == "change" and lines[i].bad is None:
        lines[i].version += 1


async def one_run(job: Path, base_url: str, kill: str, resend: bool) -> Stats | None:
    """Run the job (resend-changed when a run refuses); ``kill`` cuts it short or tears it."""
    config = JobConfig(base_url=base_url, rpm=None, tpm=TPM, auto_rpm=False, auto_tpm=False,
                       max_in_flight=2, resend_changed=resend, allow_download=False)
    results = job.with_name("job.results.jsonl")
    task = asyncio.ensure_future(run_job(job, config, count_total=False))
    if kill == "stop":
        before = results.read_bytes().count(b"\n") if results.exists() else 0
        for _ in range(2000):  # bounded: until a couple of answers more, or the end
            if task.done() or (results.exists()
                               and results.read_bytes().count(b"\n") >= before + 2):
                break
            await asyncio.sleep(0.001)
        task.cancel()
    try:
        stats = await task
    except asyncio.CancelledError:
        return None
    except ConfigError as exc:
        assert "--resend-changed" in str(exc)
        return await one_run(job, base_url, "none", True)
    ledger = results.with_name("job.results.jsonl.ledger")
    if kill == "torn-results" and results.exists():
        with open(results, "ab") as f:
            f.write(b'{"id":"batch_req_x","custom_id":"u1","respo')
    elif kill == "torn-errors":
        with open(job.with_name("job.errors.jsonl"), "ab") as f:
            f.write(b'{"id":"batch_req_y","custom_id":nu')
    elif kill == "torn-ledger" and ledger.exists():
        with open(ledger, "ab") as f:
            f.write(b"\x01\x02\x03\x04\x05\x06\x07")
    elif kill == "result-lost" and results.exists():
        # Killed between the ledger entry and its result line.
        data = results.read_bytes()
        cut = data.rstrip(b"\n").rfind(b"\n") + 1
        results.write_bytes(data[:cut])
    return stats


def check(job: Path, lines: list[Line], explicit: bool) -> None:
    outputs = {name: job.with_name(f"job.{name}.jsonl") for name in ("results", "errors")}
    records: dict[str, list[dict[str, Any]]] = {}
    for name, path in outputs.items():
        data = path.read_bytes() if path.exists() else b""
        assert data == b"" or data.endswith(b"\n"), f"{name} ends in a partial line"
        records[name] = [orjson.loads(x) for x in data.splitlines()]
    by_id: dict[str, list[str]] = {}
    for rec in records["results"]:
        text = rec["response"]["body"]["choices"][0]["message"]["content"]
        by_id.setdefault(rec["custom_id"], []).append(text.removeprefix("Mock answer to: "))
    bad_reported = Counter(e["error"].get("input_hash") for e in records["errors"]
                           if e["error"]["code"] == "invalid_line")
    bad_now: Counter[str] = Counter()
    for number, line in enumerate(lines, 1):
        if line.bad is not None:
            bad_now[f"{line_hash(line.render(explicit)):016x}"] += 1
            continue
        cid = f"u{line.uid}" if explicit else f"line-{number}"
        if line.too_large:
            # Failed for good, for this very line, once; and no answer for it.
            digest = f"{line_hash(line.render(explicit)):016x}"
            assert [e["error"]["code"] for e in records["errors"]
                    if e["custom_id"] == cid and e["error"].get("input_hash") == digest
                    ] == ["request_too_large"], cid
            assert cid not in by_id, cid
        else:
            assert by_id.get(cid) == [f"u{line.uid}v{line.version}"], (cid, by_id.get(cid))
    for digest, n in bad_now.items():
        assert bad_reported[digest] >= n, "a bad line has no error record"
    assert {e["error"]["code"] for e in records["errors"]} <= {"invalid_line",
                                                                "request_too_large"}


async def scenario(tmp: Path, explicit: bool, first: list[int | None], plan: list[Any]) -> None:
    app = build_app(MockConfig(latency_ms=1))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base_url = str(server.make_url("/v1"))
        job = tmp / "job.jsonl"
        lines = [Line(uid, version=1) if bad == -1 else Line(uid, bad=bad)
                 for uid, bad in enumerate(first)]
        next_uid = [len(lines)]
        for n, (edit, kill, resend) in enumerate(plan):
            if n:  # the first run is of the first input
                apply(lines, edit, next_uid)
            job.write_bytes(b"".join(x.render(explicit) for x in lines))
            await one_run(job, base_url, kill, resend)
        # The last reruns: until nothing changed is left (the way out where asked).
        stats = await one_run(job, base_url, "none", False)
        assert stats is not None
        if stats.changed:
            stats = await one_run(job, base_url, "none", True)
            assert stats is not None and not stats.changed
        check(job, lines, explicit)
        # Settled: one more run sends and writes nothing.
        stats = await one_run(job, base_url, "none", False)
        assert stats is not None
        assert (stats.ok, stats.failed, stats.bad_lines, stats.changed) == (0, 0, 0, 0)
        assert stats.changed_failed == 0
    finally:
        await server.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(explicit=st.booleans(), first=first_lines, plan=steps)
# The classes of edit the issue names, always tried: a request that failed for good and
# then changed; a line inserted above answered bare lines while a bad one is fixed; a
# changed request with an id after a kill; a bad line deleted so the next moves up.
@example(explicit=True, first=[-1, None, None, None, None],
         plan=[(("none",), "none", False), (("change", 0), "none", False)])
@example(explicit=False, first=[None, 1, None, None, None],
         plan=[(("none",), "stop", False), (("insert", 0, None), "none", False),
               (("fix", 0), "none", False)])
@example(explicit=True, first=[None, None, None, None, None],
         plan=[(("none",), "result-lost", False), (("change", 4), "torn-results", False)])
@example(explicit=True, first=[None, 0, None, None, None],
         plan=[(("none",), "none", False), (("delete", 1), "none", False)])
def test_every_line_answered_once_for_its_current_content(
    explicit: bool, first: list[int | None], plan: list[Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp), explicit, first, plan))
