"""Red-team findings on the trust fixes (issue 9), each through the real CLI where a user
would meet it, plus the unit test of the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.store.resume import load_state

from .conftest import Turnstile, chat_line, read_jsonl, start_cli, until, write_jsonl
from .test_cli import invoke, server_url  # noqa: F401 - the fixture


def run(job: Path, url: str, *extra: str) -> tuple[int, str]:
    return invoke("run", str(job), "--base-url", url, "--rpm", "6000", "--plain", *extra)


def batch_record(cid: str, status: int | None, error: dict[str, Any] | None = None) -> bytes:
    """A line of an OpenAI Batch API output or error file."""
    response = None if status is None else {
        "status_code": status, "request_id": "req_1",
        "body": ({"error": {"message": "bad", "type": "invalid_request_error"}}
                 if status >= 400 else {"id": "chatcmpl-1", "choices": []})}
    return orjson.dumps({"id": f"batch_req_{cid}", "custom_id": cid, "response": response,
                         "error": error}) + b"\n"


# ------------------------------------------------------------------ results of other tools


def test_failures_in_an_openai_batch_results_file_are_not_taken_as_answers(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """OpenAI's Batch API writes failed requests with ``response: null`` and an ``error``
    (error file) and 4xx/5xx answers with their status: placed as the results file of a
    rerun, they were counted as answered and never sent again, even with --retry-failed."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(4)])
    results = tmp_path / "job.results.jsonl"
    results.write_bytes(
        batch_record("req-0", 200)
        + batch_record("req-1", None, {"code": "batch_expired", "message": "expired"})
        + batch_record("req-2", 500))
    code, out = run(job, server_url)
    assert code == 1, out  # failed for good earlier: said, and the exit code says so
    sent = [r["custom_id"] for r in read_jsonl(results)[3:]]
    assert sent == ["req-3"], out
    assert "failed for good in an earlier run" in out
    code, out = run(job, server_url, "--retry-failed")
    assert code == 0, out
    ok = {r["custom_id"] for r in read_jsonl(results)
          if r["response"] and r["response"]["status_code"] == 200}
    assert ok == {"req-0", "req-1", "req-2", "req-3"}
    code, out = run(job, server_url)
    assert code == 0 and len(read_jsonl(results)) == 6, out  # nothing sent twice


