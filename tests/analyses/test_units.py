"""An analysis is one unit: a new one registered in its own module gets its command (with
its options), its place in ``vlmflow list analyses`` and in the report, and writes records
from a probe, with no other file touched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from vlmflow.analyses.base import ANALYSES, Analysis, option, ordered
from vlmflow.commands import register_all
from vlmflow.rundir import RunDir


@dataclass
class LastTokenNorm(Analysis):
    """Norm of the last position's residual stream after every layer."""

    name: ClassVar[str] = "last-norm"
    order: ClassVar[int] = 70
    needs_knockout: ClassVar[bool] = False
    scale: float = option(1.0, "multiply the norms by this")

    def records(self, probe: Any) -> list[dict[str, Any]]:
        return [
            {"layer": layer, "norm": float(probe.resid[layer][-1].norm()) * self.scale}
            for layer in range(probe.num_layers)
        ]


@pytest.fixture
def registered():
    ANALYSES.register("last-norm", "norm of the last position per layer")(LastTokenNorm)
    try:
        yield LastTokenNorm
    finally:  # leave the registry as the other tests expect it
        ANALYSES._entries.pop("last-norm")
        ANALYSES._help.pop("last-norm")


def test_a_new_unit_gets_its_command_listing_and_report_section(
    registered, tiny_llava, tiny_llava_path, tmp_path
):
    assert [cls.name for cls in ordered()][-2:] == ["open-ended", "last-norm"]  # by its order
    app = typer.Typer()
    register_all(app)
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "analyses"]).output
    assert "last-norm" in listed and "norm of the last position" in listed
    assert "--scale" in runner.invoke(app, ["last-norm", "--help"]).output
    out = tmp_path / "run"
    args = ["last-norm", "--model", str(tiny_llava_path), "--data", "synthetic:1", "--task", "object_count"]
    result = runner.invoke(app, [*args, "--num-frames", "4", "--scale", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    run = RunDir(out)
    rows = run.records().query("analysis == 'last-norm'")
    assert len(rows) == tiny_llava.num_layers and run.config()["analyses"]["last-norm"] == {"scale": 2.0}
    summary = pd.read_csv(run.summary_path("last-norm"))
    assert {"layer", "norm_mean", "norm_ci95_lo", "norm_ci95_hi"} <= set(summary.columns)
    assert "last-norm" in run.report_path.read_text()
