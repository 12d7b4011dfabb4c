"""A batch user's workflow on the CLI: quiet loads, failed resumes, ``--paper`` resumes,
short tasks, the records' model name."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from vlmflow.cli import app

runner = CliRunner()


def eval_args(out: Path, *extra: str, data: str = "synthetic:1:fixed") -> list[str]:
    return ["eval", "--model", "tiny", "--data", data, "--task", "object_count", "--out", str(out), *extra]


def test_quiet_loads_the_model_without_progress_bars_and_restores_them(tmp_path, capfd) -> None:
    from transformers.utils import logging as hf_logging

    import vlmflow

    vlmflow.load("tiny")  # a Python user who wants progress gets transformers' bar
    assert "Loading weights" in capfd.readouterr().err
    vlmflow.load("tiny", progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # only that load was quiet

    result = runner.invoke(app, eval_args(tmp_path / "run", "--quiet"))
    assert result.exit_code == 0, result.output
    shown = result.output + capfd.readouterr().err
    assert "Loading weights" not in shown and "it/s" not in shown, shown
    assert hf_logging.is_progress_bar_enabled()