def test_load_state_counts_only_answers_as_done(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_bytes(
        batch_record("ok", 201) + batch_record("expired", None, {"code": "batch_expired"})
        + batch_record("refused", 400) + batch_record("odd", 200, {"code": "x"})
        + b'{"custom_id":"no-status","response":{"body":{}}}\n'
        + b'{"custom_id":"text-status","response":{"status_code":"200"}}\n'
        + b'{"custom_id":"later-ok","response":null,"error":{"code":"server_error"}}\n'
        + batch_record("later-ok", 200))
    state = load_state(results, tmp_path / "e.jsonl")
    assert {c for c in ("ok", "no-status", "later-ok") if c in state.done} == {
        "ok", "no-status", "later-ok"}
    for cid in ("expired", "refused", "odd", "text-status"):
        assert cid not in state.done and cid in state.failed, cid


# ---------------------------------------------------------------- another job's own files


def test_an_output_named_like_another_jobs_ledger_or_lock_is_refused(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """``--errors A.results.jsonl.ledger`` had the binary ledger of job A "repaired" (its
    tail cut off as a torn line) and error records appended: A's resume then read garbage.
    A results file named like a lock is deleted by the run that holds that lock."""
    first = write_jsonl(tmp_path / "a.jsonl", [chat_line(i) for i in range(3)])
    code, out = run(first, server_url)
    assert code == 0, out
    ledger = tmp_path / "a.results.jsonl.ledger"
    kept = ledger.read_bytes()
    other = write_jsonl(tmp_path / "b.jsonl", [b"not json\n", chat_line(7)])
    link = tmp_path / "innocent.jsonl"
    link.symlink_to(ledger)
    for flag, target in (("--errors", ledger), ("--output", ledger), ("--errors", link),
                         ("--output", tmp_path / "a.results.jsonl.lock")):
        code, out = run(other, server_url, flag, str(target))
        assert code == 2 and "give another name" in out, (flag, target, out)
    assert ledger.read_bytes() == kept
    assert not (tmp_path / "a.results.jsonl.lock").exists()
    code, out = invoke("export", str(tmp_path / "a.results.jsonl"), "--output", str(ledger))
    assert code == 2 and "give another name" in out, out
    assert ledger.read_bytes() == kept
    code, out = run(first, server_url)  # A still resumes: nothing sent again
    assert code == 0 and "3 skipped" in out, out


# ------------------------------------------------------------------------ keys written like .env


REAL_KEY = "sk-proj-attackTESTkey0123456789"


def _openai_auth(request: Any) -> Any:
    """Like OpenAI: only ``Bearer <the key>`` passes; a wrong key is named in the 401
    (a hostile server names it whole, unquoted)."""
    from aiohttp import web

    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if token == REAL_KEY:
        return None
    shown = token.strip("\"' ").split()[-1] if token.strip("\"' ") else ""
    return web.json_response(
        {"error": {"message": f"Incorrect API key provided: {shown}.", "type":
                   "invalid_request_error", "param": None, "code": "invalid_api_key"}},
        status=401)


@pytest.mark.parametrize("line", [
    f'OPENAI_API_KEY="{REAL_KEY}"', f"OPENAI_API_KEY='{REAL_KEY}'",
    f"export OPENAI_API_KEY={REAL_KEY}", f'export MAIN="{REAL_KEY}"', f'"{REAL_KEY}"',
])
async def test_a_keys_file_written_like_a_dotenv_file_sends_the_key_itself(
        hostile_api: Any, tmp_path: Path, line: str) -> None:
    """Quotes and ``export`` were sent as part of the key: every request refused, and the
    server's 401 naming the key (unquoted) went unmasked into the errors file, because
    only the quoted string was known as the secret."""
    async def auth(request: Any, api: Any) -> Any:
        return _openai_auth(request)

    api = await hostile_api(auth)
    keys = tmp_path / "keys.env"
    keys.write_text(line + "\n")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    proc = await start_cli(job, api.base_url, "--keys-file", str(keys))
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name != "keys.env")
    assert REAL_KEY not in text and REAL_KEY.encode() not in written
    assert proc.returncode == 0, text
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 3


@pytest.mark.parametrize("line, says", [
    (f"OPENAI_API_KEY={REAL_KEY} # prod", "spaces"),
    (f"Bearer {REAL_KEY}", "Bearer"),
    (f'A="{REAL_KEY}', "spaces or quotes"),
], ids=["comment", "bearer", "unclosed-quote"])
def test_keys_that_hold_spaces_or_quotes_are_refused_without_showing_them(
        tmp_path: Path, line: str, says: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(line + "\n")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    code, out = invoke("run", str(job), "--keys-file", str(keys), "--base-url",
                       "http://127.0.0.1:9/v1", "--plain")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 2 and says in flat and "line 1" in flat, out
    assert "attack" not in out and "sk-" not in out


@pytest.mark.parametrize("value", [f'"{REAL_KEY}"', f"Bearer {REAL_KEY}", f"{REAL_KEY} x"])
def test_an_env_key_with_quotes_or_bearer_is_cleaned_or_refused(
        tmp_path: Path, value: str) -> None:
    """``docker --env-file`` keeps quotes; keys pasted with ``Bearer``: never sent as is."""
    import typer

    from processor.cli.options import clean_key

    if value.startswith('"'):
        assert clean_key(value, "$OPENAI_API_KEY") == REAL_KEY
        return
    with pytest.raises(typer.BadParameter) as info:
        clean_key(value, "$OPENAI_API_KEY")
    assert "sk-" not in str(info.value) and "$OPENAI_API_KEY" in str(info.value)


# ------------------------------------------------------------ --header Authorization vs $KEY


async def test_an_authorization_header_is_not_replaced_by_the_env_key(
        hostile_api: Any, tmp_path: Path) -> None:
    """``--header 'Authorization: Bearer <proxy token>'`` for a gateway, with
    $OPENAI_API_KEY set in the shell: the OpenAI key silently replaced the header and
    went to the gateway."""
    import asyncio
    import os
    import sys

    api = await hostile_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    env_key, token = "sk-ambient-openai-key-0123456789", "gw-token-abcdefgh12345"
    env = {**os.environ, "OPENAI_API_KEY": env_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", "run", str(job), "--base-url", api.base_url,
        "--plain", "--header", f"Authorization: Bearer {token}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert len(api.requests) == 3
    for seen in api.requests:
        assert [v for k, v in seen.header_list if k.lower() == "authorization"] == [
            f"Bearer {token}"]
        assert env_key.encode() not in repr(seen).encode()
    # Given both explicitly: which one is meant cannot be told; refused before sending.
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-explicit-key-0123456789\n")
    for extra in (["--api-key", "sk-explicit-key-0123456789"], ["--keys-file", str(keys)]):
        code, text = invoke("run", str(job), "--base-url", api.base_url, "--plain",
                            "--header", f"authorization: Bearer {token}", *extra)
        assert code == 2 and "give one" in " ".join(text.replace("│", " ").split()), text
        assert token not in text and "sk-explicit" not in text
    assert len(api.requests) == 3


# --------------------------------------------------------------------------- nan and inf options


@pytest.mark.parametrize("option", ["--timeout", "--grace", "--max-response-mb"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_or_inf_options_are_usage_errors(tmp_path: Path, option: str, value: str) -> None:
    """``min=`` lets nan through: --max-response-mb nan/inf ended in a traceback, --timeout
    inf made every attempt an OverflowError retried as a server error."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    code, out = invoke("run", str(job), "--base-url", "http://127.0.0.1:9/v1", "--plain",
                       f"{option}={value}")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 2 and option in flat and "Traceback" not in out, out
    assert not (tmp_path / "job.results.jsonl").exists()


@pytest.mark.parametrize("kwargs", [{"timeout": float("inf")}, {"timeout": float("nan")},
                                    {"max_response_mb": float("inf")}, {"timeout": 0.0}])
def test_the_client_refuses_non_finite_settings(kwargs: dict[str, float]) -> None:
    from processor.client.http import OpenAIClient

    with pytest.raises(ValueError, match="positive finite"):
        OpenAIClient("http://127.0.0.1:9/v1", **kwargs)


# --------------------------------------------------------------------------- bad lines on a rerun


def test_a_rerun_names_the_bad_lines_that_are_still_bad(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """A rerun said "0 bad lines", showed done 3/4 and named nothing: the line reported
    bad in the first run, still bad, was silently left out."""
    job = write_jsonl(tmp_path / "job.jsonl",
                      [chat_line(0), b'{"custom_id": "x", oops}\n', chat_line(2), chat_line(3)])
    code, out = run(job, server_url)
    assert code == 1 and "1 bad lines" in out, out
    code, out = run(job, server_url)
    flat = " ".join(out.split())
    assert code == 1, out  # not every request was answered
    assert "1 bad line(s) reported in an earlier run are still bad (lines 2)" in flat, out
    assert len(read_jsonl(tmp_path / "job.errors.jsonl")) == 1  # not written again
    write_jsonl(job, [chat_line(0), chat_line(1), chat_line(2), chat_line(3)])
    code, out = run(job, server_url)
    assert code == 0 and "still bad" not in out, out


# --------------------------------------------------------------------------- symlinked results


def test_a_results_file_reached_through_a_symlink_keeps_its_one_ledger(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """``-o link.jsonl`` (a symlink to data/real.jsonl) read and wrote link.jsonl.ledger:
    the real ledger was not found ("no ledger beside it"), an edit to an answered line
    went unnoticed, and the file had two ledgers that each missed answers."""
    (tmp_path / "data").mkdir()
    real, link = tmp_path / "data" / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(Path("data") / "real.jsonl")
    bare = {"model": "gpt-4o-mini", "max_tokens": 8}

    def lines(*texts: str) -> list[Any]:
        return [{"body": {**bare, "messages": [{"role": "user", "content": t}]}}
                for t in texts]

    job = write_jsonl(tmp_path / "job.jsonl", lines("a", "b"))
    assert run(job, server_url, "-o", str(real))[0] == 0
    write_jsonl(job, lines("a", "b", "c"))
    code, out = run(job, server_url, "-o", str(link))
    assert code == 0 and "no ledger" not in out and "1 ok" in out, out
    assert not (tmp_path / "link.jsonl.ledger").exists()
    write_jsonl(job, lines("a", "B", "c"))  # an answered bare line changed
    for name in (real, link):
        code, out = run(job, server_url, "-o", str(name))
        assert code == 2 and "lines 2" in out, out
    assert len(read_jsonl(real)) == 3


def test_resend_changed_and_fresh_act_on_the_file_a_symlinked_output_names(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """--resend-changed replaced the symlink -o link.jsonl with a rewritten regular file
    (the real file kept the superseded answers, and the ledger was no longer found);
    --fresh renamed the link, not the file, so new results landed beside the link."""
    (tmp_path / "data").mkdir()
    real, link = tmp_path / "data" / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(Path("data") / "real.jsonl")
    bare = {"model": "gpt-4o-mini", "max_tokens": 8}

    def lines(*texts: str) -> list[Any]:
        return [{"body": {**bare, "messages": [{"role": "user", "content": t}]}}
                for t in texts]

    job = write_jsonl(tmp_path / "job.jsonl", lines("a", "b", "c"))
    assert run(job, server_url, "-o", str(link))[0] == 0
    write_jsonl(job, lines("a", "B", "c"))
    code, out = run(job, server_url, "-o", str(link), "--resend-changed")
    assert code == 0 and "1 ok" in out, out
    assert link.is_symlink() and len(read_jsonl(real)) == 3
    assert list((tmp_path / "data").glob("real.jsonl.superseded-*"))
    code, out = run(job, server_url, "-o", str(link))
    assert code == 0 and "no ledger" not in out and "3 skipped" in out, out
    code, out = run(job, server_url, "-o", str(link), "--fresh")
    assert code == 0 and "3 ok" in out, out
    assert link.is_symlink() and len(read_jsonl(real)) == 3
    assert len(list((tmp_path / "data").glob("real.jsonl.2*.bak"))) == 1
    assert len(list((tmp_path / "data").glob("real.jsonl.ledger.*.bak"))) == 1


# ---------------------------------------------------------------- hard links and the lock


async def test_a_hard_link_to_a_running_jobs_results_is_locked_too(
        mock_api: Any, tmp_path: Path, turnstile: Turnstile) -> None:
    """Lock files are named after the output, so ``-o hard-link.jsonl`` (another name of
    the same file) took other locks: two runs appended to one results file and sent the
    same requests twice."""
    import os
    import signal

    # one answer per run, then held: the run keeps its locks
    api = await mock_api(seed=5, middlewares=[turnstile.middleware])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    results = tmp_path / "job.results.jsonl"
    link = tmp_path / "hard.jsonl"
    for resume in (False, True):  # the file created by the run, then there at its start
        before = results.stat().st_size if results.exists() else 0
        turnstile.hold()
        first = await start_cli(job, api.base_url, max_in_flight=1)
        turnstile.allow(1)
        # Until it has written an answer: it holds its locks.
        await until(lambda size=before: results.exists() and results.stat().st_size > size,
                    "answer written", alive=first)
        if not link.exists():
            os.link(results, link)
        second = await start_cli(job, api.base_url, "-o", str(link), "--errors",
                                 str(tmp_path / "other.errors.jsonl"))
        _, err = await second.communicate()
        assert second.returncode == 75 and "hard link" in err.decode(), (resume, err.decode())
        first.send_signal(signal.SIGINT)
        turnstile.open()  # what is held (or sent as the signal came) is answered
        _, err = await first.communicate()
        assert first.returncode == 130, err.decode()
    code = await (await start_cli(job, api.base_url, "-o", str(link))).wait()
    assert code == 0
    ids = [r["custom_id"] for r in read_jsonl(results)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))  # each once
