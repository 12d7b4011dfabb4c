"""What a run is told is what it does, or it is refused up front: a sample's own frames are
used as given (said once, and in every record), layer selections beyond the loaded model
are refused before the first sample, and ``flow --screen``'s own options reach the screen
and its manifest."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlmflow
from vlmflow.cli import app
from vlmflow.store import read_records

runner = CliRunner()
OWN_FRAMES = "brings its own 8 frames"
SYNTHETIC = ["--data", "synthetic:2:fixed", "--task", "moving_direction"]


def test_a_samples_own_frames_are_used_as_given_and_said_once(tiny_llava_path) -> None:
    model = vlmflow.load(str(tiny_llava_path))  # a model of its own: nothing said before
    first, second = vlmflow.load_dataset("synthetic:2:fixed", tasks=["moving_direction"])
    assert first.frames is not None and len(first.frames) == 8
    with pytest.warns(UserWarning, match=rf"sample '{first.id}' {OWN_FRAMES}; num_frames=1 applies only"):
        probe = model.probe(first, num_frames=1)
    assert probe.layout.num_frames == 8 and probe.prepared.num_frames == 8
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert model.probe(second, num_frames=1).layout.num_frames == 8
        model.probe(second)  # num_frames=8 matches: nothing to say
    assert not [w for w in again if OWN_FRAMES in str(w.message)], "said once per frame count and setting"
    with warnings.catch_warnings(record=True) as unasked:
        warnings.simplefilter("always")
        clip = vlmflow.load(str(tiny_llava_path)).probe(
            frames=first.frames[:5], question="Which way?", options=["left", "right"], answer=0
        )
    assert clip.prepared.num_frames == 5  # num_frames not chosen: the clip as given, nothing said
    assert not [w for w in unasked if "brings its own" in str(w.message)]


def test_eval_records_say_how_many_frames_each_sample_used(tiny_llava_path, tmp_path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_llava_path), *SYNTHETIC, "--num-frames", "2"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = runner.invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len([w for w in said if "num_frames=2" in str(w.message)]) == 1, "one warning per run"
    records = read_records(out)
    assert len(records) == 2 and records["error"].isna().all()
    assert (records["num_frames"] == 8).all()  # the frames used, not the setting
    assert json.loads((out / "manifest.json").read_text())["config"]["num_frames"] == 2


def flow(model: Path, out: Path, *extra: str) -> list[str]:
    return ["flow", "--model", str(model), *SYNTHETIC, "--samples", "1", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize(
    ("command", "extra", "said"),
    [
        ("flow", ["--screen", "3", "--layers", "40"], "--layers 40: "),
        ("flow", ["--layers", "2-5"], "--layers 2-5: "),
        ("attention", ["--compare-layers", "0,9"], "--compare-layers 0,9: "),
    ],
)
def test_layers_beyond_the_model_are_refused_before_any_sample(
    tiny_llava_path, tmp_path, command, extra, said
) -> None:
    out = tmp_path / "run"
    args = [command, "--model", str(tiny_llava_path), *SYNTHETIC, "--out", str(out), "--quiet", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert said in result.output and "has 4 layers (0-3)" in result.output
    assert not (out / "records").exists() and not (out / "manifest.json").exists()
    if command == "flow" and "--screen" not in extra:  # the folder takes the corrected command
        fixed = runner.invoke(
            app, flow(tiny_llava_path, out, "--layers", "2-3", "-t", "vql-to-ql", "--window", "1")
        )
        assert fixed.exit_code == 0, fixed.output


def test_screen_control_order_and_exact_below_reach_the_screen(tiny_llava_path, tmp_path) -> None:
    out = tmp_path / "screen"
    screen = [
        "--screen",
        "2",
        "--screen-control",
        "1",
        "--screen-exact-below",
        "0",
        "--screen-order",
        "magnitude",
    ]
    args = flow(tiny_llava_path, out, "-t", "vql-to-ql", "--window", "1", "--sample-mode", "all", *screen)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_records(out).query("analysis == 'flow-screen' and kind == 'plan'", engine="python")
    assert rows["error"].isna().all() and (rows["num_frames"] == 8).all()
    assert len(rows[rows["method"] == "estimate"]) == 4 * 4  # 4 curves x 4 layers, each estimated
    exact = rows[rows["method"] == "exact"]  # nothing cheap: the top 2 and 1 control
    assert sorted(exact["verified_as"]) == ["control", "top", "top"]
    config = json.loads((out / "manifest.json").read_text())["config"]["analyses"]["flow-screen"]
    assert (config["k"], config["control"], config["exact_below"], config["ranking"]) == (
        2,
        1,
        0.0,
        "magnitude",
    )


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            ["--screen", "2", "--screen-order", "sideways"],
            "--screen-order 'sideways': choose from drop, magnitude",
        ),
        (["--screen-control", "1"], "--screen-control only applies to a screened sweep; add --screen K"),
        (["--screen", "2", "--screen-control", "-1"], "--screen-control -1: must be >= 0"),
    ],
)
def test_bad_screen_options_are_clear_errors(tiny_llava_path, tmp_path, extra, said) -> None:
    result = runner.invoke(app, flow(tiny_llava_path, tmp_path / "bad", *extra))
    assert result.exit_code == 2 and said in result.output, result.output


@pytest.mark.parametrize("frames", [0, -3])
def test_num_frames_below_one_is_refused_before_the_model_loads(tiny_llava_path, tmp_path, frames) -> None:
    """``--num-frames 0`` used to load the model and then fail every video sample."""
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tmp_path / "no-such-model"), *SYNTHETIC, "--num-frames", str(frames)]
    refused = runner.invoke(app, [*args, "--out", str(out), "-q"])
    assert refused.exit_code == 2, refused.output
    assert (
        f"num_frames must be a whole number >= 1 (frames decoded per video), got {frames}" in refused.output
    )
    assert "no-such-model" not in refused.output and not out.exists()
    with pytest.raises(vlmflow.VlmflowError, match=f"num_frames must be .*got {frames}"):
        vlmflow.Options(model="demo", data="synthetic:1", num_frames=frames)
    model = vlmflow.load(str(tiny_llava_path))
    sample = vlmflow.load_dataset("synthetic:1:fixed", tasks=["moving_direction"])[0]
    with pytest.raises(vlmflow.VlmflowError, match=f"num_frames must be .*got {frames}"):
        model.probe(sample, num_frames=frames)
    with pytest.raises(vlmflow.VlmflowError, match=f"num_frames must be .*got {frames}"):
        model.configured(num_frames=frames)


def test_reading_a_folder_that_is_no_run_is_an_error(tmp_path) -> None:
    with pytest.raises(vlmflow.VlmflowError, match=f"{tmp_path / 'typo'} is not a run folder"):
        vlmflow.RunDir(tmp_path / "typo").records()
    (tmp_path / "empty").mkdir()
    with pytest.raises(vlmflow.VlmflowError, match=r"empty is not a run folder \(no records/\)"):
        vlmflow.RunDir(tmp_path / "empty").records()


def test_unknown_sample_ids_are_refused_before_the_model_loads(tmp_path) -> None:
    """``sample_ids=['typo']`` used to run no sample and report ``{'records': 0}``."""
    out = tmp_path / "run"
    options = vlmflow.Options(
        model=str(tmp_path / "no-such-model"), data="synthetic:1:fixed", tasks=("moving_direction",)
    )
    with pytest.raises(vlmflow.VlmflowError) as refused:
        vlmflow.run(options, [], out, sample_ids=["moving_direction-00000", "typo", "moving_direction-9"])
    said = str(refused.value)
    assert (
        "2 sample id(s) not among the 1 selected samples of 'synthetic:1:fixed': 'typo', 'moving_direction-9'"
        in said
    )
    assert "known ids include 'moving_direction-00000'" in said
    assert not out.exists()


def test_max_batch_tokens_reaches_the_engine_and_changes_no_result(
    tiny_llava_path, tmp_path, monkeypatch
) -> None:
    """``--max-batch-tokens`` is what a run stopped out of memory is told to lower: it must
    reach every engine of the run, leave the records as they were and not be part of the
    configuration (the same folder resumes with it)."""
    from vlmflow.engine import Engine

    seen: list[int] = []
    init = Engine.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.max_batch_tokens)

    monkeypatch.setattr(Engine, "__init__", spy)
    curves = ["-t", "vql-to-ql", "--window", "1", "--sample-mode", "all"]
    plain = runner.invoke(app, flow(tiny_llava_path, tmp_path / "plain", *curves))
    assert plain.exit_code == 0, plain.output
    assert seen and min(seen) > 8
    seen.clear()
    small = runner.invoke(app, flow(tiny_llava_path, tmp_path / "small", *curves, "--max-batch-tokens", "8"))
    assert small.exit_code == 0, small.output
    assert seen and set(seen) == {8}
    a, b = (read_records(tmp_path / d).query("analysis == 'flow'") for d in ("plain", "small"))
    keys = ["sample_id", "condition", "layer"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    assert len(a) == 4 * 4 and (abs(a["p_pred_new"] - b["p_pred_new"]) < 1e-6).all()
    again = runner.invoke(app, flow(tiny_llava_path, tmp_path / "plain", *curves, "--max-batch-tokens", "8"))
    assert again.exit_code == 0 and "already done" in again.output + str(again.stderr_bytes or b""), (
        again.output
    )
    with pytest.raises(vlmflow.VlmflowError, match="max_batch_tokens must be >= 1"):
        vlmflow.Options(model="demo", data="synthetic:1", max_batch_tokens=0)


def test_a_resume_in_another_dtype_is_refused(tiny_llava_path, tmp_path) -> None:
    """An unset dtype resolves per device (float32 on a CPU, the checkpoint's on a GPU): the
    folder keeps the dtype its records were computed in and refuses a session loaded in
    another, instead of mixing float32 and bfloat16 records."""
    from vlmflow.analyses.answer_probability import AnswerProbability

    out = tmp_path / "run"
    options = vlmflow.Options(
        model=str(tiny_llava_path),
        data="synthetic:1:fixed",
        tasks=("moving_direction",),
        progress=False,
    )
    analyses = [AnswerProbability()]
    vlmflow.run(options, analyses, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["computed_in"] == {
        "dtype": "float32",
        "frame_policy": "segment_middle",
        "analysis_versions": {"answer-prob": 2},
    }
    before = read_records(out)
    bf16 = vlmflow.load(str(tiny_llava_path), dtype="bfloat16")  # what the same options load on a GPU
    with pytest.raises(
        vlmflow.VlmflowError, match=r"computed in float32, but this session loaded .* in bfloat16"
    ):
        vlmflow.run(options, analyses, out, model=bf16)
    assert read_records(out).equals(before)
    vlmflow.run(options, analyses, out, model=vlmflow.load(str(tiny_llava_path), dtype="float32"))


def test_the_loader_and_the_resume_check_read_one_table_of_dtype_aliases(monkeypatch) -> None:
    """``--dtype fp32`` loads as float32 and a folder started with it resumes as "float32":
    both read rundir's ``DTYPE_NAMES``, so an alias added there is known to both."""
    import torch

    from vlmflow import rundir
    from vlmflow.models.base import _dtype

    for alias, name in rundir.DTYPE_NAMES.items():
        assert _dtype(alias) is _dtype(name) is getattr(torch, name)
    monkeypatch.setitem(rundir.DTYPE_NAMES, "half", "float16")
    assert rundir.canonical_dtype("half") == "float16" and _dtype("half") is torch.float16


def test_a_dtype_alias_or_an_unset_dtype_that_resolves_alike_resumes(tiny_llava_path, tmp_path) -> None:
    """A folder started with dtype unset (float32 on a CPU) or "fp32" was refused
    "differs in: dtype" when resumed with "float32"; the configuration now stores the
    canonical name and leaves an unset dtype to the computed_in check (which refuses
    a session that loads another dtype, as above). A folder written by an older version,
    whose configuration holds "fp32" as given, resumes too."""
    from vlmflow.analyses.answer_probability import AnswerProbability

    model = vlmflow.load(str(tiny_llava_path))
    analyses = [AnswerProbability()]

    def options(dtype: str | None) -> vlmflow.Options:
        return vlmflow.Options(
            model=str(tiny_llava_path),
            data="synthetic:1:fixed",
            tasks=("moving_direction",),
            dtype=dtype,
            progress=False,
        )

    unset, alias, old = tmp_path / "unset", tmp_path / "alias", tmp_path / "old"
    vlmflow.run(options(None), analyses, unset, model=model)
    for dtype in ("float32", "fp32", None):
        assert vlmflow.run(options(dtype), analyses, unset, model=model).summary.skipped == 1
    vlmflow.run(options("fp32"), analyses, alias, model=model)
    assert json.loads((alias / "manifest.json").read_text())["config"]["dtype"] == "float32"
    assert vlmflow.run(options("float32"), analyses, alias, model=model).summary.skipped == 1
    vlmflow.run(options("float32"), analyses, old, model=model)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["config"]["dtype"] = "fp32"  # as versions before this one stored it
    (old / "manifest.json").write_text(json.dumps(manifest))
    for dtype in ("fp32", "float32"):
        assert vlmflow.run(options(dtype), analyses, old, model=model).summary.skipped == 1
    with pytest.raises(vlmflow.VlmflowError, match="differs in: dtype"):
        vlmflow.run(options("bf16"), analyses, old, model=model)  # two dtypes named: refused early


def test_a_run_refused_once_the_model_loads_leaves_no_new_folder(tiny_llava, tmp_path) -> None:
    """A run refused after the model loaded (layers the model lacks) left a new out folder
    holding only run.lock; a folder that existed before is kept."""
    from vlmflow.analyses.information_flow import InformationFlow
    from vlmflow.probe import Model

    options = vlmflow.Options(
        model="tiny", data="synthetic:1:fixed", tasks=("moving_direction",), progress=False
    )
    model = Model(tiny_llava)
    out = tmp_path / "new"
    with pytest.raises(vlmflow.VlmflowError, match="layers"):
        vlmflow.run(options, [InformationFlow(layers=(40,))], out, model=model)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(vlmflow.VlmflowError, match="layers"):
        vlmflow.run(options, [InformationFlow(layers=(40,))], kept, model=model)
    assert kept.is_dir()


def test_a_resume_that_processes_inputs_otherwise_is_refused(tiny_llava_path, tmp_path) -> None:
    """What the adapter does to the inputs beyond the options (its frame policy, a family's
    visual-token budget) is kept in ``computed_in``; a session that would process them
    otherwise (here: a folder whose frames were drawn with linspace) is refused, and a folder
    that never recorded it (an older one) records it."""
    from vlmflow.analyses.answer_probability import AnswerProbability

    out = tmp_path / "run"
    options = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("moving_direction",), progress=False
    )
    model = vlmflow.load(str(tiny_llava_path))
    vlmflow.run(options, [AnswerProbability()], out, model=model)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["computed_in"]["frame_policy"] = "linspace"
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        vlmflow.VlmflowError, match=r"processed otherwise \(frame_policy 'linspace' -> 'segment_middle'\)"
    ):
        vlmflow.run(options, [AnswerProbability()], out, model=model)
    # an older folder (of this version of answer-prob: see test_old_run_folders.py for older ones)
    manifest["computed_in"] = {"dtype": "float32", "analysis_versions": {"answer-prob": 2}}
    path.write_text(json.dumps(manifest))
    vlmflow.run(options, [AnswerProbability()], out, model=model)
    assert json.loads(path.read_text())["computed_in"]["frame_policy"] == "segment_middle"


