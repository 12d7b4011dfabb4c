"""The engine keeps no full logits and its deepstack replay adds no rounding of its own.

- VideoLLaMA3 (transformers 5.24) ignores ``logits_to_keep`` and computes the head over
  every position; the engine must compute only the last position and keep a tensor of
  ``vocab`` floats, never a view into an ``N x vocab`` one.
- Qwen3-VL adds deepstack visual features to the residual stream between layers; the
  adapter records the features themselves as the model adds them, so in bf16 the engine
  adds them to a recomputed hidden state exactly as the model would (replaying the
  measured ``fl(h + v) - h`` instead was off by a bf16 rounding: 3e-2 in the logits).
"""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.families import build_videollama3
from tests.fixtures.qwen import build_qwen_vl
from tests.fixtures.tiny import make_sample
from vlmflow.engine import Engine, masked_forward
from vlmflow.models import load_model


@pytest.fixture(scope="module")
def videollama3(tmp_path_factory):
    return load_model(str(build_videollama3(tmp_path_factory.mktemp("vl3") / "m")))


def test_videollama3_ignores_logits_to_keep_but_the_engine_keeps_one_row(videollama3) -> None:
    adapter = videollama3
    prepared = adapter.prepare(make_sample(frames=4))
    n, vocab = prepared.layout.length, adapter.model.lm_head.out_features
    with torch.inference_mode():
        out = adapter.model(**prepared.inputs, logits_to_keep=1)
    assert out.logits.shape[1] == n > 1, "the model honours logits_to_keep now: this test proves nothing"

    seen: list[tuple[int, ...]] = []
    hook = adapter.model.lm_head.register_forward_hook(lambda m, a, o: seen.append(tuple(o.shape)))
    try:
        engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
        logits = engine.baseline_logits()
        plain, _ = masked_forward(adapter.language_model(), prepared.inputs, None)
    finally:
        hook.remove()
    assert seen == [(1, 1, vocab), (1, 1, vocab)], "the head ran over more than the last position"
    for t in (logits, plain):
        assert t.shape == (vocab,) and t.dtype == torch.float32
        assert t.untyped_storage().nbytes() == vocab * 4, "holds (a view of) a larger logits tensor"
    # the same answer as the model's own full head at the last position
    assert torch.allclose(logits, out.logits[0, -1].float(), atol=1e-5)


def test_qwen3_vl_deepstack_replay_is_exact_in_bf16(tmp_path) -> None:
    adapter = load_model(str(build_qwen_vl("qwen3_vl", tmp_path / "q3")), dtype="bfloat16")
    assert adapter.dtype == torch.bfloat16
    prepared = adapter.prepare(make_sample(frames=4))
    lm = adapter.language_model()
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: outputs.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(lm.layers)
    ]
    try:
        engine = Engine(lm, prepared.inputs, prepared.layout)
        hidden = engine.hidden_states
    finally:
        for h in hooks:
            h.remove()
    assert engine.deltas, "no deepstack additions seen: the test would prove nothing"
    for layer, delta in engine.deltas.items():
        assert delta.dtype == torch.bfloat16  # the recorded features, not a measured difference
        out, want = outputs[layer], hidden[layer + 1]
        # replaying the stored addition onto the layer's own output gives the model's next input
        assert torch.equal(out + delta, want), f"layer {layer}"


def test_qwen3_vl_knockouts_equal_the_full_masked_forward_in_bf16(tmp_path) -> None:
    """A recompute from a layer before the deepstack layers adds the features to its own
    hidden state: the engine's logits equal a full masked forward's bit for bit in bf16."""
    from vlmflow.engine import full_forward_logits
    from vlmflow.probe import Model

    adapter = load_model(str(build_qwen_vl("qwen3_vl", tmp_path / "q3")), dtype="bfloat16")
    probe = Model(adapter).probe(make_sample(frames=4))
    plans = [probe.engine.compile(probe.plan(p)) for p in ("video->last", "frames:<1->frame:1")]
    for plan, got in zip(plans, probe.engine.evaluate(plans), strict=True):
        want = full_forward_logits(probe.engine.lm, probe.prepared.inputs, plan)
        assert torch.equal(got, want), (got - want).abs().max().item()
