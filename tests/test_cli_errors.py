"""What the command line says and returns when things go wrong.

- an unexpected exception: one ``error:`` line with what to do, exit status 2; ``--debug``
  shows the traceback;
- a run in which every sample failed exits non-zero and says so; a run with some
  failures exits 0 and prints the count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.data import write_video

runner = CliRunner()


def bench(root: Path, good: int, broken: int) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(good):
        write_video(root / f"v{i}.mp4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=4)
        lines.append(
            {"id": f"q{i}", "video": f"v{i}.mp4", "question": "Which way?", "options": ["left", "right"]}
        )
    for i in range(broken):
        lines.append(
            {"id": f"b{i}", "video": f"missing{i}.mp4", "question": "Which way?", "options": ["a", "b"]}
        )
    for line in lines:
        line.update(answer=0, task="dir")
    path = root / "qa.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def args(model: Path, data: Path, out: Path) -> list[str]:
    return ["answer-prob", "-m", str(model), "-d", f"jsonl:{data}", "--num-frames", "4", "-o", str(out), "-q"]


def test_all_failed_exits_nonzero_and_says_so(tiny_llava_path, tmp_path) -> None:
    result = runner.invoke(app, args(tiny_llava_path, bench(tmp_path, 0, 2), tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert "all 2 samples failed" in result.output and "missing" in result.output


def test_some_failed_exits_zero_and_prints_the_count(tiny_llava_path, tmp_path) -> None:
    result = runner.invoke(app, args(tiny_llava_path, bench(tmp_path, 1, 1), tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "1 samples failed" in result.output


@pytest.fixture
def crash(monkeypatch):
    import vlmflow.api

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(vlmflow.api, "run", boom)


def test_unexpected_error_is_one_line_with_what_to_do(crash, tiny_llava_path, tmp_path) -> None:
    result = runner.invoke(app, args(tiny_llava_path, bench(tmp_path, 1, 0), tmp_path / "run"))
    assert result.exit_code == 2
    assert "error: RuntimeError: disk on fire" in result.output and "--debug" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, RuntimeError)


def test_debug_shows_the_traceback(crash, tiny_llava_path, tmp_path) -> None:
    from vlmflow.commands.common import DEBUG

    result = runner.invoke(app, ["--debug", *args(tiny_llava_path, bench(tmp_path, 1, 0), tmp_path / "run")])
    DEBUG["traceback"] = False
    assert isinstance(result.exception, RuntimeError)  # propagated: click prints its traceback


def test_console_entry_point_reports_unexpected_errors(monkeypatch, capsys) -> None:
    import vlmflow.cli
    from vlmflow.commands.common import DEBUG

    monkeypatch.setitem(DEBUG, "traceback", False)  # no --debug on this command line

    def boom():
        raise ValueError("bad thing")

    monkeypatch.setattr(vlmflow.cli, "app", boom)
    with pytest.raises(SystemExit) as exit_info:
        vlmflow.cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: ValueError: bad thing" in err and "Traceback" not in err