@pytest.mark.parametrize(
    ("typo", "fix", "said"),
    [
        (["--prompt", "bogus"], ["--prompt", "chat"], "unknown prompt style 'bogus'; choose from paper"),
        (["--dtype", "fp33"], ["--dtype", "float32"], "unknown dtype 'fp33'"),
        (["--attn", "flash"], ["--attn", "eager"], "unknown attention implementation 'flash'"),
        (["--device", "gpu"], ["--device", "cpu"], "unknown device 'gpu'"),
        (["--model", "MODEL-typo"], ["--model", "MODEL"], "MODEL-typo"),
    ],
)
def test_a_typo_leaves_no_configuration_and_the_corrected_rerun_runs(
    tiny_llava_path, tmp_path, typo, fix, said
) -> None:
    """``eval --prompt bogus`` used to fail yet keep its manifest, so the corrected command
    was refused as "another configuration (differs in: prompt)"."""
    out = tmp_path / "e9"
    model = str(tiny_llava_path)

    def command(extra: list[str]) -> list[str]:
        extra = [x.replace("MODEL", model) for x in extra]
        base = ["eval", *SYNTHETIC, "--samples", "1", "--out", str(out), "-q"]
        return base + (extra if "--model" in extra else ["--model", model, *extra])

    refused = runner.invoke(app, command(typo))
    assert refused.exit_code == 2, refused.output
    assert said.replace("MODEL", model) in refused.output
    assert not (out / "manifest.json").exists()
    fixed = runner.invoke(app, command(fix))
    assert fixed.exit_code == 0, fixed.output
    assert "done: 1 samples, 0 failed" in fixed.output


