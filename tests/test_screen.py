"""Screen, then verify: estimates are labelled as such, verified plans carry the engine's
exact values, and ``vlmflow flow --screen K`` writes both kinds of records and the heat maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from vlmflow.analyses.targets import PAPER_TARGETS, sweep, target_curves
from vlmflow.cli import app
from vlmflow.data import write_video
from vlmflow.engine import Engine
from vlmflow.screen import screen_then_verify, spearman, top_k
from vlmflow.store import read_records


def suite(engine: Engine, layout) -> list:
    return [
        p.plan
        for _t, name, e in target_curves(PAPER_TARGETS, layout)
        for p in sweep([(name, e)], engine.lm.num_layers, window=1)
    ]


def test_verified_plans_carry_the_engines_exact_values(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    engine = Engine(tiny_llava.language_model(), prepared.inputs, prepared.layout)
    plans = suite(engine, prepared.layout)
    s = screen_then_verify(engine, plans, 5, control=4, seed=1)
    top = [p for p in s.plans if p.verified_as == "top"]
    ctrl = s.verified("control")
    assert len(top) == 5 and len(ctrl) == 4 and len(s.verified()) == 9
    estimates = np.array([p.estimate for p in s.plans])
    assert {p.plan.name for p in top} == {plans[i].name for i in top_k(estimates, 5)}
    base = engine.baseline_logits().log_softmax(-1)
    token = int(base.argmax())
    for p in s.verified():
        want = float(engine.evaluate([p.plan])[0].log_softmax(-1)[token] - base[token])
        assert p.method == "exact" and abs(p.exact - want) < 1e-5
    assert all(p.method == "estimate" and p.exact is None for p in s.plans if p.verified_as is None)
    summary = s.summary()
    assert summary["verified"] == 9 and -1.0 <= summary["spearman_verified"] <= 1.0


def test_a_fused_screen_screens_and_verifies_as_the_plain_one(tiny_llava, sample) -> None:
    """With ``fused=True`` the fresh engine's baseline forward is the attribution's forward:
    the same top K, control sample, estimates and exact values as a screen over an engine
    that ran its baseline first; the same under a memory bound that keeps only the top
    layer's graph."""
    prepared = tiny_llava.prepare(sample)
    lm = tiny_llava.language_model()
    plain, fused, bounded = (Engine(lm, prepared.inputs, prepared.layout) for _ in range(3))
    plans = suite(plain, prepared.layout)
    a = screen_then_verify(plain, plans, 5, control=4, seed=1)
    for engine, budget in ((fused, None), (bounded, 0.0)):
        b = screen_then_verify(engine, plans, 5, control=4, seed=1, fused=True, max_graph_mb=budget)
        assert len(b.attribution.graph_layers) == (lm.num_layers if budget is None else 1)
        assert [p.verified_as for p in a.plans] == [p.verified_as for p in b.plans]
        est_a, est_b = (np.array([p.estimate for p in s.plans]) for s in (a, b))
        assert np.abs(est_a - est_b).max() < 1e-6 and np.abs(est_a).max() > 1e-4
        assert [p.exact for p in a.plans] == [p.exact for p in b.plans]


def test_cheap_plans_are_evaluated_exactly(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    engine = Engine(tiny_llava.language_model(), prepared.inputs, prepared.layout)
    plans = suite(engine, prepared.layout)
    s = screen_then_verify(engine, plans, 3, control=0, exact_below=2.0)  # every plan is cheap
    assert all(p.verified_as == "cheap" and p.method == "exact" for p in s.plans)


def test_spearman_matches_the_definition() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman([1, 2], [5, 3]))  # two points rank perfectly whatever they are
    assert abs(spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) - 0.8) < 1e-12


