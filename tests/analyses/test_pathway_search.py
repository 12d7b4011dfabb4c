"""The pathway search is library code: it runs from Python, and under ``torchrun`` (two
processes each scoring their share of the calibration samples) it finds exactly the
pathway one process finds, saves it with the run and evaluates it on the held-out rest."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vlmflow
from vlmflow.analyses.pathways import PRESETS, Pathways, PathwaySpec, calibration_split
from vlmflow.cli import app
from vlmflow.errors import PlanError, RunError
from vlmflow.probe import Model

DATA = "synthetic:2"
TASKS = ("moving_direction", "object_count")


def options(path: Path) -> vlmflow.Options:
    return vlmflow.Options(model=str(path), data=DATA, tasks=TASKS, num_frames=4, progress=False)


def test_search_from_python_saves_the_pathway_and_holds_out_its_calibration(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = vlmflow.search_and_evaluate(
            options(tiny_llava_path), tmp_path / "one", step=2, seeds=(0,), model=Model(tiny_llava)
        )
    finally:
        torch.set_num_threads(threads)
    saved = vlmflow.RunDir(result.out).read_search()
    assert saved == result.report["search"] and saved["spec"]["num_layers"] == tiny_llava.num_layers
    samples = options(tiny_llava_path).samples_of()
    calib = calibration_split(samples, 0.5, 0)
    assert sorted(calib) == saved["calib_samples"] and 0 < len(calib) < len(samples)
    evaluated = set(vlmflow.RunDir(result.out).records()["sample_id"])
    assert evaluated == {s.id for s in samples} - calib  # held-out samples only
    assert result.summary.done == len(samples) - len(calib)
    # the report says what was found and on which samples (it showed only the held-out accuracy)
    html = (result.out / "report.html").read_text()
    assert f"search on {len(calib)} calibration samples" in html
    assert f"calibration accuracy {saved['calib_accuracy']:.3f}" in html


def test_search_under_torchrun_finds_what_one_process_finds(tiny_llava_path: Path, tmp_path: Path) -> None:
    one = vlmflow.search_and_evaluate(options(tiny_llava_path), tmp_path / "one", step=2, seeds=(0,))
    args = ["pathways", "--model", str(tiny_llava_path), "--data", DATA, "--num-frames", "4", "--quiet"]
    args += [a for t in TASKS for a in ("--task", t)] + ["--search", "--step", "2", "--seeds", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = tmp_path / "two"
    cmd += ["-m", "vlmflow", *args, "--out", str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "search: kept" in done.stdout  # rank 0 prints the found ranges
    found = json.loads((two / "pathway_search.json").read_text())
    want = one.report["search"]
    assert found["spec"] == want["spec"] and found["calib_samples"] == want["calib_samples"]
    assert abs(found["calib_accuracy"] - want["calib_accuracy"]) < 1e-9
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["sessions"][-1]["world_size"] == 2


def search(tiny_llava, path: Path, out: Path, **kw):
    kw = {"step": 4, "seeds": (0,), "model": Model(tiny_llava), **kw}
    return vlmflow.search_and_evaluate(options(path), out, **kw)


def test_a_refused_rerun_leaves_the_folders_search_result_as_it_was(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    search(tiny_llava, tiny_llava_path, out)
    before = (out / "pathway_search.json").read_bytes()
    with pytest.raises(RunError, match=r"another configuration.*search"):
        search(tiny_llava, tiny_llava_path, out, tolerance=0.5)
    assert (out / "pathway_search.json").read_bytes() == before


def test_a_rerun_refused_after_the_configuration_check_leaves_the_search_result(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Same configuration, but the folder was computed in another dtype: the run is refused
    once the model is loaded, and the new search result must not replace the folder's."""
    out = tmp_path / "run"
    search(tiny_llava, tiny_llava_path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["computed_in"]["dtype"] = "bfloat16"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "pathway_search.json").write_text('{"marker": 1}')
    with pytest.raises(RunError, match="computed in bfloat16"):
        search(tiny_llava, tiny_llava_path, out)
    assert json.loads((out / "pathway_search.json").read_text()) == {"marker": 1}


