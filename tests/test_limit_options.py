"""The per-model and shared-limiter options through the CLI: usage errors (exit 2, the
password never shown), ``estimate`` with limits per model, the help saying what the
bare flags count, and the Redis password from the environment never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from tests.conftest import chat_line, write_jsonl


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env or {})
    return result.exit_code, result.output


@pytest.fixture
def job(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])


@pytest.mark.parametrize(("args", "said"), [
    (["--limit", "gpt-4o"], "MODEL=RPM/TPM"),
    (["--limit", "gpt-4o=0/5"], "positive"),
    (["--limit", "a=1", "--limit", "a=2"], "twice"),
    (["--shared-bucket", "gpt-4o"], "two or more"),
    (["--shared-bucket", "a,b", "--limit", "b=5"], "by its first model"),
    (["--limit-scope", "org"], "'model' or 'key'"),
    (["--limiter", "http://127.0.0.1:6379/0"], "redis://"),
    (["--limiter", "redis://:hunter2-secret@127.0.0.1:6379/x"], "database"),
    (["--limiter-namespace", "a{b}"], "braces"),
], ids=["no-values", "zero", "twice", "lonely-bucket", "bucket-limit", "scope", "scheme",
        "db", "namespace"])
def test_usage_errors(job: Path, args: list[str], said: str) -> None:
    code, out = invoke("run", str(job), "--base-url", "http://127.0.0.1:9/v1", *args)
    assert code == 2, out
    assert said in " ".join(out.replace("│", " ").split())
    assert "hunter2" not in out


def test_limits_file_errors_name_the_line(job: Path, tmp_path: Path) -> None:
    limits = tmp_path / "limits.txt"
    limits.write_text("gpt-4o=500/30000\ngpt-4o-mini=lots\n")
    code, out = invoke("run", str(job), "--base-url", "http://127.0.0.1:9/v1",
                       "--limits-file", str(limits))
    assert code == 2 and "line 2" in out


def test_help_says_what_the_bare_flags_count() -> None:
    code, out = invoke("run", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "for each model" in text and "--limit-scope" in text and "--limiter" in text


def estimate_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["estimate", *args, "--json", "--offline"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout.strip().splitlines()[-1])  # stdout: the JSON only


def test_estimate_with_limits_per_model(tmp_path: Path) -> None:
    lines = [chat_line(i, model="gpt-4o") for i in range(120)] + \
        [chat_line(1000 + i, model="gpt-4o-mini") for i in range(100)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    est = estimate_json(str(job), "--rpm", "6000", "--limit", "gpt-4o=60")
    # The models run at once, each at its own limit: gpt-4o's 120 at 60/min set it.
    assert est["min_seconds"] == pytest.approx(120.0) and est["binding_limit"] == "rpm gpt-4o"
    est = estimate_json(str(job), "--rpm", "100", "--limit", "gpt-4o=60", "--limit-scope", "key")
    # Scope key: the key's 100/min over all 220 requests binds (132 s).
    assert est["min_seconds"] == pytest.approx(132.0) and est["binding_limit"] == "rpm"


def test_the_redis_password_from_the_environment_is_never_printed(job: Path) -> None:
    secret = "env-secret-password-42"
    code, out = invoke("run", str(job), "--base-url", "http://127.0.0.1:9/v1", "--plain",
                       "--limiter", "redis://127.0.0.1:9/0", "--outage-window", "1",
                       env={"BATCHPROC_REDIS_PASSWORD": secret})
    assert code == 75, out  # Redis never came: stopped, resumable
    assert "unreachable" in out and secret not in out


def test_the_display_says_waiting_for_redis_verbatim() -> None:
    import io

    from rich.console import Console

    from processor.cli.progress import LiveReporter, PlainReporter
    from processor.stats import Stats
    from processor.store.inputfilter import InputTally

    stats = Stats(input=InputTally(total=10))
    stats.waiting_for = ("waiting for Redis at redis://:***@h:6379/0 for 3s (ConnectionError: "
                         "[Errno 111] [/bold] refused); nothing is sent without the shared "
                         "budget")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=300)
    with LiveReporter(console) as live:
        live(stats)
    plain = io.StringIO()
    PlainReporter(plain)(stats)
    for text in (out.getvalue(), plain.getvalue()):
        assert "waiting for Redis" in text and "[/bold]" in text and "[Errno 111]" in text
