"""Paths that would destroy data are refused before anything is read or written."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.errors import ConfigError
from processor.run.runner import JobConfig, run_job
from processor.store.paths import check_distinct, check_input, check_output, identity, lock_path
from tests.conftest import chat_line, write_jsonl

# A port nothing listens on: these runs must stop before they send anything.
NOWHERE = "http://127.0.0.1:9/v1"


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every name under ``folder`` and the bytes of its regular files."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() and not \
            p.is_fifo() else None
    return out


def flat(output: str) -> str:
    """CLI output with rich's error box and line wrapping taken out."""
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def job(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])


# -- identity -----------------------------------------------------------------

def test_identity_sees_through_links_and_spellings(tmp_path: Path, job: Path) -> None:
    os.link(job, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(job)
    (tmp_path / "sub").mkdir()
    same = [job, tmp_path / "hard.jsonl", tmp_path / "soft.jsonl",
            tmp_path / "sub" / ".." / "job.jsonl", Path(f"{tmp_path}/./job.jsonl")]
    assert len({identity(p) for p in same}) == 1
    with open(job, "rb") as f:
        assert identity(f"/proc/self/fd/{f.fileno()}") == identity(job)
    assert identity(tmp_path / "other.jsonl") != identity(job)


def test_identity_of_files_not_yet_there(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    a = identity(tmp_path / "real" / "new" / "out.jsonl")
    assert a == identity(tmp_path / "alias" / "new" / "out.jsonl")
    assert a != identity(tmp_path / "real" / "new" / "out2.jsonl")
    # A dangling symlink writes to its target: both are one file.
    (tmp_path / "dangling").symlink_to(tmp_path / "target.jsonl")
    assert identity(tmp_path / "dangling") == identity(tmp_path / "target.jsonl")


def test_check_distinct_names_both_roles(tmp_path: Path, job: Path) -> None:
    check_distinct([("the input", job)], [("results", tmp_path / "r"), ("errors", tmp_path / "e")])
    with pytest.raises(ConfigError, match="errors and results are the same file"):
        check_distinct([], [("results", tmp_path / "r"), ("errors", tmp_path / "./r")])
    with pytest.raises(ConfigError, match="results and the input are the same file"):
        check_distinct([("the input", job)], [("results", job)])


# -- inputs and outputs that are not files -------------------------------------

def test_input_that_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="is a folder"):
        check_input(tmp_path / "d")
    with pytest.raises(ConfigError, match="is a pipe"):
        check_input(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="stdin is not supported"):
        check_input(Path("-"))
    with pytest.raises(ConfigError, match="no such file"):
        check_input(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="stream"):  # outputs would go to /dev
        check_input(Path("/dev/stdin"))


@pytest.mark.parametrize("name, reason", [
    ("/dev/stdout", "stream"), ("/dev/stderr", "stream"), ("/proc/self/fd/1", "stream"),
    ("/dev/fd/2", "stream"), ("/dev/null", "character device"),
    ("{tmp}/fifo", "pipe"), ("{tmp}/d", "folder"), ("{tmp}/sock", "socket"),
    ("{tmp}/afile/out.jsonl", "is a file, not"),
    ("{tmp}/afile/deeper/out.jsonl", "is a file, not"),
])
def test_outputs_that_are_not_files(tmp_path: Path, name: str, reason: str) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "afile").write_text("x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
    with pytest.raises(ConfigError, match=reason):
        check_output(Path(name.format(tmp=tmp_path)), "--output")
    check_output(tmp_path / "new" / "deep" / "out.jsonl", "--output")  # created later
    check_output(tmp_path / "afile", "--output")  # an existing regular file


# -- the run command: refused with exit 2, nothing read or written ------------

@pytest.mark.parametrize("args, message", [
    (["-o", "{job}"], "results (--output) and the input are the same file"),
    (["-o", "{tmp}/./job.jsonl"], "same file"),
    (["-o", "{tmp}/hard.jsonl"], "same file"),
    (["-o", "{tmp}/soft.jsonl"], "same file"),
    (["--errors", "{job}"], "errors (--errors) and the input are the same file"),
    (["-o", "{tmp}/x.jsonl", "--errors", "{tmp}/x.jsonl"], "errors (--errors) and results"),
    (["-o", "{tmp}/x.jsonl", "--errors", "{tmp}/x.jsonl.ledger"], "the ledger and errors"),
    (["-o", "{tmp}/x.jsonl", "--errors", "{tmp}/x.jsonl.lock"], "lock and errors"),
    (["-o", "{tmp}/job.jsonl.ledger", "--errors", "{tmp}/e.jsonl"], "the input"),
    (["-o", "/dev/stdout"], "stream"),
    (["-o", "{tmp}/fifo"], "pipe (FIFO)"),
    (["-o", "{tmp}/d"], "is a folder"),
    (["--errors", "/dev/null"], "character device"),
    (["-o", "{tmp}/afile/out.jsonl"], "is a file, not a folder"),
], ids=["same", "dot-spelling", "hard-link", "symlink", "errors-is-input", "errors-is-output",
        "errors-is-ledger", "errors-is-lock", "ledger-is-input", "dev-stdout", "fifo", "folder",
        "dev-null", "parent-is-file"])
def test_run_refuses_destructive_paths(tmp_path: Path, job: Path, args: list[str],
                                       message: str) -> None:
    os.link(job, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(job)
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "afile").write_text("x")
    if "{tmp}/job.jsonl.ledger" in args:  # a ledger path that is the input, via a link
        (tmp_path / "job.jsonl.ledger").symlink_to(job)
    before = _tree(tmp_path)
    argv = ["run", str(job), "--base-url", NOWHERE, "--plain",
            *[a.format(job=job, tmp=tmp_path) for a in args]]
    result = CliRunner().invoke(app, argv, env={"OPENAI_API_KEY": "sk-x"})
    assert result.exit_code == 2, result.output
    assert message in flat(result.output), result.output
    assert _tree(tmp_path) == before  # nothing read into, created, cut or moved


@pytest.mark.parametrize("setup, message", [
    ("folder", "is a folder"), ("fifo", "is a pipe"), ("dash", "stdin is not supported"),
])
def test_run_input_that_is_not_a_file(tmp_path: Path, setup: str, message: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = {"folder": "d", "fifo": "fifo", "dash": "-"}[setup]
    if setup == "folder":
        Path("d").mkdir()
    elif setup == "fifo":
        os.mkfifo("fifo")
    result = CliRunner().invoke(app, ["run", target, "--base-url", NOWHERE],
                                env={"OPENAI_API_KEY": "sk-x"})
    assert result.exit_code == 2
    assert message in flat(result.output)
    assert "no such file" not in result.output


def test_output_that_is_this_process_stdout(tmp_path: Path, job: Path) -> None:
    """`batchproc job -o out.jsonl > out.jsonl`: the summary would land in the results."""
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    with open(out, "wb") as stdout:
        proc = subprocess.run(
            [sys.executable, "-m", "processor.cli.app", str(job), "-o", str(out), "--base-url",
             NOWHERE, "--plain"], stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert b"this process's stdout" in proc.stderr
    assert out.read_bytes() == b""


def test_python_api_raises_config_error(tmp_path: Path, job: Path) -> None:
    before = job.read_bytes()
    os.link(job, tmp_path / "hard")
    with pytest.raises(ConfigError, match="same file"):
        asyncio.run(run_job(job, JobConfig(base_url=NOWHERE), output=tmp_path / "hard"))
    with pytest.raises(ConfigError, match="same file"):
        asyncio.run(run_job(job, JobConfig(base_url=NOWHERE), errors=job))
    assert job.read_bytes() == before
    assert not lock_path(tmp_path / "job.results.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard", "job.jsonl"]


# -- other commands that write files -----------------------------------------

@pytest.mark.parametrize("command", [
    ["export", "{results}", "--input", "{job}", "-o", "{job}"],
    ["export", "{results}", "-o", "{tmp}/hard-results.jsonl"],
    ["export", "{results}", "-o", "/dev/stdout"],
    ["export", "{results}", "-o", "{tmp}/d"],
    ["sort", "{results}", "--input", "{job}", "-o", "{tmp}/soft.jsonl"],
    ["sort", "{results}", "--input", "{job}", "-o", "{results}"],
    ["sort", "{results}", "--input", "{job}", "-o", "/dev/stderr"],
    ["jobs-from-images", "{tmp}/d", "--prompt", "p", "--model", "m", "-o", "/dev/stdout"],
    ["jobs-from-images", "{tmp}/d", "--prompt", "p", "--model", "m", "-o", "{tmp}/afile/x"],
], ids=["export-input", "export-results-hardlink", "export-stdout", "export-folder",
        "sort-input-symlink", "sort-results", "sort-stderr", "images-stdout", "images-parent"])
def test_commands_refuse_destructive_outputs(tmp_path: Path, job: Path,
                                             command: list[str]) -> None:
    results = write_jsonl(tmp_path / "job.results.jsonl",
                          [{"custom_id": "req-0", "response": {"status_code": 200, "body": {}}}])
    os.link(results, tmp_path / "hard-results.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(job)
    (tmp_path / "d").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    argv = [a.format(job=job, tmp=tmp_path, results=results) for a in command]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "--output" in result.output
    assert _tree(tmp_path) == before
