"""The command line end to end on the tiny model and a JSONL benchmark of real mp4 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.data import write_video
from vlmflow.store import read_records

runner = CliRunner()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        write_video(root / f"v{i}.mp4", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), fps=4)
        lines.append(
            {
                "id": f"q{i}",
                "video": f"v{i}.mp4",
                "question": "Which way does it move?",
                "options": ["left", "right", "up", "down"],
                "answer": i % 4,
                "task": "dir" if i < 2 else "count",
            }
        )
    lines.append(
        {
            "id": "broken",
            "video": "missing.mp4",
            "question": "Which way?",
            "options": ["left", "right"],
            "answer": 0,
            "task": "dir",
        }
    )
    (root / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root / "qa.jsonl"


def flow_args(model: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    return [
        "flow",
        "--model",
        str(model),
        "--data",
        f"jsonl:{bench}",
        "--num-frames",
        "4",
        "--window",
        "3",
        "--sample-mode",
        "all",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_help_explains_itself() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "knockout" in result.output
    result = runner.invoke(app, ["flow", "--help"])
    assert "--target" in result.output and "--window-style" in result.output


def test_help_lists_every_prompt_style_and_embedded_model_the_code_accepts() -> None:
    """``--prompt`` help omitted 'mvbench' and ``--model`` help omitted 'tiny'."""
    from vlmflow.models import EMBEDDED_MODELS
    from vlmflow.prompt import PROMPT_STYLES

    said = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "400"}).output
    assert {"mvbench", "tiny"} <= set(PROMPT_STYLES) | set(EMBEDDED_MODELS)
    for name in (*PROMPT_STYLES, *EMBEDDED_MODELS):
        assert f"'{name}'" in said, name


def test_flow_end_to_end_then_resume_and_refuse_other_config(tiny_llava_path, bench, tmp_path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, flow_args(tiny_llava_path, bench, out, "-t", "cross-frame", "-t", "vql-to-ql")
    )
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.output and "missing.mp4" in result.output

    df = read_records(out)
    flow = df[df["analysis"] == "flow"]
    ok = flow[flow["error"].isna()]
    # 3 good samples x (1 + 4 curves) x 4 layers
    assert len(ok) == 3 * 5 * 4
    assert set(ok["condition"]) == {
        "cross-frame",
        "video->question",
        "video->last",
        "question->last",
        "last->last",
    }
    row = ok.iloc[0]
    expected = (row["p_pred_new"] - row["p_pred_base"]) / row["p_pred_base"] * 100
    assert row["rel_pred"] == pytest.approx(expected)
    failed = df[df["error"].notna()]
    assert set(failed["sample_id"]) == {"broken"} and "missing.mp4" in failed["error"].iloc[0]

    assert (out / "figures" / "flow-cross-frame.png").stat().st_size > 1000
    assert (out / "report.html").exists()
    summary = pd.read_csv(out / "summary" / "flow.csv")
    assert {"rel_pred_mean", "rel_pred_ci95_lo", "rel_pred_ci95_hi", "acc_of_analysed", "acc_of_all"} <= set(
        summary.columns
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["analyses"]["flow"]["window"] == 3
    assert manifest["samples"]["failed"] == 1 and "torch" in manifest["versions"]

    again = runner.invoke(app, flow_args(tiny_llava_path, bench, out, "-t", "cross-frame", "-t", "vql-to-ql"))
    # the broken sample is retried (its video is still missing): the same records, one failure
    assert again.exit_code == 0 and "3 already done, retried 1 previously failed" in again.output
    assert len(read_records(out)) == len(df)

    other = runner.invoke(app, flow_args(tiny_llava_path, bench, out, "-t", "cross-frame"))
    assert other.exit_code == 2 and "another configuration" in other.output


def test_custom_cut_and_layer_subset(tiny_llava_path, bench, tmp_path) -> None:
    out = tmp_path / "custom"
    result = runner.invoke(
        app,
        flow_args(
            tiny_llava_path,
            bench,
            out,
            "--cut",
            "frame:0->last,video->question",
            "--layers",
            "1-2",
            "--task",
            "dir",
        ),
    )
    assert result.exit_code == 0, result.output
    ok = read_records(out).query("analysis == 'flow' and error.isna()", engine="python")
    assert set(ok["layer"]) == {1, 2} and set(ok["target"]) == {"custom"}
    assert set(ok["task"]) == {"dir"}


def test_bad_options_are_clear_errors(tiny_llava_path, bench, tmp_path) -> None:
    result = runner.invoke(app, flow_args(tiny_llava_path, bench, tmp_path / "x", "-t", "sideways"))
    assert result.exit_code == 2 and "unknown target 'sideways'" in result.output
    result = runner.invoke(
        app, ["flow", "--model", str(tmp_path), "--data", f"jsonl:{bench}", "--out", str(tmp_path / "y")]
    )
    assert result.exit_code == 2 and "cannot read a model config" in result.output


def test_eval_and_list_and_report(tiny_llava_path, bench, tmp_path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_llava_path),
            "--data",
            f"jsonl:{bench}",
            "--num-frames",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    listed = runner.invoke(app, ["list", "targets"]).output
    assert "cross-frame" in listed and "vq-to-true-opt" in listed
    assert "llava_next_video" in runner.invoke(app, ["list", "models"]).output
    assert "jsonl" in runner.invoke(app, ["list", "datasets"]).output


def test_comma_separated_word_options_reach_the_analyses(tiny_llava_path, bench, tmp_path) -> None:
    """``--query-words Which,way`` (README: ``--query-words first,up``) and the logit lens's
    ``--spatial``/``--temporal`` are one comma-separated string each; they crashed with
    "'list' object has no attribute 'split'" (typer made them repeatable lists)."""
    common = ["--model", str(tiny_llava_path), "--data", f"jsonl:{bench}", "--num-frames", "4"]
    common += ["--task", "count", "--sample-mode", "all", "--quiet"]
    out = tmp_path / "att"
    result = runner.invoke(
        app,
        [
            "attention",
            *common,
            "--layers",
            "0",
            "--compare",
            "none",
            "--query-words",
            "Which,way",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ok = read_records(out).query("analysis == 'attention' and error.isna()", engine="python")
    assert {"word:Which", "word:way"} <= set(ok["query"])
    config = json.loads((out / "manifest.json").read_text())["config"]["analyses"]
    assert config["attention"]["query_words"] == ["Which", "way"]
    out = tmp_path / "lens"
    result = runner.invoke(
        app, ["logit-lens", *common, "--spatial", "red,blue", "--temporal", "left,up", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "manifest.json").read_text())["config"]["analyses"]
    lens = config["logit-lens"]
    assert lens["spatial"] == ["red", "blue"] and lens["temporal"] == ["left", "up"]


def test_attention_report_names_the_layers_the_comparison_cut(tiny_llava_path, bench, tmp_path) -> None:
    """With --compare-layers 1 the attention section still said the comparison cut applied
    "in every layer"; it now names the layers it cut."""
    out = tmp_path / "att"
    args = ["attention", "--model", str(tiny_llava_path), "--data", f"jsonl:{bench}", "--num-frames", "4"]
    args += ["--task", "count", "--sample-mode", "all", "--layers", "0-1", "--compare-layers", "1"]
    result = runner.invoke(app, [*args, "--overlays", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "cut (cross-frame) in layers 1 only (0-based" in page and "in every layer" not in page


@pytest.mark.parametrize("command", ["flow", "logit-lens", "eval"])
def test_out_help_names_the_default_folder(command: str) -> None:
    """--out's help says where a run goes without it (./vlmflow-out/<command>)."""
    import re

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    text = " ".join(re.sub(r"[│|]", " ", result.output).split())
    assert "default ./vlmflow-out/COMMAND" in text


