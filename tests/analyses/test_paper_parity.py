"""Paper parity (issue 13): each statistic that the paper's released code computes is
checked against an independent computation on a small fixture, hand-counted where the
issue asks for it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fixtures.catalog import FAMILIES
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.answer_probability import AnswerProbability, summarize_answer_prob
from vlmflow.analyses.base import Baseline, read_answer
from vlmflow.analyses.information_flow import summarize_flow, task_sample_counts
from vlmflow.analyses.logit_lens import keyword_frequency
from vlmflow.analyses.pathways import PRESETS, Pathways, pathway_plans, summarize_pathways
from vlmflow.cuts import Plan, RandomCut, compile_plan
from vlmflow.engine import Engine
from vlmflow.errors import PlanError
from vlmflow.probe import Model, Probe
from vlmflow.report import accuracy_table


# ---------------------------------------------------------------- 2. answer probability
@pytest.fixture(scope="module")
def demo():
    from vlmflow.models import load_model

    return load_model("tiny")


def test_answer_prob_defaults_to_correct_samples_as_the_paper_figure(demo) -> None:
    """The mean per-layer probability of the true letter over the correctly answered samples,
    computed from the model's own ``output_hidden_states`` (HF's last entry is already normed),
    equals vlmflow's default summary; wrong samples contribute nothing. (Every other sample's
    answer is moved to another option, so the fixture holds both kinds.)"""
    from vlmflow.data import synthetic

    adapter = demo
    analysis = AnswerProbability()
    assert analysis.sample_mode == "correct"
    rows, want, seen = [], [], {True: 0, False: 0}
    for i, sample in enumerate(synthetic.generate(1, seed=3, option_order="fixed")):
        if i % 2:
            sample = dataclasses.replace(sample, answer=(sample.answer + 1) % len(sample.options))
        prepared = adapter.prepare(sample)
        engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
        got = analysis.records(Probe(adapter, prepared))
        with torch.inference_mode():
            out = adapter.model(**prepared.inputs, output_hidden_states=True)
        correct = int(out.logits[0, -1].argmax()) == prepared.answer_id
        seen[correct] += 1
        assert bool(got) == correct
        if correct:
            lm, hs, n = engine.lm, out.hidden_states, engine.lm.num_layers
            with torch.inference_mode():
                states = [lm.norm(hs[i + 1][0, -1]) for i in range(n - 1)] + [hs[n][0, -1]]
                want.append([float(lm.lm_head(h).float().softmax(-1)[prepared.answer_id]) for h in states])
            rows += [{**r, "task": "toy", "analysis": "answer-prob", "error": None} for r in got]
    assert seen[True] >= 1 and seen[False] >= 1, seen  # the fixture must hold both kinds
    summary = summarize_answer_prob(pd.DataFrame(rows)).sort_values("layer")
    assert summary["p_true"].to_numpy() == pytest.approx(np.mean(want, axis=0), abs=1e-5)
    assert (summary["n"] == seen[True]).all()


def test_answer_prob_ranks_options_whose_probabilities_underflow_float32(demo) -> None:
    """With sharp logits every option letter's probability underflows float32 at some
    layers (all options read 0, a tie the rank gave to the true letter, so ``top1_rate``
    read 1.0). The probabilities are read in float64 log space, and a tie counts against
    the true letter: the rank is the number of options scoring at least as high."""
    from vlmflow.analyses.answer_probability import true_rank

    assert true_rank([0.0, 0.0, 0.0], 1) == 3 and true_rank([0.1, 0.5, 0.1], 0) == 3
    assert true_rank([0.1, 0.5, 0.2], 1) == 1
    adapter = demo
    prepared = adapter.prepare(make_sample(seed=1, answer=0))  # "C" leads among the options
    head = adapter.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.mul_(300.0)
        rows = AnswerProbability(sample_mode="all").records(Probe(adapter, prepared))
        engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
        lm, ids, answer = engine.lm, list(prepared.option_ids), prepared.sample.answer
        with torch.inference_mode():
            hs = [engine.hidden_states[layer + 1][0, -1] for layer in range(lm.num_layers)]
            logits = [lm.lm_head(lm.norm(h)).double() for h in hs]
    finally:
        with torch.no_grad():
            head.copy_(saved)
    underflow = 0
    for r, z in zip(rows, logits, strict=True):
        logp = z.log_softmax(-1)[ids]
        underflow += bool((z.float().softmax(-1)[ids] == 0).all())
        assert r["true_rank"] == int((logp >= logp[answer]).sum())
        assert r["p_true"] == pytest.approx(float(logp[answer].exp()), rel=1e-6, abs=1e-300)
    assert underflow >= 1  # the fixture holds the case
    assert any(r["true_rank"] > 1 for r in rows)


# ---------------------------------------------------------------- 3. keyword frequency
def test_keyword_frequency_matches_a_hand_counted_table() -> None:
    """12 layers, bins of 5. vlmflow layers -1..11 (-1 = embeddings). Hits placed by hand:
    cup: 60 at layer 4, 50 at layer 9; box: 55 at layer 4; open: 30 at -1, 40 at 10, 50 at 11.

    exact bins (outputs 0-4 | 5-9 | 10-11): cup 60|50|0 (110 kept), box 55 (dropped), open
    0|0|90 (dropped). paper bins: its layer i is vlmflow i-1 (i < 11), its 11 is vlmflow 11
    (vlmflow 10 never counted); bins are [0,5], [5,10], [10,11]: cup 60|110|50 (220), box
    55|55|0 (110, kept only because the shared layer counts twice), open 30|0|50 (80, dropped).
    """
    counts = pd.DataFrame(0, index=["box", "cup", "open"], columns=range(-1, 12))
    counts.loc["cup", 4], counts.loc["cup", 9] = 60, 50
    counts.loc["box", 4] = 55
    counts.loc["open", -1], counts.loc["open", 10], counts.loc["open", 11] = 30, 40, 50

    exact = keyword_frequency(counts, 12, bin_size=5, bins="exact", min_hits=100)
    assert list(exact.index) == ["cup", "MEAN"]
    assert list(exact.columns) == ["1-5", "6-10", "11-12", "hits"]  # the last bin ends at layer 12
    assert exact.loc["cup", ["1-5", "6-10", "11-12"]].tolist() == pytest.approx([60 / 110, 50 / 110, 0])
    assert exact.loc["cup", "hits"] == 110

    paper = keyword_frequency(counts, 12, bin_size=5, bins="paper", min_hits=100)
    assert list(paper.index) == ["box", "cup", "MEAN"]
    cup = [60 / 220, 110 / 220, 50 / 220]
    box = [0.5, 0.5, 0.0]
    assert paper.loc["cup", ["1-5", "6-10", "11-12"]].tolist() == pytest.approx(cup)
    assert paper.loc["box", ["1-5", "6-10", "11-12"]].tolist() == pytest.approx(box)
    assert paper.loc["MEAN", ["1-5", "6-10", "11-12"]].tolist() == pytest.approx(
        [(a + b) / 2 for a, b in zip(cup, box, strict=True)]
    )
    assert paper.loc["box", "hits"] == 110 and paper.loc["cup", "hits"] == 220


def test_keyword_frequency_bins_are_named_within_the_models_layers() -> None:
    """The last bin was named past the model ("11-15" for 12 layers); a one-layer last bin
    is named by its layer. The sums are unchanged."""
    counts = pd.DataFrame(1, index=["cup"], columns=range(-1, 12))
    for bins in ("exact", "paper"):
        for layers, names in (
            (12, ["1-5", "6-10", "11-12"]),
            (11, ["1-5", "6-10", "11"]),
            (10, ["1-5", "6-10"]),
        ):
            table = keyword_frequency(counts.loc[:, : layers - 1], layers, bin_size=5, bins=bins, min_hits=1)
            assert list(table.columns) == [*names, "hits"], (bins, layers)
    exact = keyword_frequency(counts, 12, bin_size=5, bins="exact", min_hits=1)
    assert exact.loc["cup", "hits"] == 12  # 5 + 5 + 2 layer outputs
    paper = keyword_frequency(counts, 12, bin_size=5, bins="paper", min_hits=1)
    assert paper.loc["cup", "hits"] == 6 + 6 + 2  # label-inclusive 6-layer slices, as before


def test_keyword_frequency_from_lens_records_counts_top1_hits(tiny_llava) -> None:
    """End to end: the records' hits, binned by ``keyword_frequency``, equal a direct count
    of top-1 lens tokens equal to the keyword in the bins' layers."""
    from vlmflow.analyses.logit_lens import LogitLens, layer_counts

    adapter = tiny_llava
    prepared = adapter.prepare(make_sample(seed=5))
    engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
    rows = LogitLens(topk=1, sample_mode="all").records(Probe(adapter, prepared))
    common = pd.Series([w for r in rows for w in r["top1"]]).value_counts().index[:3].tolist()
    lens = LogitLens(topk=1, sample_mode="all", spatial=tuple(common), temporal=("Question",))
    rows = pd.DataFrame(lens.records(Probe(adapter, prepared)))
    counts = layer_counts(rows, common)
    n = engine.lm.num_layers
    table = keyword_frequency(counts, n, bin_size=2, bins="exact", min_hits=1)
    for w in table.index.drop("MEAN"):
        direct = [
            sum(r["top1"].count(w) for _, r in rows.iterrows() if s <= r["layer"] <= min(s + 1, n - 1))
            for s in range(0, n, 2)
        ]
        assert table.loc[w].drop("hits").tolist() == pytest.approx([d / sum(direct) for d in direct])


