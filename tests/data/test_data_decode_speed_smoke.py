"""Smoke test of ``benchmarks/decode_speed.py --quick`` (the full benchmark is not a test)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("av")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_speed.py"


def test_decode_speed_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("decode_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--fixture-dir", str(tmp_path), "--repeat", "1"])
    out = capsys.readouterr().out
    line = re.search(
        r"decode 8 of (\d+) frames: seek ([\d.]+)s sequential ([\d.]+)s "
        r"speedup ([\d.]+)x frames_decoded (\d+)",
        out,
    )
    assert line, out
    assert int(line.group(1)) == result["num_total"] == 600
    assert result["seek_decoded"] < result["sequential_decoded"] <= 600
    # a second run reuses the fixture instead of encoding it again
    module.main(["--quick", "--fixture-dir", str(tmp_path), "--repeat", "1"])
    assert "(reused)" in capsys.readouterr().out
