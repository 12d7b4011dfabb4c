"""Adapter for Hugging Face ``VideoLlama3ForConditionalGeneration`` (transformers-native).

The processor resizes every frame to a multiple of ``patch * merge`` (28 at real size)
within a pixel budget shared by the frames, and expands the video placeholder into
``Time {t:.1f}s:`` + the frame's video tokens, frames joined by ``,``. A frame's tokens
are its ``(h/m) x (w/m)`` merged patch grid (``video_grid_thw`` / ``video_merge_sizes``).

Token compression (the processor's ``use_token_compression``) drops patches that barely
change from the previous frame, so per-frame counts vary and a frame's tokens no longer
form its grid; it also makes frame ``t``'s tokens depend on frame ``t-1``'s pixels. The
paper turns it off ("DO NOT REMOVE", REFERENCE_NOTES §3.3) and so does this adapter by
default (``token_compression=False``). With it on, spans still follow the processor's own
per-frame counts and a compressed frame's grid is reported as ``(1, n)``.

Timestamps: decoded samples carry no frame times, so frames are stamped at 1 fps
(``Time 0.0s:``, ``Time 1.0s:``, ...). Frame ``t``'s span runs from the comma before it
(none for the first frame) through its last video token; the grid starts after the stamp.

The ``paper`` prompt style is what the paper ran for VideoLLaMA3 (its
``videollama3/evaluation/benchmarks/tvbench.py``): the native chat template with no system
turn, the user turn ``Question: ...\nOptions:\n(A) ...\n`` + :data:`PAPER_INSTRUCTION`,
no answer prefix (so *last* is the newline after ``assistant``), frames sampled evenly
including the first and the last (``linspace``), and the paper's visual-token budget
(:data:`PAPER_MAX_VISUAL_TOKENS` shared by the frames, instead of the processor's own:
768 for the HF checkpoint, 96 a frame at 8 frames; ``max_visual_tokens`` sets another,
``None`` keeps the processor's). ``mvbench`` is the LLaVA template the
other families use; ``chat`` the chat template with the system prompt and ``Best option:(``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PromptError
from ..prompt import PromptText, locate_prompt, question_block
from ..sample import Sample
from .base import MODELS, NO_HUB_KERNELS, Adapter
from .frames import Grid, ReplacementAdapter
from .processors import load_processor

# the paper's processor.image_processor.max_tokens ("DO NOT REMOVE", REFERENCE_NOTES §3.3):
# 8 * 12 * 12 merged tokens shared by the frames, so <= 144 a frame at 8 frames
PAPER_MAX_VISUAL_TOKENS = 1152
# videollama3/evaluation/benchmarks/tvbench.py of the paper's code
PAPER_INSTRUCTION = (
    "Answer with the option's letter from the given choices directly and only give the best option."
)


@MODELS.register("videollama3", "VideoLLaMA3 (HF VideoLlama3ForConditionalGeneration)")
class VideoLlama3Adapter(ReplacementAdapter):
    family = "videollama3"
    model_types = ("video_llama_3",)
    supports = Adapter.supports + " (frame = timestamp + grid; token compression off by default)"
    frame_separator = ","  # VideoLlama3Processor.replace_video_token joins the frames with it
    paper_final_norm = True  # gen_prob_analysis_videollama3.py norms every intermediate layer

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        token_compression: bool = False,
        max_visual_tokens: int | None | str = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, processor, **kwargs)
        self.token_compression = token_compression
        # "paper": PAPER_MAX_VISUAL_TOKENS under the paper prompt, else the processor's own
        self.max_visual_tokens = max_visual_tokens

    @classmethod
    def frame_policy_for(cls, prompt_style: str) -> str:
        """``linspace`` (VideoLLaMA3's own sampling, first and last frame) under ``paper``."""
        return "linspace" if prompt_style == "paper" else cls.default_frame_policy

    def build_prompt(self, sample: Sample) -> PromptText:
        """The paper's VideoLLaMA3 prompt under ``paper`` (see the module doc), else the base
        class's ``mvbench`` / ``chat`` prompts."""
        if self.prompt_style != "paper":
            return super().build_prompt(sample)
        user = sample.question
        if sample.is_multiple_choice:
            user = question_block(sample)[0] + "\n" + PAPER_INSTRUCTION
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return locate_prompt(sample, text, self.video_placeholder)

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        from transformers import (
            VideoLlama3ForConditionalGeneration,
            VideoLlama3Processor,
            VideoLlama3VideoProcessor,
        )

        model = VideoLlama3ForConditionalGeneration.from_pretrained(path, **kwargs, **NO_HUB_KERNELS)
        processor = load_processor(VideoLlama3Processor, VideoLlama3VideoProcessor, path)
        return model, processor

    def processor_kwargs(self, frames: np.ndarray) -> dict[str, Any]:
        t = len(frames)
        metadata = {"total_num_frames": t, "fps": 1.0, "frames_indices": list(range(t))}
        kwargs: dict[str, Any] = {"video_metadata": [metadata]}
        kwargs["use_token_compression"] = self.token_compression
        budget = self.visual_token_budget
        if budget is not None:
            video = self.processor.video_processor
            factor = int(video.patch_size) * int(video.merge_size)
            size = {"shortest_edge": int(video.size["shortest_edge"]), "longest_edge": budget * factor**2}
            kwargs["videos_kwargs"] = {"size": size}
        return kwargs

    def processing(self) -> dict[str, Any]:
        return {**super().processing(), "visual_token_budget": self.visual_token_budget}

    @property
    def visual_token_budget(self) -> int | None:
        """Merged visual tokens the frames share (each frame gets at most its even share),
        or ``None`` for the processor's own budget."""
        if self.max_visual_tokens == "paper":
            return PAPER_MAX_VISUAL_TOKENS if self.prompt_style == "paper" else None
        return self.max_visual_tokens  # type: ignore[return-value]

    @property
    def media_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    def frame_grids(self, inputs: dict[str, Any], pieces: Sequence[str]) -> list[tuple[Grid, int]]:
        thw = inputs["video_grid_thw"]  # (1, 3): frames, patch rows, patch cols
        merge = int(inputs["video_merge_sizes"][0])
        if thw.shape[0] != 1:
            raise PromptError(f"{self.model_id}: expected one video, the processor made {thw.shape[0]}")
        t, ph, pw = (int(x) for x in thw[0])
        grid = (ph // merge, pw // merge)
        token = self.processor.video_token
        counts = [p.count(token) for p in pieces]
        if len(pieces) != t or any(not 0 < c <= grid[0] * grid[1] for c in counts):
            raise PromptError(
                f"{self.model_id}: {t} frames of {grid[0]}x{grid[1]} tokens but the processor wrote "
                f"frames with {counts} tokens"
            )
        mask = inputs.get("video_compression_mask")
        if mask is not None and int(mask.sum()) != sum(counts):
            raise PromptError(
                f"{self.model_id}: the compression mask keeps {int(mask.sum())} tokens, "
                f"the prompt has {sum(counts)}"
            )
        return [((grid if c == grid[0] * grid[1] else (1, c)), c) for c in counts]