def test_keywords_are_word_initial_on_byte_level_and_the_papers_rule_on_sentencepiece(tiny_models) -> None:
    """A byte-level BPE tokenizer (Qwen's) prepends no space, so a keyword alone splits into
    fragments ("left" -> "le") that a word-initial top token (" left") never equals: the
    keyword is the word-initial form there. On a SentencePiece-style tokenizer (the paper's
    Llama) it is the paper's ``decode(tokenizer(kw).input_ids[0])``."""
    from tests.fixtures.tiny import build_tokenizer
    from vlmflow.analyses.logit_lens import LogitLens, first_subtoken

    sp = build_tokenizer()
    for w in ("left", "right", "up", "down", "person", "food", "cup", "box", "put", "appears"):
        assert first_subtoken(sp, w) == sp.decode(sp(w, add_special_tokens=False)["input_ids"][0])
    adapter = tiny_models.adapter("videollama3")
    tok = adapter.tokenizer
    assert tok.decode(tok("left", add_special_tokens=False)["input_ids"][0]) != "left"  # fragments
    prepared = adapter.prepare(FAMILIES["videollama3"].sample())
    lens = LogitLens(topk=1, sample_mode="all", spatial=("left", "right"), temporal=("down",))
    rows = lens.records(Probe(adapter, prepared))
    assert rows[0]["spatial_words"] == ["left", "right"] and rows[0]["temporal_words"] == ["down"]
    for r in rows:
        assert r["spatial_hits"] == sum(w in ("left", "right") for w in r["top1"])


def test_a_keyword_reduced_to_whitespace_is_refused(tiny_llava) -> None:
    """The tiny SentencePiece tokenizer has no "floor": its first sub-token is a bare "▁",
    which would count every whitespace token as a hit; the keyword is refused by name."""
    from vlmflow.analyses.logit_lens import LogitLens

    prepared = tiny_llava.prepare(make_sample())
    with pytest.raises(PlanError, match="'floor'"):
        LogitLens(sample_mode="all", spatial=("floor", "left")).records(Probe(tiny_llava, prepared))


def test_non_ascii_keywords_join_their_byte_tokens_on_byte_level(tiny_models) -> None:
    """Byte-level BPE leaves the space's byte token ("Ġ") alone before "été" and splits "über",
    "ça", "左" into partial UTF-8 bytes that decode to U+FFFD (any of hundreds of vocabulary
    tokens would count as a hit): the first sub-tokens are joined until they decode cleanly.
    An ASCII word whose first sub-token is the bare space is still refused."""
    from vlmflow.analyses.logit_lens import first_subtoken

    tok = tiny_models.adapter("videollama3").tokenizer
    got = {w: first_subtoken(tok, w) for w in ("été", "über", "ça", "左", "left")}
    assert got == {"été": "é", "über": "ü", "ça": "ç", "左": "左", "left": "left"}
    with pytest.raises(PlanError, match="whitespace"):
        first_subtoken(tok, "floor")


def test_a_keyword_the_tokenizer_cannot_read_stops_the_run_before_any_sample(
    tiny_llava, tiny_llava_path, tmp_path
) -> None:
    """The tiny SentencePiece tokenizer reads "é" as its unknown token: the keyword is refused
    once, right after the model loads, not by every sample ("0 done, 6 failed")."""
    import vlmflow
    from vlmflow.analyses.logit_lens import LogitLens

    options = vlmflow.Options(model=str(tiny_llava_path), data="synthetic:1", num_frames=4, progress=False)
    lens = LogitLens(sample_mode="all", spatial=("été", "left"))
    with pytest.raises(PlanError, match="'été'.*unknown") as refused:
        vlmflow.run(options, [lens], tmp_path / "run", model=Model(tiny_llava))
    assert "sample" not in str(refused.value)
    records = tmp_path / "run" / "records"
    assert not records.exists() or not any(records.iterdir())