def test_flow_screen_writes_estimates_exact_rows_and_head_maps(tiny_llava_path, tmp_path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        write_video(tmp_path / f"v{i}.mp4", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), fps=4)
        q = {"id": f"q{i}", "video": f"v{i}.mp4", "question": "Which way does it move?"}
        lines.append(q | {"options": ["left", "right", "up", "down"], "answer": i, "task": "dir"})
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "run"
    args = ["flow", "--model", str(tiny_llava_path), "--data", f"jsonl:{tmp_path / 'qa.jsonl'}"]
    args += [
        "--num-frames",
        "4",
        "--window",
        "1",
        "--sample-mode",
        "all",
        "-t",
        "vql-to-ql",
        "-t",
        "cross-frame",
    ]
    result = CliRunner().invoke(app, [*args, "--screen", "3", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    df = read_records(out)
    rows = df[(df["analysis"] == "flow-screen") & df["error"].isna()]
    pairs = rows[rows["kind"] == "frame_pair"]  # every (layer, frame a -> frame b), from the same pass
    assert len(pairs) == 2 * 4 * 6 and (pairs["method"] == "estimate").all()
    assert (pairs["src_frame"] < pairs["dst_frame"]).all()
    assert any(p.name.startswith("frame-pairs") for p in (out / "figures").iterdir())
    rows = rows[rows["target"] != "cross-frame"]  # the rest: the vql-to-ql curves
    plans = rows[rows["kind"] == "plan"]
    estimated = plans[plans["method"] == "estimate"]
    exact = plans[plans["method"] == "exact"]
    assert len(estimated) == 2 * 4 * 4  # 2 samples x 4 curves x 4 layers, every plan estimated
    # cuts into the last token are cheap (exact up front); video->question: top 3 + 1 control
    assert len(exact) == len(estimated)
    assert set(exact[exact["condition"] == "video->question"]["verified_as"]) == {"top", "control"}
    assert set(exact["verified_as"]) <= {"top", "control", "cheap"}
    assert exact["rel_pred_estimate"].notna().all() and exact["correct_new"].notna().all()
    maps = rows[rows["kind"] == "head_map"]
    assert set(maps["pair"]) == {"video->question", "video->last", "question->last", "last->last"}
    assert len(maps) == 2 * 4 * 4 * 4  # samples x pairs x layers x heads
    assert (rows["kind"] == "screen").sum() == 2
    assert any(p.name.startswith("head-map-") for p in (out / "figures").iterdir())
    assert (
        "Attribution per layer x head: video-&gt;last (mean over 2 samples)"
        in (out / "report.html").read_text()
    )
    agreement = pd.read_csv(out / "summary" / "flow-screen-agreement.csv")
    assert "spearman_verified" in agreement.columns


def test_a_k_beyond_the_plans_verifies_them_all_and_says_so(tiny_llava, sample) -> None:
    prepared = tiny_llava.prepare(sample)
    engine = Engine(tiny_llava.language_model(), prepared.inputs, prepared.layout)
    plans = suite(engine, prepared.layout)[:6]
    s = screen_then_verify(engine, plans, 100, control=3)
    summary = s.summary()
    assert summary["k"] == 100 and summary["top"] == 6 == summary["verified"] and summary["control"] == 0
    assert np.isnan(summary["spearman_control"])


def test_a_sweep_into_frame_ranges_carries_the_frame_pair_map() -> None:
    from vlmflow.analyses.screened_flow import cuts_into_frames

    assert (
        cuts_into_frames(["frame:3"]) and cuts_into_frames(["frames:1-3"]) and cuts_into_frames(["frames:<4"])
    )
    assert not cuts_into_frames(["video", "last", "question"])


def _screened(layer: int, estimate: float, exact: float | None, kind: str | None):
    from vlmflow.cuts import Cut, Plan
    from vlmflow.screen import ScreenedPlan

    return ScreenedPlan(Plan("video->last", (Cut("video", "last", (layer,)),)), estimate, exact, kind)


def test_a_screen_says_when_the_control_sample_finds_what_the_estimates_missed() -> None:
    """The README's screen on the demo: the top 3 were ~0% plans, the control sample hit a
    -100% plan estimated at +0.004%, and the summary said nothing but spearman -0.3. The
    summary counts such misses and contradictions, and says them in words."""
    from vlmflow.screen import Screen

    plans = [
        _screened(0, -2e-6, -1e-6, "top"),  # the estimates' favourites: nothing happens
        _screened(1, -1e-6, 2e-6, "top"),
        _screened(2, 4e-5, -12.0, "control"),  # -100%: a false negative the control found
        _screened(3, 1e-6, 1e-6, "control"),  # agrees
        _screened(4, 3e-5, None, None),
    ]
    screen = Screen(plans, None, 2, "drop")
    summary = screen.summary()
    assert summary["missed_control"] == 1 and summary["contradicted"] == 1 == summary["underestimated"]
    assert 99.9 < summary["max_error_pct"] < 100.1  # percentage points of p(answer)
    said = screen.warnings("sample 'x'")
    assert len(said) == 2 and all(s.startswith("sample 'x': ") for s in said)
    assert "missed 1 of 2 control plans" in said[0] and "video->last in layers 2: exact -100%" in said[0]
    assert "1 of 4 verified plans have an exact effect over 10x" in said[1]
    assert "1 of them contradict their estimates (other sign)" in said[1]
    # a screen whose verified plans agree with their estimates says nothing
    fine = Screen(
        [
            _screened(0, -2.0, -2.5, "top"),
            _screened(1, -1.0, -1.2, "top"),
            _screened(2, -0.5, -0.4, "control"),
            _screened(3, 0.002, -0.003, "control"),  # below NOTABLE: noise, not a contradiction
        ],
        None,
        2,
        "drop",
    )
    assert fine.warnings() == [] and fine.summary()["missed_control"] == 0 == fine.summary()["contradicted"]


def test_a_screen_for_drops_misses_only_larger_drops() -> None:
    """Under the default order="drop" the top K are the largest estimated drops, so a
    control plan that raises p is no miss (the demo's object_count-00010 of synthetic:12,
    vql-to-ql at layers 20-23, k=3, control=2: video->question@20, exact +1.5% and estimated
    +1.51%, was said to be missed). A control plan that drops p more than the top K's least
    drop is a miss; under order="magnitude" the raising plan is one."""
    from vlmflow.screen import Screen

    plans = [
        _screened(0, -0.006, -0.005, "top"),  # the top 2 by estimated drop: small drops
        _screened(1, -0.004, -0.003, "top"),
        _screened(2, 0.015, 0.015, "control"),  # raises p by 1.5%, as estimated
    ]
    drop = Screen(plans, None, 2, "drop")
    assert drop.missed() == [] and drop.summary()["missed_control"] == 0 and drop.warnings() == []
    assert Screen(plans, None, 2, "magnitude").summary()["missed_control"] == 1

    falls = [*plans, _screened(3, 0.001, -0.5, "control"), _screened(4, -0.001, -0.02, "control")]
    screen = Screen(falls, None, 2, "drop")
    assert [p.plan.layers for p in screen.missed()] == [(3,), (4,)]  # -39% and -2%: larger drops
    (said, _) = screen.warnings()  # the -39% plan is also contradicted (estimated +0.1%)
    assert "missed 2 of 3 control plans: their exact drop is larger than the top 2's" in said
    assert "worst: video->last in layers 3: exact -39.3%" in said


def test_a_screen_judges_its_verified_top_k_by_their_exact_values_only() -> None:
    """The top K are verified: estimates that overstate them (est -40%, exact -2%) or have
    the wrong sign (est -20%, exact +50%) must not hide a control plan's larger exact drop
    (-26%, -14%) behind the top K's estimate."""
    import math

    from vlmflow.screen import Screen

    lp = lambda pct: math.log1p(pct / 100)  # noqa: E731  % change -> change of log p
    overstated = [
        _screened(1, lp(-40), lp(-2), "top"),
        _screened(2, lp(-39), lp(-1.5), "top"),
        _screened(3, lp(-5), lp(-26), "control"),
        _screened(4, lp(-1), None, None),
    ]
    for order in ("drop", "magnitude"):
        assert [p.plan.layers for p in Screen(overstated, None, 2, order).missed()] == [(3,)]
    wrong_sign = [_screened(1, lp(-20), lp(50), "top"), _screened(3, lp(-2), lp(-14), "control")]
    screen = Screen(wrong_sign, None, 1, "drop")
    assert [p.plan.layers for p in screen.missed()] == [(3,)]
    assert "missed 1 of 1 control plans" in screen.warnings()[0]
    assert Screen(wrong_sign, None, 1, "magnitude").missed() == []  # |+50%| beats |-14%|


def test_probe_screen_and_flow_screen_warn_when_estimates_are_contradicted(
    tiny_llava, tiny_llava_path, tmp_path, monkeypatch
) -> None:
    """Estimates that say nothing happens (+1e-6 for every plan) against the engine's exact
    values: probe.screen warns, and so does the flow --screen analysis and its report."""
    import pytest

    import vlmflow
    from tests.fixtures.tiny import make_sample
    from vlmflow.attribution import Attribution

    monkeypatch.setattr(Attribution, "estimates", lambda self, plans, **kw: np.full(len(plans), 1e-6))
    probe = vlmflow.Model(tiny_llava).probe(make_sample(seed=5))
    exact = probe.sweep("vql-to-ql", window=1)
    assert (exact["rel_pred"].abs() >= 1.01).any()  # some plan changes p(answer) by > 1%
    with pytest.warns(UserWarning, match="contradict their estimates") as said:
        df = probe.screen("vql-to-ql", k=1, control=len(exact) - 1, window=1, exact_below=0.0)
    assert df.attrs["screen"]["contradicted"] > 0 and df.attrs["screen"]["max_error_pct"] > 1
    top = df[df["verified_as"] == "top"]  # by estimated drop (order="drop"): a miss is a larger drop
    control = df[df["verified_as"] == "control"]["rel_pred"]
    ceiling = min(top["rel_pred"].max(), top["rel_pred_estimate"].max(), 100 * np.expm1(-0.01))  # NOTABLE
    missed = int((control < ceiling).sum())
    assert df.attrs["screen"]["missed_control"] == missed
    assert any("estimates missed" in str(w.message) for w in said) == (missed > 0)
    assert (df["method"] == "exact").sum() == len(exact)  # the records' semantics unchanged

    out = tmp_path / "run"
    args = ["flow", "--model", str(tiny_llava_path), "--data", "synthetic:1:fixed"]
    args += ["--task", "moving_direction", "--window", "1", "--sample-mode", "all"]
    args += ["-t", "vql-to-ql", "--screen", "1"]
    args += ["--screen-control", "30", "--screen-exact-below", "0", "--out", str(out), "--quiet"]
    with pytest.warns(UserWarning, match="sample '.*'.*contradict their estimates"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.html").read_text()
    assert "WARNING: the estimates are contradicted by the exact knockouts" in report
    rows = read_records(out)
    screens = rows[(rows["analysis"] == "flow-screen") & (rows["kind"] == "screen")]
    assert (screens["contradicted"] > 0).all() and "missed_control" in screens


def test_a_screen_says_when_its_estimates_are_far_too_small_even_of_the_right_sign() -> None:
    """The demo's scene_transition sample: five verified plans at -99.99999% exactly,
    estimated at -0.06%; right sign, so nothing was contradicted, nothing missed and no
    warning came, though every row left as an estimate was as wrong. Now ``underestimated``
    counts them (``contradicted`` stays the other-sign subset) and the screen says so."""
    from vlmflow.screen import Screen

    plans = [
        _screened(0, -6e-4, -16.0, "top"),  # -99.99999% estimated at -0.06%
        _screened(1, -5e-4, -14.0, "top"),
        _screened(2, 4e-4, -0.5, "control"),  # the other sign, too: underestimated and contradicted
        _screened(3, -1e-4, -0.004, "control"),  # over 10x, but below NOTABLE: noise
        _screened(4, -3e-4, None, None),
        _screened(5, -2e-4, None, None),
    ]
    screen = Screen(plans, None, 2, "drop")
    summary = screen.summary()
    assert summary["underestimated"] == 3 and summary["contradicted"] == 1 and summary["missed_control"] == 0
    (said,) = screen.warnings("sample 'x'")
    assert said.startswith("sample 'x': 3 of 4 verified plans have an exact effect over 10x their estimate")
    assert "worst: video->last in layers 0: exact -100% vs estimated -0.06%" in said
    assert "1 of them contradict their estimates" in said
    assert "the 2 plans left as estimates are unreliable too" in said and "probe.sweep" in said


def test_probe_screen_and_flow_screen_warn_when_estimates_are_far_too_small(tmp_path) -> None:
    """The embedded tiny model, window 3: the cross-frame knockouts at layers 1-2 drop
    p(answer) by over 99% exactly, estimated at -0.14% and -0.16%. The screen's top 2 are
    right, yet the estimates 600x too small; probe.screen, flow --screen and the report
    say so."""
    import pytest

    import vlmflow

    probe = vlmflow.load("tiny").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    with pytest.warns(UserWarning, match="2 of 2 verified plans have an exact effect over 10x") as said:
        df = probe.screen("cross-frame", k=2, control=0, window=3)
    assert len(said) == 1 and "plans left as estimates are unreliable too" in str(said[0].message)
    summary = df.attrs["screen"]
    assert summary["underestimated"] == 2 and summary["contradicted"] == 0 == summary["missed_control"]
    exact = df[df["method"] == "exact"]
    assert sorted(exact["layer"]) == [0, 1] and (exact["rel_pred"] < -99).all()
    assert (exact["rel_pred_estimate"].abs() < 0.2).all()

    out = tmp_path / "run"
    args = ["flow", "--model", "tiny", "--data", "synthetic:1:fixed", "--task", "action_antonym"]
    args += ["--window", "3", "--sample-mode", "all", "-t", "cross-frame", "--screen", "2"]
    args += ["--screen-control", "0", "--out", str(out), "--quiet"]
    with pytest.warns(UserWarning, match="sample '.*': 2 of 2 verified plans have an exact effect over 10x"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_records(out)
    screens = rows[(rows["analysis"] == "flow-screen") & (rows["kind"] == "screen")]
    assert screens["underestimated"].tolist() == [2] and screens["contradicted"].tolist() == [0]
    report = (out / "report.html").read_text()
    assert "WARNING: the estimates are contradicted by the exact knockouts" in report
    assert "rows left as estimates for those samples are unreliable too" in report


def test_the_reports_screen_warning_counts_underestimates_and_reads_old_folders() -> None:
    from vlmflow.analyses.screened_flow import screen_warning

    fine = pd.DataFrame({"missed_control": [0, 0], "underestimated": [0, 0], "contradicted": [0, 0]})
    assert screen_warning(fine) == ""
    under = fine.assign(underestimated=[0, 3], max_error_pct=[0.1, 99.9])
    said = screen_warning(under)
    assert "in 1 of 2 samples verified plans have exact effects over 10x their estimates" in said
    assert "(underestimated)" in said and "99.9 percentage points" in said
    # a folder from before `underestimated`: its contradicted plans (a subset) still warn
    old = pd.DataFrame({"missed_control": [0], "contradicted": [1], "max_error_pct": [50.0]})
    assert "(underestimated; in 1 of them some of the other sign: contradicted)" in screen_warning(old)
    assert screen_warning(pd.DataFrame({"max_error_pct": [99.0]})) == ""  # from before either count


def test_plans_that_block_the_same_are_screened_once_and_share_the_exact_value(tmp_path) -> None:
    """The embedded tiny model has 8 layers: a window of 11 blocks layers 0-7 at sweep points
    2-5 (a window of 20 at all 8). Those are one plan: ranked, drawn and verified once,
    every copy carrying the exact value; before, one copy was verified at -99% and the next
    left as a -0.008% estimate, every verification spent on the same plan."""
    import vlmflow

    probe = vlmflow.load("tiny").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    evaluated: list[int] = []
    evaluate = probe.engine.evaluate
    probe.engine.evaluate = lambda plans, **kw: evaluated.append(len(plans)) or evaluate(plans, **kw)
    try:
        same = probe.screen("cross-frame", k=2, control=2, window=20)
        assert evaluated == [1] and (same["method"] == "exact").all() and (same["verified_as"] == "top").all()
        assert same["rel_pred"].nunique() == 1 and same["rel_pred"].iloc[0] < -99
        assert same.attrs["screen"]["plans"] == 1 == same.attrs["screen"]["verified"]
        assert same.attrs["screen"]["rows"] == 8

        df = probe.screen("cross-frame", k=2, control=1, window=11)
    finally:
        del probe.engine.evaluate
    assert evaluated[1:] == [3]  # 5 distinct plans: the top 2 and 1 control, each once
    summary = df.attrs["screen"]
    assert summary["plans"] == 5 and summary["rows"] == 8 and summary["verified"] == 3
    assert summary["top"] == 2 and summary["control"] == 1 and np.isfinite(summary["spearman_verified"])
    key = df["blocked_layers"].map(tuple)
    assert (key.iloc[2:6] == tuple(range(8))).all() and key.nunique() == 5
    for _, copies in df.groupby(key):  # every copy of a plan says the same
        assert copies[["method", "rel_pred"]].nunique().max() == 1
        assert copies["verified_as"].nunique(dropna=False) == 1
    assert key[df["method"] == "exact"].nunique() == 3

    out = tmp_path / "run"
    args = ["flow", "--model", "tiny", "--data", "synthetic:1:fixed", "--task", "action_antonym"]
    args += ["--window", "11", "--sample-mode", "all", "-t", "cross-frame"]
    args += ["--screen", "2", "--screen-control", "1", "--out", str(out), "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    rows = read_records(out)
    rows = rows[rows["analysis"] == "flow-screen"]
    plans = rows[rows["kind"] == "plan"]
    exact = plans[plans["method"] == "exact"].sort_values("layer")
    want = df[df["method"] == "exact"].sort_values("layer")
    assert exact["layer"].tolist() == want["layer"].tolist()
    assert (
        np.allclose(exact["rel_pred"], want["rel_pred"])
        and exact["verified_as"].tolist() == want["verified_as"].tolist()
    )
    screen = rows[rows["kind"] == "screen"].iloc[0]
    assert screen["plans"] == 5 and screen["rows"] == 8 and screen["verified"] == 3


def test_head_maps_label_heads_with_integers_and_say_they_are_means_over_samples() -> None:
    """With 9 heads matplotlib's own ticks were 0.0, 2.5, 5.0, 7.5: heads are labelled with
    their integer index (0-based, as the records and Cut(heads=...)), at most 16 labels;
    layers 1-based as in the rest of the report; the title says the mean over how many
    samples."""
    from vlmflow.analyses.screened_flow import _mean_over, head_map_figure
    from vlmflow.report.figures import pyplot

    records = pd.DataFrame(
        [
            {"sample_id": s, "layer": layer, "head": h, "rel_pred": 0.1 * h - layer}
            for s in "ab"
            for layer in range(3)
            for h in range(9)
        ]
    )
    grid = records.groupby(["layer", "head"])["rel_pred"].mean().unstack("head").sort_index()
    fig = head_map_figure(grid, f"video->last (t), {_mean_over(records)}")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(h) for h in range(9)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3"]
    assert ax.get_title() == "video->last (t), mean over 2 samples"
    assert ax.get_xlabel() == "head (from 0)" and ax.get_ylabel() == "layer (from 1)"
    pyplot().close(fig)
    wide = pd.DataFrame(np.zeros((2, 32)), columns=range(32))
    fig = head_map_figure(wide, "32 heads")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [str(h) for h in range(0, 32, 2)]
    pyplot().close(fig)
    assert _mean_over(records[records["sample_id"] == "a"]) == "mean over 1 sample"


def test_flow_screen_warns_once_a_run_not_once_a_sample(tmp_path) -> None:
    """On an input where first-order estimates are poor every sample trips the warning; a
    run of thousands of samples printed one warning each. Now the first says it (and that
    the report counts them all), every sample's record still counts its own."""
    import warnings

    from typer.testing import CliRunner

    from vlmflow.cli import app
    from vlmflow.store import read_records

    out = tmp_path / "run"
    args = ["flow", "--model", "tiny", "--data", "synthetic:2:fixed", "--task", "action_antonym"]
    args += ["--window", "3", "--sample-mode", "all", "-t", "cross-frame", "--screen", "2"]
    args += ["--screen-control", "0", "--out", str(out), "--quiet"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_records(out)
    screens = rows[(rows["analysis"] == "flow-screen") & (rows["kind"] == "screen")]
    assert len(screens) == 2 and (screens["underestimated"] > 0).all()
    ours = [w for w in said if "verified plans have an exact effect" in str(w.message)]
    assert len(ours) == 1 and "first such sample only" in str(ours[0].message)


def test_flow_screen_under_warnings_as_errors_keeps_the_samples_result(tmp_path, monkeypatch) -> None:
    """``python -W error flow --screen``: the screen's warning that its estimates are far too
    small was raised inside the sample's flow-screen unit, so the unit was stored as failed
    ('UserWarning: sample ...') and its computed records lost. Now it is said after the
    sample's units are stored (printed, as a filter making it an error asks to stop nothing)."""
    import warnings

    out = tmp_path / "run"
    args = ["flow", "--model", "tiny", "--data", "synthetic:1:fixed", "--task", "action_antonym"]
    args += ["--window", "3", "--sample-mode", "all", "-t", "cross-frame", "--screen", "2"]
    args += ["--screen-control", "0", "--out", str(out), "--quiet"]
    said: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: said.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [m for m in said if "2 of 2 verified plans have an exact effect over 10x" in m]
    rows = read_records(out)
    screen = rows[rows["analysis"] == "flow-screen"]
    assert screen["error"].isna().all(), screen["error"].dropna().tolist()
    assert screen[screen["kind"] == "screen"]["underestimated"].tolist() == [2]


def test_a_screen_of_nothing_names_the_python_option() -> None:
    """``probe.screen(target=[])`` said 'give a target or a --cut', a CLI flag the Python
    call has no way to pass; it names ``custom=`` too."""
    import pytest

    import vlmflow
    from vlmflow.errors import PlanError

    probe = vlmflow.load("tiny").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    said = r"nothing to sweep: give a target or a custom 'SRC->DST' curve \(custom="
    for call in (probe.screen, probe.sweep):
        with pytest.raises(PlanError, match=said):
            call([])


def test_an_estimate_of_zero_is_underestimated_not_contradicted() -> None:
    """A verified plan estimated at exactly 0 (the gradient vanished) and -99% exactly was
    counted as contradicted, 'other sign', though 0 has none; it is underestimated only."""
    from vlmflow.screen import Screen

    screen = Screen([_screened(0, 0.0, -5.0, "top"), _screened(1, 1e-3, -5.0, "top")], None, 2, "drop")
    summary = screen.summary()
    assert summary["underestimated"] == 2 and summary["contradicted"] == 1
    (said,) = screen.warnings()
    assert "1 of them contradict their estimates (other sign)" in said


def test_a_near_certain_answer_s_exact_changes_are_resolved_and_ranked_only_when_resolved() -> None:
    """Review: on the demo's synthetic:1 sample (p(answer) = 1 - 1.2e-5, top logit 38) the
    verified changes of log p were float32 log_softmax differences, all 0.0 here, and the
    rank agreement was computed over ties; the knockout's p(answer) read the same as the
    baseline's. Both are read in float64 now: distinct, non-zero changes that agree with the
    estimates. Changes within the logits' rounding (``resolution``) are left out of the
    ranks and counted (``unresolved``)."""
    import vlmflow
    from vlmflow.cuts import Cut, Plan

    probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1")[0])
    engine = probe.engine
    plans = [Plan(f"h{h}", (Cut("video", "last", (20,), heads=(h,)),)) for h in range(engine.lm.num_heads)]
    base = engine.baseline_logits()
    token = int(base.argmax())
    f32 = [float(lg.log_softmax(-1)[token] - base.log_softmax(-1)[token]) for lg in engine.evaluate(plans)]
    assert f32 == [0.0] * len(plans)  # the case: float32 sees none of these knockouts

    s = screen_then_verify(engine, plans, len(plans), control=0)
    exact = np.array([p.exact for p in s.plans])
    assert (exact != 0).all() and len(set(exact)) == len(exact)
    assert 1e-10 < s.resolution < 1e-9  # 4 x float32 eps x 38 x (1 - p)
    resolved = np.abs(exact) > s.resolution
    summary = s.summary()
    assert summary["resolution"] == s.resolution
    assert summary["unresolved"] == int((~resolved).sum()) == len(s.unresolved()) > 0
    assert summary["unresolved_control"] == 0
    estimates = np.array([p.estimate for p in s.plans])
    assert summary["spearman_verified"] == spearman(estimates[resolved], exact[resolved]) > 0.9
    worst = int(np.argmin(exact))  # h2: -5.2e-8, estimated -5.1e-8
    assert abs(exact[worst] - estimates[worst]) < 0.1 * abs(exact[worst])
    knocked = probe.knockout(plans[worst])
    assert knocked.p_pred < probe.base.p_pred  # float32 read both as 0.99998796
    assert np.isclose(knocked.p_pred / probe.base.p_pred - 1, np.expm1(exact[worst]), rtol=1e-3)


def test_exact_changes_within_the_resolution_are_left_out_of_the_ranks_and_counted() -> None:
    from vlmflow.screen import Screen

    plans = [
        _screened(0, -3.0, -2.0, "top"),
        _screened(1, -2.0, -1.0, "top"),
        _screened(2, -1.0, -0.5, "control"),
        _screened(3, 5.0, 0.0, "control"),  # an exact zero: unresolved, not a rank
        _screened(4, -4.0, 1e-9, "control"),  # within the resolution: rounding
    ]
    screen = Screen(plans, None, 2, "drop", resolution=1e-8)
    summary = screen.summary()
    assert summary["unresolved"] == 2 == summary["unresolved_control"] and summary["verified"] == 5
    assert summary["spearman_verified"] == 1.0 and np.isnan(summary["spearman_control"])
    assert "resolution=1e-08" in repr(screen)
    assert Screen(plans, None, 2, "drop").summary()["unresolved"] == 1  # the zero, at resolution 0


def test_probe_screen_marks_unverified_rows_verified_as_nan_whatever_was_verified() -> None:
    """``verified_as`` on the rows left as estimates was NaN when some plan was verified
    (pandas' string column) and None when none was; it is NaN (as ``pred_new`` and the
    other columns only an exact row fills) either way."""
    import warnings

    import vlmflow

    probe = vlmflow.load("tiny").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    for k, control in ((1, 1), (0, 0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            df = probe.screen("cross-frame", k=k, control=control, window=3, exact_below=0.0)
        unverified = df[df["method"] == "estimate"]["verified_as"].tolist()
        assert len(unverified) == len(df) - k - control
        assert all(isinstance(v, float) and np.isnan(v) for v in unverified), (k, unverified)
        assert sorted(df[df["method"] == "exact"]["verified_as"]) == ["control"] * control + ["top"] * k
