"""A batch user's workflow on the CLI: quiet loads, failed resumes, ``--paper`` resumes,
short tasks, the records' model name."""

from __future__ import annotations

from pathlib import Path

import pytest
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
    import huggingface_hub.utils as hub

    hub.disable_progress_bars()  # a user's own hub setting stands too
    try:
        vlmflow.load("tiny", progress=False)
        assert hf_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
    finally:
        hub.enable_progress_bars()

    result = runner.invoke(app, eval_args(tmp_path / "run", "--quiet"))
    assert result.exit_code == 0, result.output
    shown = result.output + capfd.readouterr().err
    assert "Loading weights" not in shown and "it/s" not in shown, shown
    assert hf_logging.is_progress_bar_enabled()


def test_no_retry_failed_on_a_run_whose_every_sample_failed_exits_1_and_says_how_to_retry(
    tmp_path: Path,
) -> None:
    """Every sample's video is missing: the fresh run exits 1; resuming it with
    ``--no-retry-failed`` computes nothing either, and exits 1 too instead of 0."""
    import json

    qa = tmp_path / "qa.jsonl"
    items = [
        {"id": f"q{i}", "video": f"missing{i}.mp4", "question": "Which way?", "options": ["left", "right"],
         "answer": 0, "task": "dir"}
        for i in range(2)
    ]  # fmt: skip
    qa.write_text("".join(json.dumps(x) + "\n" for x in items))
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny", "--data", f"jsonl:{qa}", "--out", str(out), "--quiet"]

    fresh = runner.invoke(app, args)
    assert fresh.exit_code == 1, fresh.output
    assert "all 2 samples failed" in fresh.output

    kept = runner.invoke(app, [*args, "--no-retry-failed"])
    assert kept.exit_code == 1, kept.output
    assert "2 failed before, kept (--no-retry-failed)" in kept.output
    assert "all 2 samples failed" in kept.output and "rerun without --no-retry-failed" in kept.output


def test_paper_is_provenance_not_configuration_so_the_same_options_resume(tmp_path: Path) -> None:
    """``--paper`` on eval sets ``--correctness text --seed 42``: a folder started either way
    resumes the other way (nothing recomputed), and the session says it used --paper."""
    import json

    explicit = ("--correctness", "text", "--seed", "42", "--quiet")
    for first, then in ((("--paper", "--quiet"), explicit), (explicit, ("--paper", "--quiet"))):
        out = tmp_path / f"run{len(first)}"
        started = runner.invoke(app, eval_args(out, *first))
        assert started.exit_code == 0, started.output
        resumed = runner.invoke(app, eval_args(out, *then))
        assert resumed.exit_code == 0, resumed.output
        assert "done: 0 samples, 0 failed, 1 already done" in resumed.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert "paper" not in manifest["config"]
        assert [s.get("paper", False) for s in manifest["sessions"]] == [
            "--paper" in first,
            "--paper" in then,
        ]

    # a folder written before: "paper": true in its configuration; it resumes either way
    out = tmp_path / "run5"
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["paper"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))
    for flags in (explicit, ("--paper", "--quiet")):
        resumed = runner.invoke(app, eval_args(out, *flags))
        assert resumed.exit_code == 0, resumed.output
        assert "1 already done" in resumed.output
    different = runner.invoke(app, eval_args(out, "--quiet"))  # another seed and rule: refused
    assert different.exit_code == 2, different.output
    said = "differs in: correctness (folder: text, now: not set), seed (folder: 42, now: 0)"
    assert said in different.output.replace("\n", " "), different.output