def test_keyword_frequency_is_one_table_per_task() -> None:
    """The paper builds the table per task. 4 layers, bins of 2, min 1 hit. Task t: cup 3
    hits at layer 0 and 1 at layer 3 (box none: dropped). Task u: cup 1 at layers 1 and 2,
    box 2 at layer 3, temporal 'then' 2 at layer 0. Pooled, cup would read 4|2."""
    from vlmflow.analyses.logit_lens import summarize_keyword_frequency

    hits = {("t", 0): {"cup": 3}, ("t", 3): {"cup": 1}, ("u", 1): {"cup": 1}, ("u", 2): {"cup": 1},
            ("u", 3): {"box": 2}, ("u", 0): {"then": 2}}  # fmt: skip
    rows = pd.DataFrame(
        [
            {
                "sample_id": task,
                "task": task,
                "analysis": "logit-lens",
                "error": None,
                "layer": layer,
                "hits": hits.get((task, layer), {}),
                "spatial_words": ["box", "cup"],
                "temporal_words": ["then"],
                "num_layers": 4,
                "bin_size": 2,
                "bins": "exact",
                "min_hits": 1,
            }  # fmt: skip
            for task in ("t", "u")
            for layer in range(4)
        ]
    )
    tables = summarize_keyword_frequency(rows)
    spatial = tables["spatial"].set_index(["task", "keyword"])
    assert tables["spatial"].columns.tolist() == ["task", "keyword", "1-2", "3-4", "hits"]
    want = {
        ("t", "cup"): [0.75, 0.25, 4],
        ("t", "MEAN"): [0.75, 0.25, 4],
        ("u", "box"): [0.0, 1.0, 2],
        ("u", "cup"): [0.5, 0.5, 2],
        ("u", "MEAN"): [0.25, 0.75, 4],
    }
    assert sorted(spatial.index) == sorted(want)
    for key, values in want.items():
        assert spatial.loc[key].tolist() == pytest.approx(values), key
    temporal = tables["temporal"].set_index(["task", "keyword"])
    assert sorted(temporal.index) == [("u", "MEAN"), ("u", "then")]
    assert temporal.loc[("u", "MEAN")].tolist() == pytest.approx([1.0, 0.0, 2])


def test_an_empty_keyword_table_is_explained_in_the_report_notes() -> None:
    """A small run: no keyword reaches --min-hits (default 100), the tables keep only their
    header, and the logit-lens section says why and names the option."""
    from vlmflow.analyses.logit_lens import empty_keyword_tables_note, summarize_keyword_frequency

    def rows(min_hits: int) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "sample_id": "s",
                    "task": "t",
                    "analysis": "logit-lens",
                    "error": None,
                    "layer": layer,
                    "hits": {"cup": 3, "then": 2} if layer == 0 else {},
                    "spatial_words": ["cup"],
                    "temporal_words": ["then"],
                    "num_layers": 4,
                    "bin_size": 2,
                    "bins": "exact",
                    "min_hits": min_hits,
                }  # fmt: skip
                for layer in range(4)
            ]
        )

    small = rows(100)
    assert all(t.empty for t in summarize_keyword_frequency(small).values())
    note = empty_keyword_tables_note(small)
    assert "logit-lens-keywords-spatial is empty: no spatial keyword reached 100 hits" in note
    assert "logit-lens-keywords-temporal is empty" in note and "--min-hits" in note
    assert empty_keyword_tables_note(rows(1)) == ""


# ---------------------------------------------------------------- 4. accuracy under knockout
def _flow_fixture() -> pd.DataFrame:
    """Task t: 4 samples, 3 answered correctly at baseline (analysed), 1 wrong (skipped);
    under the cut 2 of the 3 stay correct. Task u: 2 samples, both analysed, 1 stays."""
    rows = []
    for sid, task, ok in [("a", "t", True), ("b", "t", True), ("c", "t", True), ("d", "t", False)]:
        rows.append({"sample_id": sid, "task": task, "analysis": "eval", "correct": ok, "error": None})
    rows.append({"sample_id": "e", "task": "u", "analysis": "eval", "correct": True, "error": None})
    rows.append({"sample_id": "f", "task": "u", "analysis": "eval", "correct": True, "error": None})
    rows.append({"sample_id": "g", "task": "u", "analysis": "eval", "correct": None, "error": "broken"})
    for sid, task, new in [
        ("a", "t", True),
        ("b", "t", False),
        ("c", "t", True),
        ("e", "u", True),
        ("f", "u", False),
    ]:
        rows.append(
            {
                "sample_id": sid,
                "task": task,
                "analysis": "flow",
                "target": "vql-to-ql",
                "condition": "video->last",
                "layer": 0,
                "rel_pred": -10.0,
                "rel_gt": -10.0,
                "correct_new": new,
                "error": None,
            }
        )
    return pd.DataFrame(rows)


def test_knockout_accuracy_is_reported_over_analysed_and_over_all_samples() -> None:
    df = _flow_fixture()
    totals = task_sample_counts(df)
    assert totals == {"t": 4, "u": 2}  # a failed sample is no sample
    out = summarize_flow(df, totals).set_index("task")
    assert out.loc["t", "acc_of_analysed"] == pytest.approx(2 / 3)
    assert out.loc["t", "acc_of_all"] == pytest.approx(2 / 4)  # the paper: wrong baselines count
    assert out.loc["u", "acc_of_analysed"] == pytest.approx(1 / 2)
    assert out.loc["u", "acc_of_all"] == pytest.approx(1 / 2)
    assert np.isnan(summarize_flow(df)["acc_of_all"]).all()  # no totals: not guessed


# ---------------------------------------------------------------- 5. what counts as correct
def _baseline(pred_id: int, pred_token: str, gt_id: int, letter: str, rule: str) -> Baseline:
    return Baseline(torch.zeros(10), pred_id, pred_token, None, gt_id, letter, (), rule=rule)


def test_text_rule_is_the_papers_decoded_string_comparison() -> None:
    """The paper: ``decode([argmax]).lower() == letter.lower()``, with no stripping."""
    cases = [  # (pred id, decoded, gt id, letter) -> (ids rule, paper rule)
        ((3, "A", 3, "A"), (True, True)),
        ((7, "a", 3, "A"), (False, True)),  # another token that decodes to the letter
        ((8, " A", 3, "A"), (False, False)),  # a leading space is not the letter
        ((3, "B", 3, "A"), (True, False)),  # (impossible with one id per letter, but rules differ)
    ]
    for (pid, tok, gid, letter), (ids, text) in cases:
        assert _baseline(pid, tok, gid, letter, "ids").correct is ids
        assert _baseline(pid, tok, gid, letter, "text").correct is text
        assert (tok.lower() == letter.lower()) is text  # the reference's expression


def test_read_answer_applies_the_rule_and_the_summary_counts_disagreements(tiny_llava) -> None:
    adapter = tiny_llava
    prepared = adapter.prepare(make_sample(answer=0))
    lower_a = adapter.tokenizer.convert_tokens_to_ids("a")
    assert adapter.tokenizer.decode([lower_a]) == "a" and lower_a != prepared.answer_id
    logits = torch.full((adapter.model.config.text_config.vocab_size,), -10.0)
    logits[lower_a] = 10.0
    ids = read_answer(adapter, prepared, logits)
    text = read_answer(adapter, prepared, logits, "text")
    assert ids.correct is False and text.correct is True
    assert ids.record()["correct_ids"] is False and ids.record()["correct_text"] is True
    with pytest.raises(PlanError, match="correctness"):
        read_answer(adapter, prepared, logits, "letters")
    records = pd.DataFrame(
        [
            {"sample_id": "x", "task": "t", "analysis": "eval", "error": None, **ids.record()},
            {
                "sample_id": "y",
                "task": "t",
                "analysis": "eval",
                "error": None,
                "correct": True,
                "correct_ids": True,
                "correct_text": True,
            },
        ]
    )
    acc = accuracy_table(records).set_index("task")
    assert acc.loc["t", "ids_vs_text_disagree"] == 1