@pytest.mark.parametrize(
    "tamper, said",
    [
        (lambda m: m["computed_in"].update(dtype="bfloat16"), "computed in bfloat16"),
        (lambda m: m["computed_in"].update(frame_policy="other"), "processed otherwise"),
        (lambda m: m["provenance"]["model"].update(weights_sha256="0" * 64), "model.weights_sha256"),
        (lambda m: m["provenance"]["data"].update(samples_sha256="0" * 64), "data.samples_sha256"),
    ],
    ids=["dtype", "processing", "weights", "data"],
)
def test_a_rerun_on_other_weights_data_or_dtype_is_refused_before_the_search(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper, said
) -> None:
    """The folder was computed in another dtype or input processing, or from other weights
    or data: the rerun is refused before its (expensive) search starts, not after it."""
    from vlmflow.analyses import pathways

    out = tmp_path / "run"
    search(tiny_llava, tiny_llava_path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    tamper(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))

    def no_search(*a, **k):
        raise AssertionError("the search ran before the refusal")

    monkeypatch.setattr(pathways, "search_pathway", no_search)
    with pytest.raises(RunError, match=said) as refused:
        search(tiny_llava, tiny_llava_path, out)
    assert "nothing was searched" in str(refused.value)
    assert json.loads((out / "manifest.json").read_text()) == manifest  # left as it was


def test_a_busy_folder_is_refused_before_the_search(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with vlmflow.RunDir(out).lock(), pytest.raises(RunError, match="in use by another"):
        search(tiny_llava, tiny_llava_path, out, model=None)  # refused before loading the model
    assert not (out / "pathway_search.json").exists()


def test_search_uses_the_random_fraction_and_scale_it_is_given(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    result = search(tiny_llava, tiny_llava_path, tmp_path / "run", random_fraction=0.3, scale=False)
    summary = result.report["summaries"]["pathways"]
    assert summary.loc[summary["task"] == "all", "suppressed_random"].iloc[0] == pytest.approx(0.3, abs=0.01)
    assert summary.loc[summary["task"] == "all", "suppressed_pathway"].iloc[0] != pytest.approx(0.3, abs=0.01)
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["analyses"]["pathways"]
    assert config["random_fraction"] == 0.3 and config["scale"] is False


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        ({"step": 0}, "--step"),
        ({"step": -1}, "--step"),
        ({"step": 1.5}, "--step"),
        ({"calib": 1.5}, "--calib"),
        ({"calib": 0}, "--calib"),
        ({"calib": 1}, "--calib"),
        ({"tolerance": -5}, "--tolerance"),
        ({"tolerance": float("nan")}, "--tolerance"),
        ({"random_fraction": 1.5}, "--random-fraction"),
        ({"random_fraction": "-0.1"}, "--random-fraction"),
        ({"random_fraction": "paper"}, "--random-fraction paper"),
    ],
)
def test_bad_search_options_are_refused_before_anything_loads(tmp_path: Path, given: dict, flag: str) -> None:
    missing = vlmflow.Options(model=str(tmp_path / "no-model"), data=DATA, tasks=TASKS, progress=False)
    with pytest.raises(PlanError, match=flag):  # the missing model is never reached
        vlmflow.search_and_evaluate(missing, tmp_path / "run", **given)
    assert not (tmp_path / "run").exists()


def test_random_fraction_outside_0_1_is_refused_for_a_preset_too() -> None:
    for bad in (1.5, -0.1, "2", "nan", "lots"):
        with pytest.raises(PlanError, match=r"--random-fraction .* a number in \[0, 1\]"):
            Pathways(spec=PRESETS["llava-next-7b-video-ft"], random_fraction=bad)