def test_tasks_by_paper_id_in_another_order_or_repeated_resume_the_same_folder(tmp_path: Path) -> None:
    """``--task`` by paper id, in another order, or repeated selects the same samples, so it
    resumes the folder (it was refused: "differs in: tasks"): the manifest stores the tasks
    resolved (names, sorted, once each), and a folder written before, which stored them as
    typed, resumes too. Other tasks are refused naming both selections."""
    import json

    out = tmp_path / "run"

    def args(*tasks: str) -> list[str]:
        picked = [a for t in tasks for a in ("--task", t)]
        return [
            "eval",
            "--model",
            "tiny",
            "--data",
            "synthetic:1:fixed",
            *picked,
            "--out",
            str(out),
            "--quiet",
        ]

    first = runner.invoke(app, args("object_count", "action_sequence"))
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["tasks"] == ["action_sequence", "object_count"]
    # paper ids number the tasks alphabetically: 1 action_sequence, 3 object_count
    for tasks in (("3", "1"), ("action_sequence", "object_count", "object_count"), ("1", "object_count")):
        resumed = runner.invoke(app, args(*tasks))
        assert resumed.exit_code == 0, (tasks, resumed.output)
        assert "0 samples, 0 failed, 2 already done" in resumed.output, resumed.output

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["tasks"] = ["3", "action_sequence", "3"]  # as a folder before stored them
    (out / "manifest.json").write_text(json.dumps(manifest))
    resumed = runner.invoke(app, args("action_sequence", "object_count"))
    assert resumed.exit_code == 0, resumed.output
    assert "2 already done" in resumed.output

    other = runner.invoke(app, args("object_count"))
    assert other.exit_code == 2
    said = 'differs in: tasks (folder: ["action_sequence", "object_count"], now: ["object_count"])'
    assert said in other.output.replace("\n", " "), other.output


def test_samples_beyond_a_tasks_count_says_how_many_the_task_has(tmp_path: Path) -> None:
    """``--samples 5`` on a task of 2 runs its 2, with a one-line warning saying so."""
    import warnings

    from vlmflow.data import load_dataset

    with pytest.warns(
        UserWarning, match=r"5 samples per task asked .* task 'object_count' has 2; all of its"
    ):
        assert len(load_dataset("synthetic:2:fixed", tasks=["object_count"], samples=5)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as many as asked, or fewer: no warning
        load_dataset("synthetic:2:fixed", tasks=["object_count"], samples=2)

    with pytest.warns(UserWarning, match="task 'object_count' has 2") as caught:
        result = runner.invoke(
            app, eval_args(tmp_path / "run", "--samples", "5", "--quiet", data="synthetic:2:fixed")
        )
    assert result.exit_code == 0, result.output
    assert "done: 2 samples" in result.output
    assert all("\n" not in str(w.message) for w in caught)


def test_records_name_the_model_as_the_user_did_and_the_manifest_keeps_its_folder(tmp_path: Path) -> None:
    """``--model tiny`` (an embedded model): the records' ``model`` is "tiny", not the
    install folder, so runs on two machines compare; the manifest keeps the folder."""
    import json

    from vlmflow.models import TINY_MODEL_DIR
    from vlmflow.rundir import RunDir

    out = tmp_path / "run"
    result = runner.invoke(app, eval_args(out, "--quiet"))
    assert result.exit_code == 0, result.output
    assert set(RunDir(out).records()["model"]) == {"tiny"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["id"] == "tiny"
    assert manifest["model"]["path"] == manifest["provenance"]["model"]["path"] == str(TINY_MODEL_DIR)


def test_max_batch_tokens_help_says_what_the_engine_does(tiny_llava, sample, monkeypatch) -> None:
    """The help's default (the input's length, at least 64) and its floor (one plan a pass,
    however low the bound) are what the engine does."""
    import re

    from tests.test_engine import engine_for
    from vlmflow.analyses.targets import sweep, target_curves
    from vlmflow.engine import Engine

    engine, prepared = engine_for(tiny_llava, sample)
    assert engine.max_batch_tokens == max(prepared.layout.length, 64)
    low, _ = engine_for(tiny_llava, sample, max_batch_tokens=1)
    plans = [
        p.plan
        for _t, name, e in target_curves(["vql-to-ql"], prepared.layout)
        for p in sweep([(name, e)], low.lm.num_layers, window=1)
    ][:3]
    packs: list[int] = []
    run_pack = Engine._run_pack
    monkeypatch.setattr(
        Engine, "_run_pack", lambda self, ps, q0: packs.append(len(ps)) or run_pack(self, ps, q0)
    )
    low.evaluate(plans)
    assert packs == [1, 1, 1]  # below one plan's positions: each plan its own pass, no less

    text = " ".join(re.sub(r"[│|]", " ", runner.invoke(app, ["eval", "--help"]).output).split())
    assert "the input's length, at least 64" in text
    assert "each plan still gets a pass of its own" in text