def test_every_option_name_is_whole_in_help_at_80_columns() -> None:
    """At an 80-column terminal the rich help table cut long option names
    (``--screen-exact-…``, ``--max-batch-tok…``) and words of the help text."""
    import typer

    group = typer.main.get_command(app)
    commands = {"": group, **group.commands}
    for name, command in commands.items():
        said = runner.invoke(
            app, [*([name] if name else []), "--help"], env={"COLUMNS": "80"}, terminal_width=80
        )
        assert said.exit_code == 0, said.output
        assert "…" not in said.output, (name, said.output)
        assert all(len(line) <= 80 for line in said.output.splitlines()), (name, said.output)
        words = set(said.output.replace(",", " ").replace("/", " ").split())
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("-"):
                    assert opt in words, (name, opt, said.output)


def test_command_summaries_are_whole_sentences_at_80_columns() -> None:
    """``vlmflow --help`` at 80 columns cut each command's summary to one line with '...'
    ("Attention knockout sweeps: block edges between token..."); each is now its help's
    whole first sentence, wrapped, and a command's own help is unchanged."""
    import typer

    said = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert said.exit_code == 0, said.output
    listing = said.output.split("Commands:", 1)[1]
    summaries: dict[str, str] = {}
    name = ""
    for line in listing.splitlines():
        if not line.strip():
            continue
        if not line.startswith("   "):  # "  flow         Attention knockout ..."
            name, _, text = line.strip().partition(" ")
            summaries[name] = text.strip()
        else:  # the summary wrapped onto the next line
            summaries[name] += " " + line.strip()
    group = typer.main.get_command(app)
    assert set(summaries) == set(group.commands)
    for name, text in summaries.items():
        assert not text.endswith("..."), (name, text)
        assert text.endswith("."), (name, text)
        first_line = " ".join(group.commands[name].help.split("\n\n")[0].split())
        assert first_line.startswith(text), (name, text)
    assert summaries["flow"].startswith("Attention knockout sweeps: block edges between token groups")
    own = runner.invoke(app, ["flow", "--help"], env={"COLUMNS": "80"}, terminal_width=80).output
    assert "Attention knockout sweeps: block edges between token groups" in " ".join(own.split())