# ---------------------------------------------------------------- 6. random blocking
def test_random_blocking_is_drawn_per_seed_sample_and_layer(tiny_llava) -> None:
    layout = tiny_llava.prepare(make_sample()).layout
    n, layers = layout.length, (0, 1)

    def blocked(sample: str, seed: int = 0) -> dict[int, np.ndarray]:
        return compile_plan(Plan("r", (RandomCut(0.1, seed, layers, sample=sample),)), layout, 2).blocked

    a, a2, b, c = blocked("s1"), blocked("s1"), blocked("s2"), blocked("s1", seed=1)
    assert all((a[i] == a2[i]).all() for i in layers)  # reproducible
    assert not (a[0] == b[0]).all()  # same length, other sample: a fresh pattern
    assert not (a[0] == c[0]).all() and not (a[0] == a[1]).all()
    start = int(layout.resolve("video")[0])
    for m in a.values():  # the paper's count and support, checked directly
        assert m.sum() == int(n * (n + 1) // 2 * 0.1)
        q, k = np.nonzero(m)
        assert (k <= q).all() and (q >= start).all() and (k >= start).all()


def test_random_fraction_measured_fixed_or_paper(tiny_llava) -> None:
    spec = PRESETS["llava-next-7b-video-ft"]
    assert Pathways(spec=spec).fixed_fraction() is None
    assert Pathways(spec=spec, random_fraction="paper").fixed_fraction() == 0.58
    assert Pathways(spec=PRESETS["videollama3-7b"], random_fraction="paper").fixed_fraction() == 0.42
    assert Pathways(spec=spec, random_fraction="0.3").fixed_fraction() == 0.3
    with pytest.raises(PlanError, match="paper fixed"):
        Pathways(spec=dataclasses.replace(spec, name="mine"), random_fraction="paper")
    layout = tiny_llava.prepare(make_sample()).layout
    small = spec.scaled(2)
    plans = pathway_plans(small, layout, 2, (0,), False, sample="s", fraction=0.05)
    n = layout.length
    random = plans[-1][2]
    assert random.suppressed_edges() == 2 * int(n * (n + 1) // 2 * 0.05)


def test_the_papers_random_fraction_needs_the_preset_itself_not_its_name(tmp_path) -> None:
    """docs/paper-parity.md: ``--random-fraction paper`` with a spec file is refused. A file
    named after a preset whose ranges differ is another pathway; one with the preset's
    content is the preset."""
    import json

    from vlmflow.analyses.pathways import load_spec

    preset = PRESETS["llava-next-7b-video-ft"]
    other = preset.to_dict()
    other["keep"]["cross_frame"] = [0, 3]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(PlanError, match="ranges or layer count differ"):
        Pathways(spec=load_spec(str(tmp_path / "other.json")), random_fraction="paper")
    with pytest.raises(PlanError, match="paper fixed"):
        Pathways(spec=preset.scaled(8), random_fraction="paper")
    (tmp_path / "same.json").write_text(json.dumps(preset.to_dict()))
    same = load_spec(str(tmp_path / "same.json"))
    assert Pathways(spec=same, random_fraction="paper").fixed_fraction() == 0.58


def test_a_random_fraction_beyond_the_pairs_there_blocks_them_all_and_keeps_every_condition(
    tiny_llava,
) -> None:
    """The paper's ``randperm(...)[:N]`` blocks every pair after the first video token when
    N exceeds them; so does vlmflow, with a warning, and the sample keeps its pathway,
    strict and random results (the whole sample used to fail)."""
    from vlmflow.analyses.pathways import evaluate_pathway

    prepared = tiny_llava.prepare(make_sample())
    layout, n = prepared.layout, prepared.layout.length
    start = int(layout.resolve("video")[0])
    there = (n - start) * (n - start + 1) // 2 / (n * (n + 1) // 2)
    spec = PRESETS["llava-next-7b-video-ft"].scaled(tiny_llava.num_layers)
    with pytest.warns(UserWarning, match="all of those are blocked"):
        rows = evaluate_pathway(Probe(tiny_llava, prepared), spec, (0, 1), True, fraction=0.999)
    by = {(r["condition"], r["seed"]): r for r in rows}
    assert set(by) == {("baseline", None), ("pathway", None), ("strict", None), ("random", 0), ("random", 1)}
    for seed in (0, 1):
        assert by[("random", seed)]["suppressed_fraction"] == pytest.approx(there)
        assert by[("random", seed)]["correct"] is not None


def test_suppressed_fraction_mean_of_samples_and_ratio_of_sums() -> None:
    """Two samples: 10 of 100 edges cut and 50 of 1000. Mean of fractions 0.075; the paper's
    ratio of sums 60 / 1100."""
    rows = []
    for sid, cut, total in [("a", 10, 100), ("b", 50, 1000)]:
        for cond, c in (("baseline", 0), ("pathway", cut)):
            rows.append(
                {
                    "sample_id": sid,
                    "task": "t",
                    "analysis": "pathways",
                    "error": None,
                    "condition": cond,
                    "seed": None,
                    "correct": True,
                    "suppressed_fraction": c / total,
                    "suppressed_edges": c,
                    "total_edges": total,
                }
            )
    out = summarize_pathways(pd.DataFrame(rows)).set_index("task")
    assert out.loc["all", "suppressed_pathway"] == pytest.approx(0.075)
    assert out.loc["all", "suppressed_pathway_of_sums"] == pytest.approx(60 / 1100)


# ---------------------------------------------------------------- 10. open-ended TVBench / Video-MME
def _write_tvbench(root, items_by_file: dict[str, list[dict]]) -> None:
    import json

    (root / "json").mkdir(parents=True)
    for stem, items in items_by_file.items():
        (root / "json" / f"{stem}.json").write_text(json.dumps(items))


def test_open_ended_tvbench_has_the_papers_answer_prompts(tmp_path, tiny_llava) -> None:
    from vlmflow.data import load_dataset

    _write_tvbench(
        tmp_path,
        {
            "moving_direction": [
                {
                    "video": "a.mp4",
                    "question": "Which direction does the cyan sphere move?",
                    "candidates": ["It moves right", "It moves left"],
                    "answer": "It moves right",
                }
            ],
            "object_count": [
                {
                    "video": "b.mp4",
                    "question": "How many objects move?",
                    "candidates": ["2", "3"],
                    "answer": "3",
                }
            ],
            "scene_transition": [
                {
                    "video": "c.mp4",
                    "question": "What is the scene change?",
                    "candidates": ["From the kitchen to the garden", "From a road to a bridge"],
                    "answer": "From a road to a bridge",
                }
            ],
            "action_antonym": [
                {
                    "video": "d.mp4",
                    "question": "What is the action?",
                    "candidates": ["Taking off the jacket", "Putting on the jacket"],
                    "answer": "Putting on the jacket",
                }
            ],
            "action_localization": [
                {
                    "video": "e.mp4",
                    "question": "When does the action 'open door' happen?",
                    "candidates": ["At the beginning", "At the end"],
                    "answer": "At the end",
                    "start": 0,
                    "end": 1,
                }
            ],
        },
    )
    by_task = {s.task: s for s in load_dataset(f"tvbench_open_ended:{tmp_path}")}
    md = by_task["Moving Direction"]
    assert not md.options and md.answer_text == "right" and md.meta["candidates"] == ["left", "right"]
    assert md.meta["answer_prompt"] == "\nThe cyan sphere moves to the"
    assert by_task["Object Count"].answer_text == "three"
    assert by_task["Object Count"].meta["candidates"] == ["two", "three"]
    st = by_task["Scene Transition"]
    assert st.question == "Where does the scene in the video change from one place to another place?"
    assert st.answer_text == "road to a bridge" and st.meta["candidates"] == [
        "kitchen to the garden",
        "road to a bridge",
    ]
    assert by_task["Action Antonym"].meta["answer_prompt"] == (
        "\nThe action being performed in the video regarding the jacket is to"
    )
    assert by_task["Action Localization"].meta["answer_prompt"] == "\nThe action 'open door' occurs at the"
    assert by_task["Action Localization"].answer_text == "end"
    # the prompt, as the paper's eval_mvbench_open_ended conversation renders it
    from vlmflow.data.open_ended_variants import SYSTEM_MVBENCH_OPEN_ENDED
    from vlmflow.prompt import open_ended_prompt

    p = open_ended_prompt(md, "<video>")
    want = (
        SYSTEM_MVBENCH_OPEN_ENDED
        + " USER: <video>\n USER: Question: "
        + md.question
        + "\n ASSISTANT:\nThe cyan sphere moves to the"
    )
    assert p.text == want
    assert p.text[slice(*p.question_no_options)] == md.question
    assert p.text[slice(*p.question)] == "Question: " + md.question


def test_open_ended_videomme_drops_the_options(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlmflow.data import load_dataset

    (tmp_path / "videomme").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "abc.mp4").write_bytes(b"")
    row = {
        "url": "https://www.youtube.com/watch?v=abc",
        "question": "What is shown?",
        "options": ["A. A cat.", "B. A dog."],
        "answer": "B",
        "question_id": "001-1",
        "task_type": "Object Recognition",
        "duration": "short",
        "domain": "x",
    }
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "videomme" / "test-00000-of-00001.parquet")
    [s] = load_dataset(f"videomme_open_ended:{tmp_path}")
    assert not s.options and s.answer_text == "A dog." and "answer_prompt" not in s.meta
    assert s.meta["question_template"] == "Question: {q}\n"


# ---------------------------------------------------------------- 9. query-word attention maps
def test_query_word_maps_are_the_models_head_mean_attention(tiny_llava, tmp_path) -> None:
    """The map of a question word is the word's token's attention to the video tokens,
    averaged over heads, per layer: compared with the model's own eager attentions."""
    from vlmflow.analyses.attention_maps import AttentionMaps, log_attention, question_word_positions

    adapter = tiny_llava
    prepared = adapter.prepare(make_sample())
    words = question_word_positions(adapter.tokenizer, prepared, ())
    assert {"person", "food", "happened"} <= set(words)
    ids = prepared.inputs["input_ids"][0]
    assert adapter.tokenizer.decode(ids[words["food"]]).strip() in "food"
    maps = AttentionMaps(query_words=("food",), compare=None, sample_mode="all", overlays=1)
    rows = maps.records(Probe(adapter, prepared))
    word = {r["layer"]: np.asarray(r["token_attention"]) for r in rows if r["query"] == "word:food"}
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = adapter.model(**prepared.inputs, output_attentions=True)
    finally:
        adapter.model.set_attn_implementation("sdpa")
    video = prepared.layout.resolve("video")
    for layer, got in word.items():
        want = out.attentions[layer][0, :, words["food"], video].float().mean(0).numpy()
        assert got == pytest.approx(want, abs=1e-5)
    assert log_attention(np.array([0.0, 1.0])).tolist() == pytest.approx([np.log10(5e-5), np.log10(1 + 5e-5)])
    # the report draws each word's map from the stored records (the run's first samples)
    from vlmflow.api import Options, run

    opts = Options(model="tiny", data="synthetic:1:fixed", num_frames=4, progress=False)
    run(
        opts,
        [AttentionMaps(view="query-words", compare=None, sample_mode="all", overlays=1)],
        tmp_path,
        model=Model(adapter),
    )
    assert list((tmp_path / "figures" / "attention-words").glob("*-baseline.png"))


def test_a_query_word_the_question_lacks_is_skipped_with_a_note_and_the_other_maps_kept(tiny_llava) -> None:
    """One absent query word made the whole sample fail, losing its last/question maps."""
    from vlmflow.analyses.attention_maps import AttentionMaps, sample_notes

    probe = Probe(tiny_llava, tiny_llava.prepare(make_sample()))
    rows = AttentionMaps(query_words=("zebra", "food"), layers=(0,), compare=None, sample_mode="all").records(
        probe
    )
    assert {r["query"] for r in rows} == {"last", "question", "word:food"}
    assert {r["note"] for r in rows} == {"query word 'zebra' not in this question"}
    said = sample_notes(pd.DataFrame(rows).assign(sample_id="s0"))
    assert "s0: query word 'zebra' not in this question" in said
    every = AttentionMaps(query_words=("food",), layers=(0,), compare=None, sample_mode="all").records(probe)
    assert {r["note"] for r in every} == {None}
    assert sample_notes(pd.DataFrame(every).assign(sample_id="s0")) == ""
    # nothing at all to draw is still an error
    with pytest.raises(PlanError, match="query word 'zebra'"):
        AttentionMaps(query_words=("zebra",), queries=(), compare=None, sample_mode="all").records(probe)


def test_query_words_are_whole_words_of_the_raw_question_matched_as_the_automatic_view(tiny_llava) -> None:
    """Given words were matched against the whole question span: an option's word ("blanket"),
    the template's "Question" and a word's first letters ("pers" of "person") all mapped to
    some token. Now only whole words of the raw question match, by the automatic view's
    rules (first occurrence, last sub-token, case-sensitive)."""
    from vlmflow.analyses.attention_maps import question_word_positions

    prepared = tiny_llava.prepare(make_sample())
    tok = tiny_llava.tokenizer
    auto = question_word_positions(tok, prepared, ())
    asked = ("the", "blanket", "Question", "pers", "person", "what", "food?", "happened")
    got = question_word_positions(tok, prepared, asked)
    assert got == {w: auto[w] for w in ("the", "person", "happened")}
    raw = prepared.layout.question_no_options
    assert all(raw.start <= p < raw.end for p in got.values())
    ids = prepared.inputs["input_ids"][0]
    assert tok.decode(ids[raw.start : got["person"] + 1]).strip().endswith("person")


def test_the_papers_word_span_reaches_the_option_words(tiny_llava) -> None:
    """The paper's per-word loop runs from the raw question's first token to the last token
    (options and answer prompt included), and its task word lists are mostly option words
    ('left', 'right', 'Up', 'Down'): vlmflow refused them, "query word 'left' not in this
    question". ``word_span="to-last"`` (the paper's, in --paper) matches them there; the
    default still matches inside the raw question only."""
    from vlmflow.analyses.attention_maps import AttentionMaps, question_word_positions
    from vlmflow.data import load_dataset
    from vlmflow.paper import PAPER_OPTIONS

    sample = next(s for s in load_dataset("synthetic:12:fixed") if s.task == "moving_direction")
    assert "left" in sample.options and "left" not in sample.question
    prepared = tiny_llava.prepare(sample)
    probe = Probe(tiny_llava, prepared)
    one = {"queries": (), "compare": None, "sample_mode": "all", "layers": (0,)}
    with pytest.raises(PlanError, match="query word 'left' not in this question"):
        AttentionMaps(query_words=("left",), **one).records(probe)
    span = PAPER_OPTIONS["attention"]["word_span"]
    rows = AttentionMaps(query_words=("left", "direction"), word_span=span, **one).records(probe)
    assert {r["query"] for r in rows} == {"word:left", "word:direction"}
    assert {r["note"] for r in rows} == {None}
    tok, layout = tiny_llava.tokenizer, prepared.layout
    found = question_word_positions(tok, prepared, ("left", "direction"), span=span)
    assert layout.question_no_options.end <= found["left"] <= layout.last
    assert layout.question_no_options.start <= found["direction"] < layout.question_no_options.end
    ids = prepared.inputs["input_ids"][0]
    assert tok.decode(ids[found["left"]]).strip() in "left"


def test_the_papers_offset_word_maps_are_a_listed_defect_not_claimed_exact(tiny_llava) -> None:
    """The docs said a one-token word's map is "exactly the paper's", but the paper's rows
    start at the "Question:" token (post_prompt_range) and its labels at the raw question's
    first token (q_rng[0]), both indexed by op_id: its "What" map is the row two tokens
    earlier. vlmflow reads the word's own row; the offset is a listed defect of the paper."""
    from pathlib import Path

    from vlmflow.analyses import attention_maps
    from vlmflow.analyses.attention_maps import question_word_positions

    prepared = tiny_llava.prepare(make_sample())
    layout, tok = prepared.layout, tiny_llava.tokenizer
    ids = prepared.inputs["input_ids"][0]
    first = question_word_positions(tok, prepared, ())["What"]
    assert first == layout.question_no_options.start
    # the paper's map labelled with the token at q_rng[0] + k is the row question.start + k
    k = first - layout.question_no_options.start
    paper_row = layout.question.start + k
    assert first - paper_row == 2 and tok.decode(ids[paper_row]).strip() == "Question"
    assert "exactly the paper's" not in attention_maps.__doc__
    doc = (Path(__file__).parents[2] / "docs" / "paper-parity.md").read_text()
    defects = " ".join(doc.split("Known defects of the paper's code")[1].split())
    assert "offset rows of the attention maps per query word" in defects
    assert "`q_rng[0]`" in defects and "`post_prompt_range`" in defects


# ---------------------------------------------------------------- --paper on every command
def _capture(monkeypatch) -> list:
    """Run commands without running them: record the options and analyses they would run."""
    import types

    from vlmflow import api
    from vlmflow.run import RunSummary

    calls: list = []

    def fake_run(options, analyses, out, **kwargs):
        calls.append((options, analyses))
        return types.SimpleNamespace(out=out, summary=RunSummary(), report={})

    monkeypatch.setattr(api, "run", fake_run)
    # nothing runs, so open-ended's spaCy pipeline (checked before the model loads) is not needed
    from vlmflow.analyses.open_ended import OpenEnded

    monkeypatch.setattr(OpenEnded, "check_ready", lambda self: None)
    return calls


@pytest.mark.parametrize(
    ("command", "extra", "paper", "default"),
    [
        # item 1: the verb-anchored analysis with the paper's spaCy pipeline and string matching
        ("open-ended", [],
         {"anchor": "verb", "spacy_model": "en_core_web_lg", "verb_match": "string",
          "regenerate_tokens": 100},
         {"spacy_model": "en_core_web_sm", "verb_match": "position"}),
        # item 2 (correct samples) and the family's norm setting (the adapter's paper_final_norm)
        ("answer-prob", [], {"sample_mode": "correct", "norm": "paper"},
         {"sample_mode": "correct", "norm": True}),
        # item 3: the embedding lens, the paper's words and its 6-layer bins
        ("logit-lens", [], {"projection": "embed", "bins": "paper", "words": "paper-action-sequence"},
         {"projection": "unembed", "bins": "exact", "words": "synthetic"}),
        # item 6: the scripts' fixed random fraction
        ("pathways", ["--preset", "llava-next-7b-video-ft"], {"random_fraction": "paper"},
         {"random_fraction": "measured"}),
        # item 9: one map per question word over layers 11-20
        # and every sample: the paper's script does not pass --skip_baseline_wrong_samples
        ("attention", [],
         {"view": "query-words", "layers": tuple(range(10, 20)), "word_span": "to-last",
          "sample_mode": "all"},
         {"view": "groups", "layers": None, "word_span": "question", "sample_mode": "correct"}),
        ("flow", [], {"window": 9, "window_style": "center", "sample_mode": "correct"}, {"window": 9}),
    ],
)  # fmt: skip
def test_paper_switches_every_command(monkeypatch, command, extra, paper, default) -> None:
    from typer.testing import CliRunner

    from vlmflow.cli import app

    calls = _capture(monkeypatch)
    base = [command, "--model", "tiny", "--data", "synthetic", *extra]
    for flags, want, rule in (([], default, "ids"), (["--paper"], paper, "text")):
        result = CliRunner().invoke(app, base + flags)
        assert result.exit_code == 0, result.output
        options, analyses = calls[-1]
        assert options.correctness == rule  # item 5 on every command
        assert options.prompt == "paper"  # item 7: each family's paper prompt
        assert options.seed == (42 if flags else 0)  # the paper's --test_ratio subsample
        for key, value in want.items():
            assert getattr(analyses[0], key) == value, (command, flags, key)
    # --paper is recorded (in the session, as provenance), not part of the configuration
    assert calls[-1][0].paper is True and "paper" not in calls[-1][0].manifest()


def test_paper_pathways_with_a_spec_file_or_a_search_uses_the_measured_fraction(
    monkeypatch, tmp_path
) -> None:
    """``--paper`` selects every choice: with ``--spec FILE`` or ``--search`` (no fraction in
    the paper) random blocking takes each sample's measured fraction, with a one-line note;
    ``--random-fraction paper`` given explicitly for a non-preset spec is still refused."""
    import json

    from typer.testing import CliRunner

    from vlmflow.analyses import pathways
    from vlmflow.cli import app

    calls = _capture(monkeypatch)
    spec = tmp_path / "mine.json"
    spec.write_text(json.dumps(dataclasses.replace(PRESETS["llava-next-7b-video-ft"], name="mine").to_dict()))
    base = ["pathways", "--model", "tiny", "--data", "synthetic", "--paper"]
    result = CliRunner().invoke(app, [*base, "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    assert calls[-1][1][0].random_fraction == "measured"
    assert "measured fraction" in result.output
    searched: list = []
    monkeypatch.setattr(pathways, "search_and_evaluate", lambda *a, **k: searched.append(k) or calls[-1])
    CliRunner().invoke(app, [*base, "--search"])
    assert searched and searched[-1]["random_fraction"] == "measured"
    result = CliRunner().invoke(app, [*base, "--spec", str(spec), "--random-fraction", "paper"])
    assert result.exit_code == 2 and "only for its presets" in result.output


def test_paper_leaves_explicit_options_alone(monkeypatch) -> None:
    from typer.testing import CliRunner

    from vlmflow.cli import app

    calls = _capture(monkeypatch)
    args = ["logit-lens", "--model", "tiny", "--data", "synthetic", "--paper", "--projection", "unembed"]
    assert CliRunner().invoke(app, args).exit_code == 0
    lens = calls[-1][1][0]
    assert lens.projection == "unembed" and lens.bins == "paper"
    args = ["eval", "--model", "tiny", "--data", "synthetic", "--paper", "--correctness", "ids"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert calls[-1][0].correctness == "ids"


def test_videollama3_paper_prompt_is_selected_by_paper(monkeypatch) -> None:
    """Item 7 through the CLI: --paper keeps --prompt paper, which is VideoLLaMA3's native
    template (see test_videollama3); --prompt mvbench still gives the LLaVA template."""
    from typer.testing import CliRunner

    from vlmflow.cli import app

    calls = _capture(monkeypatch)
    args = ["eval", "--model", "tiny", "--data", "synthetic", "--paper", "--prompt", "mvbench"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert calls[-1][0].prompt == "mvbench"


# ---------------------------------------------------------------- 8. overlays on real videos
def test_overlays_on_a_16_9_video_sit_on_the_pixels_the_model_saw(tiny_llava, tmp_path) -> None:
    """A 64 x 36 (16:9) mp4 read by a benchmark loader (no frames on the sample): the
    processor resizes the short side to 32 (-> 56 x 32) and centre-crops 32 x 32, so the
    token grid covers x in [12/0.875, 44/0.875) = [13.71, 50.29) of the original frame and
    every row. The overlay draws each token's word at its cell's centre there."""
    import json as _json

    from vlmflow.analyses.base import video_grid
    from vlmflow.analyses.logit_lens import LogitLens, lens_overlay_figure
    from vlmflow.api import Options, run
    from vlmflow.data import load_dataset, write_video
    from vlmflow.models.regions import frame_processor

    x = np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (36, 1, 3)) * 4  # value = 4 * x
    write_video(tmp_path / "wide.mp4", np.stack([x] * 8), fps=4)
    line = {"id": "w", "video": "wide.mp4", "question": "Which way does it move?",
            "options": ["left", "right"], "answer": 0, "task": "dir"}  # fmt: skip
    (tmp_path / "qa.jsonl").write_text(_json.dumps(line) + "\n")
    [sample] = load_dataset(f"jsonl:{tmp_path / 'qa.jsonl'}")
    assert sample.frames is None

    adapter = tiny_llava
    prepared = adapter.prepare(sample)
    assert prepared.frames is not None and prepared.frames.shape[1:3] == (36, 64)
    region = adapter.frame_region(36, 64)
    assert region == pytest.approx((12 / 0.875, 0.0, 44 / 0.875, 36.0))
    # independent route: the real processor's pixels span that region of the gradient
    vp = frame_processor(adapter.processor)
    pixels = np.asarray(vp(videos=[list(prepared.frames[:1])], return_tensors="np")["pixel_values_videos"])[
        0, 0
    ]
    red = pixels[0] * vp.image_std[0] + vp.image_mean[0]  # (32, 32) in [0, 1]
    seen_x = red[16] * 255 / 4  # original x under each processed column
    assert seen_x[0] == pytest.approx(region[0], abs=1.5) and seen_x[-1] == pytest.approx(
        region[2] - 1, abs=1.5
    )

    layout = prepared.layout
    h, w = layout.frame_grids[0]
    video = layout.resolve("video").tolist()
    tops = {0: [f"w{i}" for i in range(len(video))]}
    grid = video_grid(layout)
    fig = lens_overlay_figure(
        prepared.frames, grid["video_grid"], grid["frames_per_group"], tops, [0], sample, region
    )
    texts = {t.get_text(): t.get_position() for t in fig.axes[0].texts}
    start = layout.frames[0].start
    for k in range(h * w):
        r, c = divmod(k, w)
        want = (region[0] + (c + 0.5) * (region[2] - region[0]) / w, (r + 0.5) * 36 / h)
        assert texts[f"w{video.index(start + k)}"] == pytest.approx(want)

    out = tmp_path / "run"
    opts = Options(model="tiny", data=f"jsonl:{tmp_path / 'qa.jsonl'}", num_frames=4, progress=False)
    run(opts, [LogitLens(sample_mode="all", overlays=1, min_hits=1)], out, model=Model(adapter))
    assert (out / "figures" / "logit-lens" / "w.png").exists()


def test_answer_prob_paper_norm_follows_the_family(monkeypatch) -> None:
    """``--paper`` leaves the final norm to the model's family (the adapter's
    ``paper_final_norm``: off for the LLaVA-style tiny model, as the paper's LLaVA code);
    ``--norm`` / ``--no-norm`` given explicitly win."""
    from typer.testing import CliRunner

    from vlmflow.cli import app
    from vlmflow.models import load_model
    from vlmflow.models.videollama3 import VideoLlama3Adapter

    calls = _capture(monkeypatch)
    base = ["answer-prob", "--model", "tiny", "--data", "synthetic", "--paper"]
    for flags, want in (([], "paper"), (["--norm"], True), (["--no-norm"], False)):
        assert CliRunner().invoke(app, base + flags).exit_code == 0
        assert calls[-1][1][0].norm == want, flags
    tiny = load_model("tiny")
    assert tiny.paper_final_norm is False and VideoLlama3Adapter.paper_final_norm is True
    paper = AnswerProbability(norm="paper")
    assert paper.uses_norm(tiny) is False
    assert AnswerProbability(norm=True).uses_norm(tiny) is True
    with pytest.raises(PlanError):
        AnswerProbability(norm="sometimes")


def test_false_option_curve_pools_every_false_option_row(tmp_path) -> None:
    """The paper's lineplot averages every false-option row of every sample, so a sample
    with four options weighs three times one with two. Two samples: 2 options (false 0.4) and
    4 options (false 0.1, 0.2, 0.3): pooled mean 0.25, not the mean of means 0.3."""
    import types

    from vlmflow.analyses.answer_probability import answer_prob_section

    def row(sid, probs, answer):
        false = [p for i, p in enumerate(probs) if i != answer]
        return {"sample_id": sid, "task": "t", "layer": 0, "analysis": "answer-prob", "error": None,
                "option_probs": probs, "p_true": probs[answer], "p_false_mean": float(np.mean(false)),
                "p_false_max": max(false), "true_rank": 1}  # fmt: skip

    rows = pd.DataFrame([row("a", [0.6, 0.4], 0), row("b", [0.1, 0.2, 0.4, 0.3], 2)])
    pooled = np.mean([0.4, 0.1, 0.2, 0.3])
    summary = summarize_answer_prob(rows)
    assert summary["p_false_mean"].tolist() == pytest.approx([pooled])
    assert summary["p_false_max"].tolist() == pytest.approx([(0.4 + 0.3) / 2])
    assert summary["p_true"].tolist() == pytest.approx([0.5])
    run = types.SimpleNamespace(figure_path=lambda name: tmp_path / f"{name}.png")
    chart = answer_prob_section(rows, run).charts[0].data
    line = chart[chart["option"] == "false options (mean)"]
    assert line["p_mean"].tolist() == pytest.approx([pooled]) and line["n_options"].tolist() == [4]
    assert line["n"].tolist() == [2]  # the samples: the chart's panel title reads n=2, as the others


# ---------------------------------------------------------------- the 95% band
def _bootstrap_by_loop(x: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    """seaborn's lineplot band by hand: resample with replacement, mean, 2.5/97.5 percentiles."""
    import random

    rnd = random.Random(seed)
    means = sorted(sum(rnd.choices(x, k=len(x))) / len(x) for _ in range(n_boot))
    return means[round(0.025 * (n_boot - 1))], means[round(0.975 * (n_boot - 1))]


def test_band_is_the_paper_plots_percentile_bootstrap() -> None:
    """The band is seaborn's lineplot default (errorbar=("ci", 95): 1000 bootstrap means,
    percentile interval): it agrees with a hand-written resampling loop of 20000 draws within
    Monte-Carlo error, is asymmetric for skewed data (a normal band is not), and is the
    same on every call (fixed seed)."""
    from vlmflow.report import ci95_bounds

    rng = np.random.default_rng(7)
    for x in (rng.normal(0.3, 1.0, 25), rng.exponential(1.0, 12) ** 2, rng.uniform(-50, 10, 200)):
        lo, hi = ci95_bounds(x)
        ref_lo, ref_hi = _bootstrap_by_loop(x.tolist(), 20000, seed=1)
        se = x.std(ddof=1) / np.sqrt(len(x))
        assert lo == pytest.approx(ref_lo, abs=0.35 * se) and hi == pytest.approx(ref_hi, abs=0.35 * se)
        assert (lo, hi) == ci95_bounds(x)
    skewed = rng.exponential(1.0, 12) ** 3
    lo, hi = ci95_bounds(skewed)
    assert hi - skewed.mean() > 1.3 * (skewed.mean() - lo)
    assert ci95_bounds([2.0]) == (2.0, 2.0) and ci95_bounds([np.nan, 1.0, 1.0]) == (1.0, 1.0)


def test_flow_summary_band_is_the_bootstrap_and_the_mean_is_unchanged() -> None:
    """summarize_flow's curve is the plain mean; its band the bootstrap of each group."""
    from vlmflow.report import ci95_bounds

    rng = np.random.default_rng(3)
    values = {
        ("t", 0): rng.normal(-20, 15, 9),
        ("t", 1): rng.exponential(30, 14),
        ("u", 0): rng.normal(5, 2, 4),
    }
    rows = [
        {
            "sample_id": f"{task}{i}",
            "task": task,
            "analysis": "flow",
            "error": None,
            "target": "x",
            "condition": "video->last",
            "layer": layer,
            "rel_pred": v,
            "rel_gt": -v,
            "correct_new": True,
        }  # fmt: skip
        for (task, layer), vs in values.items()
        for i, v in enumerate(vs)
    ]
    out = summarize_flow(pd.DataFrame(rows)).set_index(["task", "layer"])
    for key, vs in values.items():
        row = out.loc[key]
        assert row["rel_pred_mean"] == pytest.approx(vs.mean())
        assert (row["rel_pred_ci95_lo"], row["rel_pred_ci95_hi"]) == pytest.approx(ci95_bounds(vs))
        assert (row["rel_gt_ci95_lo"], row["rel_gt_ci95_hi"]) == pytest.approx(ci95_bounds(-vs))
        assert row["rel_pred_ci95_lo"] < row["rel_pred_mean"] < row["rel_pred_ci95_hi"]


def test_a_capped_random_baseline_is_reported_as_capped_and_warned_once_per_run(tiny_llava, tmp_path) -> None:
    """Asking more random edges than lie after the first video token blocks them all: the
    records keep the share asked, the warning reads alike for every sample (a run says it
    once), and the report says every available pair was blocked instead of claiming the
    random blocking suppresses the pathway's fraction."""
    from vlmflow.analyses.pathways import evaluate_pathway, pathways_section
    from vlmflow.rundir import RunDir

    spec = PRESETS["llava-next-7b-video-ft"].scaled(tiny_llava.num_layers)
    rows, messages = [], set()
    for i, frames in enumerate((4, 6)):  # two lengths: a different share lies after the video
        prepared = tiny_llava.prepare(make_sample(frames=frames, sid=f"s{i}"))
        with pytest.warns(UserWarning, match="all of those are blocked") as caught:
            got = evaluate_pathway(Probe(tiny_llava, prepared), spec, (0, 1), False, fraction=0.999)
        messages |= {str(w.message) for w in caught if "random blocking" in str(w.message)}
        rows += [{**r, "sample_id": f"s{i}", "task": "t", "analysis": "pathways", "error": None} for r in got]
    assert len(messages) == 1 and "s0" not in next(iter(messages))
    random = [r for r in rows if r["condition"] == "random"]
    assert all(r["random_fraction"] == pytest.approx(0.999) and r["random_capped"] for r in random)
    section = pathways_section(pd.DataFrame(rows), RunDir(tmp_path))
    assert "same fraction" not in section.notes
    assert "every available pair was blocked" in section.notes and "meaningless" in section.notes
    labels = list(section.charts[0].values)
    assert not any("same fraction" in k for k in labels)


def test_the_random_baseline_note_states_the_recorded_fractions(tiny_llava, tmp_path) -> None:
    from vlmflow.analyses.pathways import evaluate_pathway, pathways_section
    from vlmflow.rundir import RunDir

    spec = PRESETS["llava-next-7b-video-ft"].scaled(tiny_llava.num_layers)
    prepared = tiny_llava.prepare(make_sample())
    got = evaluate_pathway(Probe(tiny_llava, prepared), spec, (0, 1), False, fraction=0.05)
    rows = [{**r, "sample_id": "s", "task": "t", "analysis": "pathways", "error": None} for r in got]
    assert not any(r.get("random_capped") for r in rows)
    section = pathways_section(pd.DataFrame(rows), RunDir(tmp_path))
    assert "same fraction" not in section.notes and "5% asked" in section.notes
