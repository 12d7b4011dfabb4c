"""The engine keeps no full logits and its deepstack replay adds no rounding of its own.

- VideoLLaMA3 (transformers 5.24) ignores ``logits_to_keep`` and computes the head over
  every position; the engine must compute only the last position and keep a tensor of
  ``vocab`` floats, never a view into an ``N x vocab`` one.
- Qwen3-VL adds deepstack visual features to the residual stream between layers; the
  engine stores what was added in fp32 (a bf16 difference of two bf16 tensors is not
  always representable), so in bf16 replaying it onto the layer's own output gives back
  exactly the model's next hidden state.
"""

from __future__ import annotations

import pytest
import torch

from tiny import make_sample
from tiny_families import build_videollama3
from tiny_qwen import build_qwen_vl
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
        assert delta.dtype == torch.float32
        out, want = outputs[layer], hidden[layer + 1]
        # replaying the stored delta onto the layer's own output gives the model's next input
        assert torch.equal((out.float() + delta).to(torch.bfloat16), want), f"layer {layer}"