@pytest.mark.parametrize("error", [vlmflow.VlmflowError("cannot load"), OSError("disk gone")])
def test_a_rerun_that_fails_before_its_first_sample_leaves_the_manifest_as_it_was(
    tiny_llava_path, tmp_path, monkeypatch, error
) -> None:
    out = tmp_path / "run"
    options = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("moving_direction",), progress=False
    )
    vlmflow.run(options, [], out)
    manifest = (out / "manifest.json").read_bytes()

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr("vlmflow.api.load", broken)
    with pytest.raises(type(error), match=str(error)):
        vlmflow.run(options, [], out)
    assert (out / "manifest.json").read_bytes() == manifest
    monkeypatch.undo()
    assert vlmflow.run(options, [], out).summary.skipped == 1  # the folder still resumes


def test_open_ended_targets_are_refused_by_flow_before_the_model_loads(tiny_llava_path, tmp_path) -> None:
    """``flow --target vqrl-to-qrl`` used to be accepted, then every sample failed with
    "token group 'non_last_response' is empty"; flow's unknown-target error listed it."""
    out = tmp_path / "run"
    missing = tmp_path / "no-such-model"
    refused = runner.invoke(app, flow(missing, out, "--target", "vqrl-to-qrl"))
    assert refused.exit_code == 2, refused.output
    assert "target 'vqrl-to-qrl' belongs to `open-ended`" in refused.output
    assert "no-such-model" not in refused.output and not out.exists()
    unknown = runner.invoke(app, flow(missing, out, "--target", "sideways"))
    assert "unknown target 'sideways'; choose from " in unknown.output
    assert "vq-to-true-opt" in unknown.output and "vqrl-to-qrl" not in unknown.output

    with pytest.raises(vlmflow.VlmflowError, match="belongs to `open-ended`"):
        vlmflow.InformationFlow(targets=("vqrl-to-qrl",))
    model = vlmflow.load(str(tiny_llava_path))
    sample = vlmflow.load_dataset("synthetic:1:fixed", tasks=["moving_direction"])[0]
    with pytest.raises(vlmflow.VlmflowError, match="belongs to `open-ended`"):
        model.probe(sample).sweep("vqrl-to-qrl", window=1)
    vlmflow.OpenEnded(targets=("vqrl-to-qrl",))  # open-ended's own target


