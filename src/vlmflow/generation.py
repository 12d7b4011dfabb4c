"""Generation under a plan (open-ended knockout).

The plan's masks apply at prefill exactly as in a knockout; at every decoding step the
new token inherits the cut row of the last prompt token (what it may not attend to among
the prompt) and attends freely to the tokens generated before it, as the paper's code did.
Decoding is the model's own greedy ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cuts import CompiledPlan
from .engine import LanguageModel, _layer_impl, as_4d, check_full_attention, softmax64, to_attention_mask
from .hooks import layer_hooks


@dataclass(frozen=True)
class Generation:
    """Greedy continuation: new token ids and the first step's probabilities ``(vocab,)``
    (float64, ``softmax64``)."""

    token_ids: tuple[int, ...]
    first_probs: torch.Tensor


@torch.inference_mode()
def generate_with_plan(
    model: Any,
    lm: LanguageModel,
    inputs: dict[str, Any],
    compiled: CompiledPlan | None,
    *,
    max_new_tokens: int = 16,
) -> Generation:
    """Greedy generation from ``inputs`` (batch 1) with ``compiled``'s cuts in force."""
    default = lm.attn_implementation()
    n = int(inputs["input_ids"].shape[1])
    if compiled is not None:  # the masks below would replace a sliding window's
        check_full_attention(lm, n + max_new_tokens - 1)
    steps: dict[int, int] = {}

    def pre(i: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        m = compiled.blocked.get(i) if compiled is not None else None
        if m is None:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        q = h.shape[1]
        impl = _layer_impl(lm, i, default)
        if q == n:  # prefill
            allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~torch.from_numpy(m)
        else:  # one new token; key length grows by one per step
            steps[i] = steps.get(i, 0) + 1
            row = ~torch.from_numpy(m[..., n - 1, :])  # (N,) or per head (H, N)
            row = torch.cat([row, torch.ones(*row.shape[:-1], steps[i], dtype=torch.bool)], dim=-1)
            allowed = row[..., None, :]
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = to_attention_mask(as_4d(allowed).to(h.device), impl, h.dtype)
        return args, kwargs

    with layer_hooks(lm.layers, pre=pre):
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, n:].tolist()
    return Generation(tuple(int(t) for t in new), softmax64(out.logits[0][0]))
