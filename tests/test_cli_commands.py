"""``batchproc JOBS.jsonl`` means ``batchproc run JOBS.jsonl``: main() knows every
registered command by name, from typer's own registry."""

from __future__ import annotations

import pytest
import typer

from processor.cli.app import _COMMANDS, app, main


def test_commands_are_the_registered_ones() -> None:
    assert _COMMANDS == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(typer.main.get_command(app).commands))  # type: ignore[attr-defined]
def test_each_command_is_reached_not_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"batchproc {name} [OPTIONS]" in capsys.readouterr().out


def test_a_job_file_goes_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-jobs.jsonl"])
    assert exc.value.code == 2  # run's own usage error: the file does not exist
    assert "no such file: no-such-jobs.jsonl" in capsys.readouterr().err
