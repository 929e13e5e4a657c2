"""The keys file: NAME=KEY only for identifier names; never any part of a key in a message."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.cli.keys import parse_keys, read_keys_file
from processor.errors import ConfigError
from tests.conftest import chat_line, read_jsonl, write_jsonl
from tests.test_cli import server_url  # noqa: F401 - the fixture, served from a thread

B64 = "QUJDREVGR0hJSktMTU5PUA=="  # a bare key with base64 padding
B64_ALNUM = "abcDEF123="  # its "name" part would be an identifier


@pytest.mark.parametrize("text, expected", [
    ("A=sk-1\nB=sk-2\n", [("A", "sk-1"), ("B", "sk-2")]),
    (f"{B64}\n", [("k:1", B64)]),
    (f"{B64_ALNUM}\n", [("k:1", B64_ALNUM)]),
    ("abcDEF==\n", [("k:1", "abcDEF==")]),
    ("sk-proj-x=y\n", [("k:1", "sk-proj-x=y")]),  # '-' is not in a name
    (f"MAIN={B64}\n", [("MAIN", B64)]),
    ("  _second_1 = sk-3  \n", [("_second_1", "sk-3")]),
    ("1A=sk-4\n", [("k:1", "1A=sk-4")]),  # names do not start with a digit
    ("# comment\n\nsk-5\r\n", [("k:3", "sk-5")]),
    ("\ufeffA=sk-6\n", [("A", "sk-6")]),
    ("sk-7", [("k:1", "sk-7")]),
], ids=["named", "base64-bare", "base64-identifier-part", "double-padding", "dash",
        "named-base64", "spaces", "digit-name", "comments-crlf", "bom", "no-newline"])
def test_parse(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse_keys(text.encode(), "k") == expected


@pytest.mark.parametrize("data, message", [
    (b"A=sk-secret-1\nA=sk-secret-2\n", "line 2: the name A is already used on line 1"),
    (b"sk-secret-1\nB=sk-secret-1\n", "line 2: the same key as line 1"),
    (b"\n# nothing\n", "holds no key"),
    (b"", "holds no key"),
    (b"A=sk-secret-1\nsk-\xff\xfesecret\n", "line 2: not UTF-8"),
    (b"sk-sec\x00ret\n", "line 1: the key holds control characters"),
    (b"A=sk-sec\x1bret\n", "line 1: the key holds control characters"),
], ids=["dup-name", "dup-key", "comments-only", "empty", "not-utf8", "nul", "escape"])
def test_bad_files_name_the_line_never_the_key(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys(data, "keys.txt")
    text = str(info.value)
    assert message in text
    assert "secret" not in text and "sk-" not in text and "sec" not in text


def test_read_keys_file_folder_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        read_keys_file(tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys_file(tmp_path / "missing")


@pytest.mark.parametrize("content", [
    b"sk-SECRET-a\nsk-SECRET-a\n", b"\xff\xfeSECRET\n", b"", b"A=SECRET\nA=SECRET2\n",
], ids=["dup", "not-utf8", "empty", "dup-name"])
def test_cli_bad_keys_file_exits_2_without_the_key(tmp_path: Path, content: bytes) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_bytes(content)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    result = CliRunner().invoke(app, ["run", str(job), "--keys-file", str(keys), "--base-url",
                                      "http://127.0.0.1:9/v1", "--plain"])
    assert result.exit_code == 2, result.output
    # The error box folds a long path anywhere (tmp paths differ in length: xdist's add a
    # folder): read its text unfolded.
    text = "".join(result.output.replace("│", "").split())
    assert "keys.txt" in text, result.output
    assert "SECRET" not in text
    assert "Traceback" not in text
    assert not (tmp_path / "job.results.jsonl").exists()


def test_cli_keys_file_folder_exits_2(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    result = CliRunner().invoke(app, ["run", str(job), "--keys-file", str(tmp_path),
                                      "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2
    assert "is a folder" in " ".join(result.output.replace("│", " ").split())


def test_base64_key_never_becomes_a_label(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """The red-team's case: a padded key was split at '=' and its text written as a label."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{B64_ALNUM}\nNAMED=sk-other-key\n")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(6)])
    result = CliRunner().invoke(app, ["run", str(job), "--keys-file", str(keys), "--base-url",
                                      server_url, "--plain", "--rpm", "6000"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "job.results.jsonl")
    labels = {r["batchproc"]["key"] for r in records}
    assert labels <= {"keys.txt:1", "NAMED"} and labels
    everything = result.output + (tmp_path / "job.results.jsonl").read_text()
    assert "abcDEF123" not in everything and "sk-other-key" not in everything