def test_paper_preset_layers_beyond_the_model_say_where_they_come_from(tiny_llava_path, tmp_path) -> None:
    """``attention --paper`` on a small model said "error: --layers 10-19: ..." after loading,
    blaming a flag the user never typed."""

    def attention(out: str, *extra: str) -> list[str]:
        return ["attention", "--model", str(tiny_llava_path), *SYNTHETIC, "--samples", "1", "-q",
                "--out", str(tmp_path / out), *extra]  # fmt: skip

    preset = runner.invoke(app, attention("p", "--paper"))
    assert preset.exit_code == 2, preset.output
    assert "--layers 10-19: " in preset.output and "has 4 layers (0-3)" in preset.output
    assert "--layers 10-19 comes from --paper's preset" in preset.output
    assert "pass --layers to override it" in preset.output
    typed = runner.invoke(app, attention("t", "--layers", "10-19"))
    assert typed.exit_code == 2 and "preset" not in typed.output
    fixed = runner.invoke(app, attention("p", "--paper", "--layers", "0-3"))
    assert fixed.exit_code == 0, fixed.output


def test_run_takes_one_analysis_instance_and_refuses_a_class(tiny_llava_path, tmp_path) -> None:
    """``vlmflow.run(opts, [InformationFlow], out)`` used to fail with ``TypeError:
    Analysis.config() missing 'self'`` and ``run(opts, InformationFlow(), out)`` with 'not
    iterable'. One instance runs as a list of one; a class is refused, naming the fix,
    before the folder is touched."""
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.analyses.information_flow import InformationFlow

    options = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1:fixed", tasks=("moving_direction",)
    )
    cases = {
        "InformationFlow is a class; give InformationFlow()": ([InformationFlow], InformationFlow),
        "takes Analysis instances .*got str": (["flow"],),
    }
    for said, bads in cases.items():
        for bad in bads:
            with pytest.raises(vlmflow.VlmflowError, match=said):
                vlmflow.run(options, bad, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    result = vlmflow.run(options, AnswerProbability(sample_mode="all"), tmp_path / "one")
    assert result.summary.done == 1 and not result.summary.failed
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert list(manifest["config"]["analyses"]) == ["answer-prob"]


def test_resuming_with_another_analysis_option_names_the_option_and_both_values(tmp_path) -> None:
    """Resuming a ``flow --screen 2 --screen-control 2`` folder with ``--screen-control 5``
    was refused "differs in: analyses", naming no option; the message names each differing
    option of an analysis by its dotted path, the folder's value first."""
    from vlmflow.rundir import config_differences

    out = tmp_path / "run"
    args = ["flow", "--model", "tiny", "--data", "synthetic:1:fixed", "--task", "action_antonym"]
    args += ["--window", "3", "--layers", "0-1", "--sample-mode", "all", "-t", "cross-frame"]
    args += ["--screen", "2", "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the tiny model's estimates are far too small
        assert CliRunner().invoke(app, [*args, "--screen-control", "2"]).exit_code == 0
    refused = CliRunner().invoke(app, [*args, "--screen-control", "5"])
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "differs in: analyses (flow-screen.control: 2 vs 5)" in said, refused.output
    old = {"flow-screen": {"k": 2, "window": 3}, "flow": {}}
    new = {"flow-screen": {"k": 3, "ranking": "magnitude"}, "answer-prob": {}}
    assert config_differences(old, new) == [
        "answer-prob: only given now",
        "flow: only in the folder",
        "flow-screen.k: 2 vs 3",
        "flow-screen.ranking: only given now",
        "flow-screen.window: only in the folder",
    ]


def test_a_chosen_frame_policy_wins_over_the_benchmarks_and_is_recorded(tiny_llava_path, tmp_path) -> None:
    """LongVideoBench's samples carry the benchmark's policy (``lvb``); it used to win over
    the user's ``frame_policy`` (``configured(frame_policy=...)``, ``Options``), while the
    manifest recorded the adapter's policy (``segment_middle``) whichever was used. The
    user's choice wins, and the manifest, ``computed_in`` and every record say the policy
    the frames were sampled with."""
    from tests.data.benchfiles import lvb_item, video, which_frames, write_json
    from vlmflow.analyses.answer_probability import AnswerProbability
    from vlmflow.data import sample_indices

    root = tmp_path / "LongVideoBench"
    write_json(root / "lvb_val.json", [lvb_item(0, video_path="abc.mp4", duration=3.0)])
    video(root / "videos" / "abc.mp4", 24, fps=8)
    (sample,) = vlmflow.load_dataset(f"longvideobench:{root}")
    model = vlmflow.load(str(tiny_llava_path))
    lvb = [0, 8, 16, 16, 16, 16, 16, 16]  # the benchmark's start-aligned rule
    assert which_frames(model.configured().frames_of(sample), 24) == lvb
    chosen = model.configured(frame_policy="segment_middle")
    assert which_frames(chosen.frames_of(sample), 24) == sample_indices(24, 8) != lvb
    for policy, used in ((None, "lvb"), ("segment_middle", "segment_middle"), ("linspace", "linspace")):
        out = tmp_path / f"run-{policy}"
        options = vlmflow.Options(
            model=str(tiny_llava_path), data=f"longvideobench:{root}", frame_policy=policy, progress=False
        )
        vlmflow.run(options, [AnswerProbability()], out, model=model)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["frame_policy"] == manifest["computed_in"]["frame_policy"] == used, policy
        records = read_records(out)
        assert records["error"].isna().all() and (records["frame_policy"] == used).all(), policy
    # a resume compares the policy used: the folder that sampled with lvb resumes as it was
    vlmflow.run(
        vlmflow.Options(model=str(tiny_llava_path), data=f"longvideobench:{root}", progress=False),
        [AnswerProbability()],
        tmp_path / "run-None",
        model=model,
    )
