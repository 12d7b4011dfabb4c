"""The Mini-InternVL adapter: the paper's phi3 prompt, frames as ``<IMG_CONTEXT>`` runs."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import PromptError
from ...layout import Span
from ...prompt import (
    ANSWER_PROMPT,
    POST_PROMPT,
    SYSTEM_MVBENCH_OPEN_ENDED,
    PromptText,
    open_ended_prompt,
    question_block,
)
from ...sample import Sample
from ..base import MODELS, Adapter, VideoTokens, contiguous_run
from ..pllava import expand_run, read_config_dict
from .modeling_mini_internvl import hf_config, is_mini_internvl_config, load_mini_internvl
from .processing_mini_internvl import CONTEXT_TOKEN, load_tokenizer, mini_internvl_processor

# the phi3 template's roles; its user separator is a space, so no <|end|> follows a user turn
PHI3_USER, PHI3_ASSISTANT = "<|user|>\n", "<|assistant|>\n"


def phi3_prompt(sample: Sample, system: str) -> PromptText:
    """The paper's ``eval_mvbench_phi3`` conversation (REFERENCE_NOTES §2.2, §2.4):
    ``{system} <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\n{question} \nOnly give the
    best option. <|assistant|>\nBest option:(`` (user turns end in a space, no ``<|end|>``).
    A sample without options gets :func:`phi3_open_ended_prompt`."""
    if not sample.options:
        return phi3_open_ended_prompt(sample)
    block, q_range, opts = question_block(sample)
    before = system + " " + PHI3_USER + "<img>"
    mid = CONTEXT_TOKEN + "</img>\n " + PHI3_USER
    at = len(before) + len(mid)
    text = before + mid + block + " " + POST_PROMPT + " " + PHI3_ASSISTANT + ANSWER_PROMPT
    return PromptText(
        text=text,
        placeholder=CONTEXT_TOKEN,
        placeholder_at=len(before),
        system=(0, len(system.rstrip())),
        question=(at, at + len(block)),
        question_no_options=(at + q_range[0], at + q_range[1]),
        options=tuple((at + a, at + b) for a, b in opts),
    )


def phi3_open_ended_prompt(sample: Sample, system: str = SYSTEM_MVBENCH_OPEN_ENDED) -> PromptText:
    """The paper's ``eval_mvbench_open_ended_phi3`` conversation for a sample without options:
    ``{system} <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\n{question} <|assistant|>\n``,
    the system prompt the MVBench one ending "answer the question concisely.". As
    :func:`~vlmflow.prompt.open_ended_prompt` does for the LLaVA template, the sample's
    ``meta`` may set ``system``, ``question_template`` (``"Question: {q}\n"``) and
    ``answer_prompt`` (text the assistant turn starts with)."""
    return open_ended_prompt(
        sample, CONTEXT_TOKEN, system, roles=(PHI3_USER, PHI3_ASSISTANT), video=("<img>", "</img>\n")
    )


@MODELS.register(
    "mini_internvl", "Mini-InternVL-4B-Video-FT: original InternVL-Chat (InternViT + Phi-3) checkpoints"
)
class MiniInternVLAdapter(Adapter):
    """Adapter for original-format InternVL-Chat checkpoints with Phi-3 (the paper's
    Mini-InternVL-4B-Video-FT). Claimed through :meth:`matches` (``internvl_chat`` is not a
    transformers model type). Frame ``t`` is ``[s + t*n, s + (t+1)*n)`` with ``n = 256``
    (16 x 16 after pixel shuffle) at 448 px; any frame count works (no pooling). Under
    ``ps_version`` v1 (the default of a config without one) each frame's tokens run
    column-major over it (``TokenLayout.grid_order``)."""

    family = "mini_internvl"
    model_types = ()
    supports = Adapter.supports + " (claims internvl_chat configs with a Phi-3 LLM)"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return is_mini_internvl_config(config)

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        raw = read_config_dict(path)
        tokenizer = load_tokenizer(path, raw)
        config = hf_config(raw, tokenizer.convert_tokens_to_ids(CONTEXT_TOKEN))
        model, _ = load_mini_internvl(path, config, **kwargs)
        return model, mini_internvl_processor(tokenizer, raw, config.image_seq_length)

    @property
    def video_placeholder(self) -> str:
        return CONTEXT_TOKEN

    def build_prompt(self, sample: Sample) -> PromptText:
        if self.prompt_style == "paper":
            return phi3_prompt(sample, self.system_prompt)
        return super().build_prompt(sample)

    def process(self, text: str, frames: Any) -> dict[str, Any]:
        out = self.processor(text=text, videos=[list(frames)], return_tensors="pt")
        out["pixel_values"] = out["pixel_values"].flatten(0, 1)  # frames as images: (T, C, H, W)
        return out

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        return expand_run(prompt, input_ids, self.processor.image_token_id)

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        cfg = self.model.config
        t = int(inputs["pixel_values"].shape[0])
        patch = cfg.vision_config.patch_size
        patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
        side = int(inputs["pixel_values"].shape[-1] // patch * cfg.downsample_ratio)
        n = side * side
        video = contiguous_run(input_ids, self.processor.image_token_id, "video")
        if len(video) != t * n:
            raise PromptError(f"{len(video)} <IMG_CONTEXT> tokens for {t} frames of {side}x{side}")
        frames = tuple(Span(video.start + i * n, video.start + (i + 1) * n) for i in range(t))
        # ps_version v1's pixel shuffle leaves each frame's grid transposed: its tokens run
        # column-major over the frame (the model was trained so; overlays must follow it)
        order = "column" if getattr(cfg, "ps_version", "v2") == "v1" else "row"
        return VideoTokens(video, frames, ((side, side),) * t, grid_order=order)
