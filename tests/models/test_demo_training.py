"""The demo model's training script (``scripts/train_demo_model.py``): the positions and
targets of its auxiliary losses are the tokens they name, and its batched training forward
gives the model's own logits at every position it trains, so what is trained is what
vlmflow later reads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.demo import demo_with_random_lora
from vlmflow.data import synthetic

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_model.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo_model"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_and_processor():
    model, processor = demo_with_random_lora(1)
    model.eval()
    return model, processor


def _items():
    return synthetic.generate(1, seed=3, tasks=["object_count", "action_antonym", "moving_direction"])


def test_auxiliary_positions_and_targets_are_the_tokens_they_name(script, model_and_processor) -> None:
    _, processor = model_and_processor
    tok = processor.tokenizer
    enc = script.Encoder(processor)
    items = _items()
    batch = enc.encode(items, None, None, [True] * len(items))
    for (row, ends), truth, s in zip(batch["option_pos"], batch["option_true"], items, strict=True):
        ids = batch["ids"][row]
        for k, (end, option) in enumerate(zip(ends, s.options, strict=True)):
            upto = tok.decode(ids[: end + 1])
            assert upto.endswith(f"({s.letters[k]}) {option}"), (s.id, k, upto[-40:])
        assert truth == [float(k == s.answer) for k in range(len(s.options))]
    for (row, (end,)), word, s in zip(batch["question_pos"], batch["question_word"], items, strict=True):
        assert tok.decode(batch["ids"][row][: end + 1]).endswith(s.question)
        # the answer's first word after those all options share: "3", " grows" (not "It"), " left"
        answer = s.options[s.answer].removeprefix("It ")
        first = tok.decode([int(word)])
        assert first.strip() and answer.startswith(first.strip()), (s.id, first)
    for s in items:
        row, target = enc.open_ended(s)
        text = tok.decode(row)
        assert s.question in text and "Options" not in text
        lead = "It" if s.options[s.answer].startswith("It ") else ""
        assert text.rstrip().endswith(f"ASSISTANT: {lead}".rstrip()), text[-30:]
        assert s.options[s.answer].removeprefix("It ").startswith(tok.decode([target]).strip())


def test_training_forward_gives_the_models_logits_where_it_trains(script, model_and_processor) -> None:
    model, processor = model_and_processor
    tok = processor.tokenizer
    enc = script.Encoder(processor)
    items = _items()
    video_id = tok.convert_tokens_to_ids(processor.video_token)
    batch = enc.encode(items, [False, True, False], [False, False, True], [True, False, False])
    with torch.no_grad():
        last, at_options, at_question = script.answer_logits(
            model, batch, video_id, tok.pad_token_id, extra=True
        )
        for i, s in enumerate(items):
            ids = torch.tensor([batch["ids"][i]])
            if i == 1:  # the text-slot item has no video
                full = model(input_ids=ids).logits[0]
            else:
                pixels = script.video_pixels(processor, [s])
                full = model(input_ids=ids, pixel_values_videos=pixels).logits[0]
            torch.testing.assert_close(last[i], full[-1], atol=2e-3, rtol=0)
            if i == 0:
                (_, ends), (_, (q,)) = batch["option_pos"][0], batch["question_pos"][0]
                torch.testing.assert_close(at_options, full[ends], atol=2e-3, rtol=0)
                torch.testing.assert_close(at_question[0], full[q], atol=2e-3, rtol=0)
