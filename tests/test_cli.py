"""The CLI as a user runs it (typer's CliRunner), against the mock server in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processor.cli.app import app, main
from processor.testing import MockConfig, serve
from tests.conftest import chat_line, read_jsonl, write_jsonl

SECRET = "sk-cli-test-SECRET-77aa"


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A mock server on a free loopback port, served from its own thread and loop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None

    def run() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        task = loop.create_task(serve(MockConfig(rpm=6000, seed=1), "127.0.0.1", port))
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{port}/v1"
    assert task is not None
    loop.call_soon_threadsafe(task.cancel)
    thread.join(5)
    loop.close()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env or {"OPENAI_API_KEY": SECRET})
    return result.exit_code, result.output


def test_run_answers_everything_and_exits_0(server_url: str, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    code, out = invoke("run", str(job), "--base-url", server_url, "--rpm", "6000", "--plain")
    assert code == 0, out
    assert "Finished" in out and "12 ok" in out
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 12
    assert SECRET not in out


def test_bare_invocation_means_run(server_url: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(SystemExit) as exit_info:
        main([str(job), "--base-url", server_url, "-q"])
    assert exit_info.value.code == 0
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 3


def test_bad_lines_exit_1(server_url: str, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), b"{oops\n"])
    code, out = invoke("run", str(job), "--base-url", server_url, "-q")
    assert code == 1, out
    assert "1 bad lines" in out


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "missing.jsonl"], {"OPENAI_API_KEY": SECRET}, "no such file"),
        (["run", "{job}", "--base-url", "https://api.openai.com/v1"], {}, "no API key"),
        (["run", "{job}", "--rpm", "fast"], {"OPENAI_API_KEY": SECRET}, "must be a number"),
        (["run", "{job}", "--api-key-env", "KEY_A,KEY_B", "--base-url", "https://x.test/v1"],
         {"KEY_A": "sk-aaaaaaaaaa"}, "KEY_B"),
        (["run", "{job}", "--header", "no-colon"], {"OPENAI_API_KEY": SECRET}, "Name: value"),
        (["run", "{job}", "--rpm", "nan"], {"OPENAI_API_KEY": SECRET}, "positive number"),
        (["run", "{job}", "--base-url", "https://x.test/v1"], {"OPENAI_API_KEY": "sk-a\x01b"},
         "holds control"),
    ],
    ids=["missing-file", "no-key-for-remote-url", "bad-rpm", "missing-second-key", "bad-header",
         "nan-rpm", "control-char-key"],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                             message: str) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    code, out = invoke(*[a.replace("{job}", str(job)) for a in args],
                       env={"OPENAI_BASE_URL": "", **env})
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out


def test_keys_file_and_plain_progress(server_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nKEY_ONE=sk-one-1111111\nKEY_TWO=sk-two-2222222\n")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(8)])
    code, out = invoke("run", str(job), "--base-url", server_url, "--keys-file", str(keys),
                       "--plain")
    assert code == 0, out
    assert "answered by key" in out and "$KEY_ONE" in out
    assert "sk-one" not in out and "sk-two" not in out
    results = read_jsonl(tmp_path / "job.results.jsonl")
    assert {r["batchproc"]["key"] for r in results} <= {"KEY_ONE", "KEY_TWO"}


def test_a_key_with_a_trailing_newline_is_stripped(server_url: str, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    code, out = invoke("run", str(job), "--base-url", server_url, "-q",
                       env={"OPENAI_API_KEY": SECRET + "\n"})
    assert code == 0, out
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_never_downloads_an_encoding(server_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import tiktoken

    fetched: list[str] = []

    def get_encoding(name: str) -> object:
        fetched.append(name)
        raise ConnectionError("offline")

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    if how == "flag":
        monkeypatch.delenv("BATCHPROC_OFFLINE", raising=False)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(2)])
    args = ["run", str(job), "--base-url", server_url, "--plain"]
    code, out = invoke(*args, *(["--offline"] if how == "flag" else []))
    assert code == 0, out
    assert "downloads disabled" in out
    assert "cl100k_base" not in fetched and "o200k_base" not in fetched