def test_a_search_with_one_readable_sample_is_refused(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    one = dataclasses.replace(options(tiny_llava_path), tasks=(TASKS[0],), samples=1)
    with pytest.raises(PlanError, match=r"at least 2 readable samples.*--calib.*1 of the 1 selected"):
        vlmflow.search_and_evaluate(one, tmp_path / "run", model=Model(tiny_llava))
    assert not (tmp_path / "run" / "pathway_search.json").exists()


def test_no_scale_with_a_preset_for_another_layer_count_is_refused_once(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    preset = Pathways(spec=PRESETS["llava-next-7b-video-ft"], seeds=(0,), scale=False)
    want = rf"32 layers, the model has {tiny_llava.num_layers}.*drop --no-scale"
    with pytest.raises(PlanError, match=want) as refused:
        vlmflow.run(options(tiny_llava_path), [preset], tmp_path / "run", model=Model(tiny_llava))
    assert "pass --scale" not in str(refused.value)
    assert not (tmp_path / "run" / "records").exists() or not any((tmp_path / "run" / "records").iterdir())


def test_a_reversed_spec_range_is_called_reversed() -> None:
    with pytest.raises(PlanError, match=r"cross_frame range \[3, 1\] is reversed"):
        PathwaySpec.from_dict({"num_layers": 8, "keep": {"cross_frame": [3, 1]}})
    with pytest.raises(PlanError, match="outside 0..7"):  # a range past the model is still that
        PathwaySpec.from_dict({"num_layers": 8, "keep": {"cross_frame": [3, 9]}})


def test_spec_file_slips_are_named(tmp_path: Path) -> None:
    """A key given twice (json keeps the last silently), ``keep: 0`` (read as "nothing"),
    and a .txt file holding bad JSON (called "not valid txt")."""
    from vlmflow.analyses.pathways import load_spec

    twice = tmp_path / "twice.json"
    twice.write_text('{"num_layers": 8, "keep": {"cross_frame": [0, 3]}, "keep": {"cross_frame": [4, 7]}}')
    with pytest.raises(PlanError, match=r"twice.json is not valid JSON: key 'keep' is given twice"):
        load_spec(str(twice))
    with pytest.raises(PlanError, match="keep must map edges to layer ranges, got 0"):
        PathwaySpec.from_dict({"num_layers": 8, "keep": 0, "block": {"video_to_last": "all"}})
    text = tmp_path / "spec.txt"
    text.write_text("{num_layers: 8")
    with pytest.raises(PlanError, match=r"spec.txt is not valid JSON"):
        load_spec(str(text))


def test_a_yaml_spec_with_a_key_given_twice_is_refused_naming_the_key_and_file(tmp_path: Path) -> None:
    """YAML kept the last of two equal keys silently (a pathway other than the one written);
    like a JSON spec's, at any depth. A merge key (``<<``) that an explicit key overrides
    is YAML's own way to override, not a slip."""
    from vlmflow.analyses.pathways import load_spec

    twice = tmp_path / "twice.yaml"
    twice.write_text("num_layers: 8\nkeep:\n  cross_frame: [0, 3]\nkeep:\n  cross_frame: [4, 7]\n")
    with pytest.raises(
        PlanError, match=r"twice.yaml is not valid YAML: key 'keep' is given twice \(line 4\)"
    ):
        load_spec(str(twice))
    nested = tmp_path / "nested.yml"
    nested.write_text("num_layers: 8\nkeep:\n  cross_frame: [0, 3]\n  cross_frame: [4, 7]\n")
    with pytest.raises(PlanError, match=r"nested.yml is not valid YAML: key 'cross_frame' is given twice"):
        load_spec(str(nested))
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "base: &b {cross_frame: [0, 3]}\nnum_layers: 8\nkeep:\n  <<: *b\n  cross_frame: [4, 7]\n"
    )
    with pytest.raises(PlanError, match="unknown key.*base"):  # read; then refused for its extra key
        load_spec(str(merged))
    ok = tmp_path / "ok.yaml"
    ok.write_text("num_layers: 8\nkeep:\n  cross_frame: [0, 3]\nblock:\n  video_to_last: all\n")
    assert load_spec(str(ok)) == PathwaySpec.from_dict(
        {"num_layers": 8, "keep": {"cross_frame": [0, 3]}, "block": {"video_to_last": "all"}}
    )


def test_preset_help_names_the_presets() -> None:
    done = CliRunner().invoke(app, ["pathways", "--help"], env={"COLUMNS": "400"})
    assert done.exit_code == 0 and "`list`" not in done.output
    assert all(name in done.output for name in PRESETS), done.output


def test_the_search_line_writes_its_layers_1_based_and_says_so() -> None:
    """The terminal's search line printed the spec's 0-based JSON ranges unlabelled, beside
    flow lines and a README table that count layers from 1."""
    from vlmflow.analyses.pathways import describe_search

    saved = {
        "spec": {
            "keep": {"cross_frame": [0, 7], "video_to_question": None},
            "block": {"last_to_last": [3, 7]},
        },
        "calib_accuracy": 1.0,
        "calib_base_accuracy": 1.0,
        "calib_suppressed": 0.438,
    }
    line = describe_search(saved)
    assert line.startswith(
        "search: kept cross_frame 1-8, video_to_question nowhere; blocked last_to_last 4-8"
    )
    assert "(layers 1-based" in line and "43.8% of edges suppressed" in line


def test_a_task_the_split_holds_none_of_is_named_as_not_in_the_held_out_half(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    """The split is a seeded shuffle over all samples, not per task: with seed 5 both
    moving-direction items are searched on, and the held-out table silently lacked the task."""
    chosen = dataclasses.replace(options(tiny_llava_path), data="synthetic:2:fixed", seed=5)
    result = vlmflow.search_and_evaluate(
        chosen, tmp_path / "run", step=4, seeds=(0,), model=Model(tiny_llava)
    )
    assert set(vlmflow.RunDir(result.out).records()["task"]) == {"object_count"}
    assert result.report["search"]["calib_only_tasks"] == ["moving_direction"]
    said = "not in the held-out half (every sample searched on, none evaluated): moving_direction"
    assert any(line.startswith(said) for line in Pathways.terminal(result.report))
    assert said in (result.out / "report.html").read_text()