def test_list_names_how_to_run_an_analysis_without_a_command_and_no_empty_model_types() -> None:
    """``vlmflow list analyses`` showed ``flow-screen`` like a command (it is ``flow --screen
    K``); ``list models`` printed ``model types: ;`` for families matched by their config."""
    import typer

    commands = set(typer.main.get_command(app).commands)
    listed = runner.invoke(app, ["list", "analyses"]).output.splitlines()
    assert any(line.split()[0] == "flow-screen" and line.endswith("(via flow --screen K)") for line in listed)
    for line in listed:
        assert line.split()[0] in commands or "(via " in line, line
    models = runner.invoke(app, ["list", "models"]).output
    assert "model types: ;" not in models
    assert "pllava" in models and "(matched by config)" in models


def test_the_cli_says_a_warning_in_one_line_without_python_source(tmp_path) -> None:
    """A warning printed as ``.../run.py:299: UserWarning: ...`` followed by the source
    line; the CLI says ``warning: ...`` (``--debug`` keeps Python's form)."""
    import os
    import subprocess
    import sys

    import vlmflow

    src = str(Path(vlmflow.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMFLOW_CACHE": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    args = ["--model", "tiny", "--data", "synthetic:1:fixed", "--task", "0", "--num-frames", "4", "-q"]
    for flags in ([], ["--debug"]):
        out = str(tmp_path / ("debug" if flags else "plain"))
        done = subprocess.run(
            [sys.executable, "-m", "vlmflow", *flags, "eval", *args, "--out", out],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if "brings its own 8 frames" in line]
        assert len(lines) == 1, done.stderr
        if flags:
            assert ": UserWarning: sample " in lines[0], done.stderr
        else:
            assert lines[0].startswith("warning: sample "), done.stderr
            assert "UserWarning" not in done.stderr and "adapter.prepare(sample)" not in done.stderr
