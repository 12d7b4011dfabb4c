"""Every CLI command on the demo model writes what it wrote before the library-first
redesign: the same record columns per analysis (or more), the same report sections,
summary tables and figures (or more), and the same kind of terminal output.

``golden/cli_outputs.json`` was captured from the code before the redesign by running this
file as a script (``PYTHONPATH=<old src> python tests/commands/test_outputs.py``); regenerate
it only on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parents[1] / "golden" / "cli_outputs.json"
DATA = ["--data", "synthetic:1", "--task", "object_count", "--task", "moving_direction"]
COMMON = ["--model", "tiny", *DATA, "--quiet"]
# command name -> arguments after the command (each writes its own run folder)
RUNS: dict[str, list[str]] = {
    "flow": ["flow", *COMMON, "--window", "3", "--layers", "0-1", "--sample-mode", "all"],
    "answer-prob": ["answer-prob", *COMMON, "--sample-mode", "all"],
    "logit-lens": ["logit-lens", *COMMON, "--sample-mode", "all", "--topk", "2", "--overlays", "1"],
    "attention": ["attention", *COMMON, "--sample-mode", "all", "--layers", "0,7", "--overlays", "1"],
    "pathways": ["pathways", *COMMON, "--preset", "llava-next-7b-video-ft", "--seeds", "2"],
    "pathways-search": ["pathways", *COMMON, "--search", "--step", "4", "--seeds", "1"],
    # issue 13 made the verb-anchored analysis (spaCy) the default; the golden holds the
    # first-token variant the command ran before, still reached with --anchor first-token
    "open-ended": [
        "open-ended",
        *COMMON,
        "--anchor",
        "first-token",
        "--layers",
        "0",
        "--window",
        "3",
        "--max-new-tokens",
        "2",
    ],
    "eval": ["eval", *COMMON],
}
LISTS = ("models", "datasets", "analyses", "targets")


def describe(out: Path) -> dict:
    """What a run folder holds, in the terms the redesign must keep."""
    from vlmflow.store import read_records

    records = read_records(out)
    columns = {
        str(name): sorted(c for c in group.columns if group[c].notna().any())
        for name, group in records.groupby("analysis")
    }
    figures = sorted(
        str(p.relative_to(out / "figures").parent / p.stem) for p in (out / "figures").rglob("*.png")
    )
    figures = sorted({f.split("/")[0] + "/" if "/" in f else f for f in figures})  # per-sample: the folder
    report = (out / "report.html").read_text()
    return {
        "columns": columns,
        "summaries": sorted(p.stem for p in (out / "summary").glob("*.csv")),
        "figures": figures,
        "manifest_keys": sorted(json.loads((out / "manifest.json").read_text())),
        "report_has": sorted(k for k in ("Overview", "Accuracy", "Manifest") if k in report),
        "search_file": (out / "pathway_search.json").exists(),
    }


def said(output: str) -> list[str]:
    """The kinds of line a command printed (``done:``, ``report:``, ``search:``, a table)."""
    lines = output.splitlines()
    kinds = [w for w in ("done:", "report:", "search:", "error:") if any(w in x for x in lines)]
    return kinds + (["accuracy table"] if any("accuracy" in x.split() for x in lines) else [])


def capture(root: Path) -> dict:
    """Run every command into folders under ``root``; what each wrote and printed."""
    from typer.testing import CliRunner

    from vlmflow.cli import app

    runner = CliRunner()
    got: dict = {"runs": {}, "lists": {}}
    for name, args in RUNS.items():
        out = root / name
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, f"{name}: {result.output}"
        got["runs"][name] = {**describe(out), "output_lines": said(result.output)}
    for what in LISTS:
        result = runner.invoke(app, ["list", what])
        assert result.exit_code == 0, result.output
        got["lists"][what] = sorted(line.split()[0] for line in result.output.splitlines() if line.strip())
    report = runner.invoke(app, ["report", str(root / "flow")])
    merge = runner.invoke(app, ["merge", str(root / "flow")])
    assert report.exit_code == 0 and merge.exit_code == 0, report.output + merge.output
    got["report_output"] = report.output.split(" ")[1:3]  # "records (flow)"
    got["merge_output"] = [
        line.split(" ")[0] if not line[0].isdigit() else "N" for line in merge.output.splitlines()
    ]
    return got


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return capture(tmp_path_factory.mktemp("commands"))


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_command_writes_what_it_wrote_before(now: dict, before: dict, name: str) -> None:
    got, want = now["runs"][name], before["runs"][name]
    assert set(got["columns"]) == set(want["columns"]), f"{name}: analyses in the records changed"
    for analysis, columns in want["columns"].items():
        lost = set(columns) - set(got["columns"][analysis])
        assert not lost, f"{name}: {analysis} records lost columns {sorted(lost)}"
    assert got["summaries"] == want["summaries"], f"{name}: summary tables changed"
    assert set(want["figures"]) <= set(got["figures"]), f"{name}: figures lost"
    assert set(want["manifest_keys"]) <= set(got["manifest_keys"])
    assert got["report_has"] == want["report_has"] and got["search_file"] == want["search_file"]
    assert set(want["output_lines"]) <= set(got["output_lines"]), f"{name}: terminal output lost lines"


def test_list_report_and_merge_say_what_they_said(now: dict, before: dict) -> None:
    for what, names in before["lists"].items():  # everything listed before is still listed
        assert set(names) <= set(now["lists"][what]), what
    assert now["report_output"] == before["report_output"]
    assert now["merge_output"] == before["merge_output"]


if __name__ == "__main__":  # capture the golden file from whatever vlmflow is on the path
    import tempfile

    root = Path(tempfile.mkdtemp())
    GOLDEN.write_text(json.dumps(capture(root), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} (runs under {root})", file=sys.stderr)
