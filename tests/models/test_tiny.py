"""The embedded tiny model (the earlier demo model, kept as a fast test fixture): its
tokenizer, that it loads as ``tiny`` and that it answers the held-out synthetic benchmark
(fixed option order) through vlmflow's own path (prepare + Engine baseline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmflow.analyses.base import read_answer
from vlmflow.data import synthetic
from vlmflow.engine import Engine
from vlmflow.models import TINY_MODEL_DIR, load_model
from vlmflow.models.tiny import TINY_DIR, build_demo_model, build_demo_tokenizer
from vlmflow.prompt import ANSWER_PROMPT, POST_PROMPT, SYSTEM_MVBENCH, paper_prompt

MAX_FOLDER_MB = 25
MIN_TASK_ACCURACY = 0.9  # the bar the tiny model is held to on every task; chance is 0.25


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def demo():
    return load_model("tiny")


@pytest.fixture(scope="module")
def held_out():
    return synthetic.generate(8, seed=0, option_order="fixed")  # 48 items, as `vlmflow demo` uses


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_covers_the_prompts_and_decodes_them_back(tokenizer) -> None:
    unk = tokenizer.unk_token_id
    for text in (SYSTEM_MVBENCH, POST_PROMPT, ANSWER_PROMPT, " ".join(synthetic.vocabulary())):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids, tokenizer.convert_ids_to_tokens(ids)
        assert tokenizer.decode(ids) == text
    for s in synthetic.generate(2, seed=7):
        text = paper_prompt(s, "<video>").text
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert unk not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<video>", "")


def test_tokenizer_offsets_and_answer_letters(tokenizer) -> None:
    text = "USER: <video><video>\n Question: Which direction does the red square move?" + POST_PROMPT
    text += " ASSISTANT:" + ANSWER_PROMPT
    enc = tokenizer(text, return_offsets_mapping=True)
    for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if b > a:  # every token's characters, without the space marker, are its text
            assert text[a:b].strip(" ") == tokenizer.convert_ids_to_tokens(i).replace("\u2581", "")
    assert enc["input_ids"].count(tokenizer.convert_tokens_to_ids("<video>")) == 2
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][-1]) == "("
    letters = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        ids = tokenizer(text + letter)["input_ids"]
        assert ids[:-1] == enc["input_ids"], letter
        letters.append(ids[-1])
    assert len(set(letters)) == 26


def test_shipped_tokenizer_is_the_builders(demo, tokenizer) -> None:
    assert demo.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert TINY_MODEL_DIR == TINY_DIR


# --------------------------------------------------------------------------- checkpoint


def test_shipped_checkpoint_is_small_and_matches_the_builder(demo) -> None:
    size = sum(f.stat().st_size for f in TINY_DIR.iterdir() if f.is_file())
    assert size <= MAX_FOLDER_MB * 1e6, f"tiny_model/ is {size / 1e6:.1f} MB"
    built, _ = build_demo_model(0)
    for part in ("text_config", "vision_config"):
        a, b = getattr(built.config, part).to_dict(), getattr(demo.model.config, part).to_dict()
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
            "image_size",
            "patch_size",
        ):
            assert a.get(key) == b.get(key), (part, key)
    assert demo.family == "llava_next_video" and demo.num_layers == 8


def test_layout_of_a_demo_prompt(demo, held_out) -> None:
    sample = held_out[0]
    prepared = demo.prepare(sample)
    layout = prepared.layout
    assert len(layout.frames) == 8 and len(layout.resolve("video")) == 8 * 16
    assert set(layout.frame_grids) == {(4, 4)}
    ids = prepared.inputs["input_ids"][0].tolist()
    text = lambda g: demo.tokenizer.decode([ids[i] for i in layout.resolve(g)])  # noqa: E731
    assert text("question_no_options") == sample.question
    assert text("true_option") == f"({sample.letters[sample.answer]}) {sample.options[sample.answer]}"
    assert text("last") == "("
    assert demo.tokenizer.convert_ids_to_tokens(list(prepared.option_ids)) == ["A", "B", "C", "D"]


def test_demo_reaches_its_recorded_accuracy(demo) -> None:
    """The shipped model answers the held-out set through vlmflow's own path (``prepare`` +
    ``Engine`` baseline) with the per-task accuracy ``accuracy.json`` records (to one item), and
    that accuracy shows it reads the video: at least 0.9 on every task (chance is 0.25)."""
    report = json.loads((TINY_DIR / "accuracy.json").read_text())
    n = report["held_out_items_per_task"]
    assert n >= 40 and report["held_out"] == "synthetic.generate(n, seed=0, option_order='fixed')"
    hits: dict[str, list[bool]] = {}
    lm = demo.language_model()
    for sample in synthetic.generate(n, seed=0, option_order="fixed"):
        prepared = demo.prepare(sample)
        answer = read_answer(demo, prepared, Engine(lm, prepared.inputs, prepared.layout).baseline_logits())
        hits.setdefault(sample.task, []).append(bool(answer.correct))
    acc = {task: float(np.mean(v)) for task, v in sorted(hits.items())}
    # within one item per task: a near-tie argmax may flip under another CPU's kernels
    assert acc == pytest.approx(report["held_out_accuracy"], abs=1.01 / n)
    assert set(acc) == set(synthetic.TASKS)
    assert min(acc.values()) >= MIN_TASK_ACCURACY, acc


def test_demo_command_smoke(tmp_path) -> None:
    """`vlmflow demo --model tiny --samples 1` end to end: every analysis, figures, report, summary."""
    from typer.testing import CliRunner

    from vlmflow.cli import app
    from vlmflow.store import read_records

    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--model", "tiny", "--samples", "1", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "cross-frame knockout" in result.output and "overtakes" in result.output
    records = read_records(out)
    assert {"eval", "flow", "answer-prob", "logit-lens", "attention"} <= set(records["analysis"])
    # the pathways are searched on half the samples and reported on the other half
    assert "effective pathways (searched" in result.output
    assert "pathways" in set(read_records(out / "pathways")["analysis"])
    assert (out / "pathways" / "pathway_search.json").is_file()
    assert (out / "report.html").stat().st_size > 10_000
    assert any((out / "figures").glob("*.png"))
    summaries = {p.stem for p in (out / "summary").glob("*.csv")}
    assert summaries == {
        "accuracy",
        "flow",
        "answer-prob",
        "logit-lens",
        "logit-lens-top-tokens",
        "logit-lens-keywords-spatial",  # the paper's keyword-frequency statistic (issue 13)
        "logit-lens-keywords-temporal",
        "attention",
    }
    assert "pathways" in {p.stem for p in (out / "pathways" / "summary").glob("*.csv")}
    # per-sample overlays are drawn by the report from the records
    assert any((out / "figures" / "logit-lens").glob("*.png"))
    assert any((out / "figures" / "attention").glob("*.png"))
