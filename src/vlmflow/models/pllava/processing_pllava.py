"""PLLaVA's processor: a long/short-edge resize of the whole video, then the CLIP image
processor, and a tokenizer; the placeholder is written out once per pooled embedding."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import PromptError, UnsupportedModelError
from ...prompt import PromptText
from .modeling_pllava import check_pooling_shape, read_config_dict, read_repo_json

log = logging.getLogger(__name__)

PROCESSOR_FILE = "pllava_processor.json"
LONG_EDGE_CAP = 640  # PLLaVA's resize_crop_longshort caps the long edge at 640 px


class PllavaProcessor:
    """PLLaVA's processor: long/short-edge video resize, CLIP frames, tokenizer.

    ``image_processor`` is a CLIP image processor (PIL backend, as transformers 4.40's
    ``CLIPImageProcessor`` that PLLaVA used). One video's placeholder expands into
    ``t*h'*w'`` tokens for a ``pooling_shape`` (whatever the frame count), or into
    ``T * tokens_per_frame`` without pooling (the paper's Mini-InternVL reuses this
    processor). Saved next to the checkpoint as the image processor's and tokenizer's own
    files plus ``pllava_processor.json``; a folder without that file (PLLaVA's own
    checkpoints) takes ``pooling_shape`` and the placeholder from ``config.json``.
    """

    chat_template = None  # PLLaVA has none: the paper's prompt is built by vlmflow.prompt

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        *,
        pooling_shape: Sequence[int] | None = None,
        tokens_per_frame: int | None = None,
        image_token: str = "<image>",
    ) -> None:
        if (pooling_shape is None) == (tokens_per_frame is None):
            raise UnsupportedModelError("PllavaProcessor takes one of pooling_shape and tokens_per_frame")
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        shape = None if pooling_shape is None else check_pooling_shape(pooling_shape, "processor")
        self.pooling_shape = shape
        self.tokens_per_frame = tokens_per_frame
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise UnsupportedModelError(f"the tokenizer has no {image_token!r} token")

    def num_video_tokens(self, num_frames: int) -> int:
        """How many placeholder tokens one video of ``num_frames`` frames expands into."""
        if self.pooling_shape is not None:
            return math.prod(self.pooling_shape)
        assert self.tokens_per_frame is not None
        return num_frames * self.tokens_per_frame

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        extra: dict[str, Any] = {"processor_class": type(self).__name__, "image_token": self.image_token}
        if self.pooling_shape is not None:
            extra["pooling_shape"] = list(self.pooling_shape)
        else:
            extra["tokens_per_frame"] = self.tokens_per_frame
        (path / PROCESSOR_FILE).write_text(json.dumps(extra, indent=1) + "\n")

    @classmethod
    def from_pretrained(
        cls, path: str, *, pooling_shape: Sequence[int] | None = None, config: dict[str, Any] | None = None
    ) -> PllavaProcessor:
        """Load from a checkpoint folder or hub id (``config``: its raw ``config.json``)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        extra = read_repo_json(path, PROCESSOR_FILE) or {}
        if config is None:
            try:
                config = read_config_dict(path)
            except UnsupportedModelError:  # a processor saved on its own
                config = {}
        image_token = extra.get("image_token")
        if image_token is None:
            image_token = tokenizer.convert_ids_to_tokens(int(config.get("image_token_index", 32000)))
        image_processor = clip_image_processor(path, config)
        if pooling_shape is None and "tokens_per_frame" in extra:
            per_frame = int(extra["tokens_per_frame"])
            return cls(image_processor, tokenizer, tokens_per_frame=per_frame, image_token=image_token)
        shape = pooling_shape or extra.get("pooling_shape") or config.get("pooling_shape") or (8, 16, 16)
        return cls(image_processor, tokenizer, pooling_shape=shape, image_token=image_token)

    # ------------------------------------------------------------------ processing
    def __call__(
        self,
        text: str | list[str] | None = None,
        videos: Sequence[Sequence[np.ndarray]] | None = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``text``: prompts, each with one ``<image>`` per video; ``videos``: one list of
        ``(H, W, 3)`` uint8 frames per video (all the same length). Returns ``input_ids``
        and ``attention_mask`` ``(B, N)`` and ``pixel_values`` ``(V, T, 3, S, S)``."""
        if return_tensors != "pt":
            raise UnsupportedModelError("PllavaProcessor returns PyTorch tensors only (return_tensors='pt')")
        out: dict[str, Any] = {}
        num_frames = 0
        if videos is not None and len(videos):
            clips = self.resize_long_short([[np.asarray(f) for f in v] for v in videos])
            lengths = {len(v) for v in clips}
            if len(lengths) != 1:
                raise PromptError(f"videos of one batch must have equal frame counts, got {sorted(lengths)}")
            num_frames = lengths.pop()
            pixels = [self.image_processor(v, return_tensors="np")["pixel_values"] for v in clips]
            out["pixel_values"] = torch.from_numpy(np.stack(pixels))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            placeholders = sum(t.count(self.image_token) for t in texts)
            if placeholders != (len(videos) if videos is not None else 0):
                raise PromptError(
                    f"{placeholders} {self.image_token!r} placeholders for "
                    f"{len(videos) if videos is not None else 0} videos"
                )
            run = self.image_token * self.num_video_tokens(num_frames)
            expanded = [t.replace(self.image_token, run) for t in texts]
            enc = self.tokenizer(expanded, return_tensors="pt", padding=len(expanded) > 1, **kwargs)
            out["input_ids"] = enc["input_ids"]
            out["attention_mask"] = enc["attention_mask"]
        return out

    def resize_long_short(self, videos: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """PLLaVA's pre-resize of a batch of videos (``resize_crop_longshort``), re-stated.

        The short edge goes to ``s = max(clip, min(max short edge, cap / r))`` where ``r``
        is the smallest long/short ratio in the batch and ``cap = min(640, max long edge)``;
        each video is resized (bicubic, aspect kept) and cut along its long edge to
        ``int(s * r)`` px. The cut starts at a quarter of the excess, not half (as PLLaVA's
        code does); for one video the excess is 0 or 1 px, so the net effect per frame is
        a bicubic resize before the CLIP resize and centre crop.
        """
        from transformers.image_transforms import get_resize_output_image_size, resize
        from transformers.image_utils import ChannelDimension, PILImageResampling

        last = ChannelDimension.LAST
        sizes = [v[0].shape[:2] for v in videos]
        rates = [max(s) / min(s) for s in sizes]
        rate = min(rates)
        clip = self.image_processor.size.get("shortest_edge") or self.image_processor.size.get("height")
        cap = min(LONG_EDGE_CAP, max(max(s) for s in sizes))
        short = max(min(max(min(s) for s in sizes), int(cap / rate)), int(clip))
        long = int(short * rate)
        out = []
        for video in videos:
            frames = []
            for frame in video:
                size = get_resize_output_image_size(
                    frame, size=short, default_to_square=False, max_size=9999, input_data_format=last
                )
                frame = resize(frame, size, resample=PILImageResampling.BICUBIC, input_data_format=last)
                h, w = frame.shape[:2]
                start = max(0, ((max(h, w) - long) // 2) // 2)  # PLLaVA: no clamp (breaks at -1)
                frame = frame[start : start + long] if h > w else frame[:, start : start + long]
                frames.append(frame)
            out.append(frames)
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


def expand_run(prompt: PromptText, input_ids: torch.Tensor, token_id: int) -> tuple[str, int]:
    """The prompt with its placeholder written out once per ``token_id`` in ``input_ids``
    ``(1, N)`` (as the processor did), and the character shift of the text after it."""
    n = int((input_ids[0] == token_id).sum())
    tok, at = prompt.placeholder, prompt.placeholder_at
    return prompt.text[:at] + tok * n + prompt.text[at + len(tok) :], (n - 1) * len(tok)


def clip_image_processor(path: str, config: dict[str, Any]) -> Any:
    """The checkpoint's CLIP image processor (PIL backend), or CLIP defaults at the tower's
    resolution when the folder has no ``preprocessor_config.json``."""
    from transformers import CLIPImageProcessorPil

    try:
        return CLIPImageProcessorPil.from_pretrained(path)
    except OSError:
        size = int((config.get("vision_config") or {}).get("image_size", 336))
        log.warning("%s has no preprocessor_config.json; using CLIP preprocessing at %d px", path, size)
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
