"""The adapter contract: the only model-family-specific code in vlmflow.

An adapter loads a checkpoint with its real processor, prepares a ``Sample`` into model
inputs plus a ``TokenLayout``, and names the language model's decoder layers, final norm,
output head and embeddings. Everything family-neutral (prompt text, character-to-token
mapping through the tokenizer's offsets, answer-letter ids) lives here.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..checkpoint import NO_HUB_KERNELS  # noqa: F401  (every adapter's from_pretrained keywords)
from ..engine import MASKABLE_ATTENTION, LanguageModel
from ..errors import PromptError, UnsupportedModelError
from ..layout import Span, TokenLayout
from ..prompt import (
    ANSWER_PROMPT,
    POST_PROMPT,
    PROMPT_STYLES,
    SYSTEM_MVBENCH,
    PromptText,
    locate_prompt,
    open_ended_prompt,
    paper_prompt,
    question_block,
)
from ..registry import Registry
from ..rundir import DTYPE_NAMES, canonical_dtype
from ..sample import Sample, check_frames
from .processors import frames_as_given

log = logging.getLogger(__name__)

MODELS: Registry[type[Adapter]] = Registry("model family")


@dataclass
class Prepared:
    """One sample ready for the engine.

    ``inputs``: keyword arguments of the model's forward (batch 1, on the model's device);
    ``option_ids``: the token id of each option letter as the next token after the prompt;
    ``frames``: the decoded frames ``(T, H, W, 3)`` the processor was given (for overlays);
    ``frame_policy``: the policy they were sampled from the video with (``None``: the
    sample brought its own frames).
    """

    sample: Sample
    inputs: dict[str, Any]
    layout: TokenLayout
    prompt: str
    option_ids: tuple[int, ...]
    frames: np.ndarray | None = None
    frame_policy: str | None = None

    def __repr__(self) -> str:  # not the inputs' tensors, the frames and the whole layout
        return (
            f"Prepared({self.sample.id!r}, tokens={self.layout.length}, frames={self.num_frames}, "
            f"inputs=[{', '.join(self.inputs)}])"
        )

    @property
    def answer_id(self) -> int | None:
        a = self.sample.answer
        return None if a is None else self.option_ids[a]

    @property
    def num_frames(self) -> int:
        """How many frames this input was built from: the frames given to the processor
        (the sample's own, or those decoded from its video); without them, the layout's
        frame groups times the frames each group fuses."""
        if self.frames is not None:
            return int(self.frames.shape[0])
        return self.layout.num_frames * self.layout.frames_per_group


@dataclass(frozen=True)
class ModuleNames:
    """Where a family's language model keeps its parts: attribute paths from the loaded
    model (``layers``: the decoder layers in order, ``norm``: the final norm, ``lm_head``: the
    output head, ``embed``: the input embeddings) and ``attention``, the attribute of each
    decoder layer that is its attention module (whose config names its implementation)."""

    layers: str = "model.language_model.layers"
    norm: str = "model.language_model.norm"
    lm_head: str = "lm_head"
    embed: str = "model.language_model.embed_tokens"
    attention: str = "self_attn"


@dataclass(frozen=True)
class VideoTokens:
    """Where the processor put the visual tokens: the whole run, each frame group and its grid
    (``grid_order``: how the tokens run over it, ``"row"``-major or ``"column"``-major; see
    :class:`~vlmflow.layout.TokenLayout`)."""

    video: Span
    frames: tuple[Span, ...]
    grids: tuple[tuple[int, int], ...]
    frames_per_group: int = 1
    grid_offsets: tuple[int, ...] = ()
    grid_order: str = "row"


class Adapter:
    """Base class of model-family adapters; subclasses fill the family hooks below."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    supports: ClassVar[str] = "all analyses (flow, answer-prob, logit-lens, attention, pathways, open-ended)"
    default_frame_policy: ClassVar[str] = "segment_middle"
    modules: ClassVar[ModuleNames] = ModuleNames()  # every HF family here has this layout
    # whether the paper's answer-probability code normed intermediate layers for this family
    # (``answer-prob --paper``): its LLaVA/InternVL code did not, its VideoLLaMA3 code did
    paper_final_norm: ClassVar[bool] = False
    # a key of processing() -> what changed in it before run folders recorded it (said when a
    # resume of such a folder is refused; see processing_before)
    processing_changes: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str = "",
        prompt_style: str = "paper",
        num_frames: int = 8,
        frame_policy: str | None = None,
        system_prompt: str = SYSTEM_MVBENCH,
    ) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise PromptError(f"unknown prompt style {prompt_style!r}; choose from {PROMPT_STYLES}")
        if getattr(model, "use_kernels", False):
            # a model the user loaded (transformers 5.25 turns hub kernels on by default):
            # the torch implementations, as every vlmflow loader asks (NO_HUB_KERNELS)
            model.use_kernels = False
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id  # what the user named (records' ``model``; see load_model)
        self.model_path = model_id  # the folder or hub id it was loaded from (provenance)
        self.prompt_style = prompt_style
        self.num_frames = num_frames
        self.num_frames_chosen = False  # set by a user (Model.configured), not a default
        self.frame_policy = frame_policy or self.frame_policy_for(prompt_style)
        # chosen by a user (Model.configured, Options): it then wins over a dataset's own
        self.frame_policy_chosen = frame_policy is not None
        # the run folder's rule (RunDir.frame_policy_rule) and the run's samples, whose
        # frame policy processing() records (Options.configure): see frame_policy_of
        self.frame_policy_rule = "chosen"
        self.policy_samples: list[Sample] = []
        self.system_prompt = system_prompt
        # (frames a sample brought, num_frames) pairs already warned about; shared by the
        # shallow copies of Model.configured, so a run (or a loaded model) warns once each
        self._own_frames_warned: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ family hooks
    @classmethod
    def frame_policy_for(cls, prompt_style: str) -> str:
        """The frame policy used under ``prompt_style`` when the user chose none (a class
        fact, so every configured copy of an adapter agrees): :attr:`default_frame_policy`."""
        return cls.default_frame_policy

    def processing(self) -> dict[str, Any]:
        """Settings of this family's input processing that change the records and that the
        run's options do not name (a resume that would process inputs otherwise is refused;
        see ``api.refuse_other_computed_in``): the frame policy the run's samples are
        sampled with (:meth:`frame_policy_of`), and a family's own (VideoLLaMA3's
        visual-token budget)."""
        return {"frame_policy": self.frame_policy_of(self.policy_samples)}

    def processing_before(self) -> dict[str, Any]:
        """What a run folder that does not record a key of :meth:`processing` (one started
        before vlmflow recorded it) processed its inputs with, for each key whose processing
        changed before it was recorded: a resume compares that with now's and is refused
        when they differ (``api.refuse_other_computed_in``; :attr:`processing_changes` says
        what changed). Default: none - a key a folder does not record is taken as processed
        as now, and recorded on its next resume."""
        return {}

    def policy_for(self, sample: Sample, default: str | None = None) -> str:
        """The frame policy ``sample``'s video is sampled with: the one the user chose
        (``Model.configured``, ``Options(frame_policy=...)``), else the benchmark's own where
        its loader set one (LongVideoBench's ``lvb``), else the adapter's default. A run
        folder started before the user's choice won (``RunDir.frame_policy_rule``
        ``"benchmark"``) is resumed with ``frame_policy_chosen`` off: there the benchmark's
        own wins, as it did. ``default``: the adapter's policy to read instead of
        ``frame_policy`` (as such a folder's ``computed_in`` recorded it)."""
        own = self.frame_policy if default is None else default
        if getattr(self, "frame_policy_chosen", False) and default is None:
            return own
        return str(sample.meta.get("frame_policy", own))

    def frame_policy_of(self, samples: Sequence[Sample], default: str | None = None) -> str | list[str]:
        """The frame policy ``samples`` are sampled with (:meth:`policy_for`), over those
        decoded from a video; the sorted list when they differ; the adapter's own when none
        is decoded from a video. ``default``: read the samples by the rule of a folder
        started before the user's choice won, with ``default`` as the adapter's policy."""
        used = sorted({self.policy_for(s, default) for s in samples if s.frames is None and s.error is None})
        if not used:
            return self.frame_policy if default is None else default
        return used[0] if len(used) == 1 else used

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Claim a checkpoint from its raw ``config.json`` before the ``model_type`` lookup:
        for families whose checkpoints reuse another family's ``model_type`` (PLLaVA's say
        ``llava``) or one transformers does not know."""
        return False

    @classmethod
    def load_model(cls, path: str, **kwargs: Any) -> tuple[Any, Any]:
        """Load ``(model, processor)`` from a local folder or hub id."""
        raise NotImplementedError

    @property
    def video_placeholder(self) -> str:
        raise NotImplementedError

    def process(self, text: str, frames: np.ndarray) -> dict[str, Any]:
        """Run the real processor on one prompt and one video ``(T, H, W, 3)`` uint8, the
        frames used as given (never sampled again: :func:`~.processors.frames_as_given`)."""
        kwargs = frames_as_given(self.processor)
        return dict(self.processor(text=text, videos=[list(frames)], return_tensors="pt", **kwargs))

    def expand_placeholder(self, prompt: PromptText, input_ids: torch.Tensor) -> tuple[str, int]:
        """The prompt text as the tokenizer saw it (placeholder expanded) and the character
        shift that the expansion adds to everything after the placeholder."""
        raise NotImplementedError

    def video_tokens(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> VideoTokens:
        raise NotImplementedError

    # ------------------------------------------------------------------ loading
    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The adapter options this family accepts as keyword arguments of ``load_model``
        (``num_frames``, ``prompt_style``, a family's own such as ``video_pixels``): the
        keyword-only parameters of its ``load`` and ``__init__``, following each ``**kwargs``
        to the class that receives it."""
        names: set[str] = set()
        for method in ("load", "__init__"):
            for klass in cls.__mro__:
                fn = klass.__dict__.get(method)
                if fn is None:
                    continue
                params = inspect.signature(getattr(fn, "__func__", fn)).parameters.values()
                names.update(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
                if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                    break
        return tuple(sorted(names - _LOAD_SETTINGS))

    @classmethod
    def check_options(cls, spec: str, options: dict[str, Any]) -> None:
        """Refuse options this family does not accept before anything loads: an
        ``UnsupportedModelError`` naming each, a close match where one exists, and the
        options the family accepts."""
        known = cls.options()
        unknown = [k for k in options if k not in known]
        if not unknown:
            return
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UnsupportedModelError(
            f"{spec}: the {cls.family or cls.__name__} adapter has no option {', '.join(hints)}; "
            f"its options: {', '.join(known)}"
        )

    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        **kwargs: Any,
    ) -> Adapter:
        """Load a checkpoint with its processor.

        ``dtype`` None means float32 on CPU (bf16 matmuls are slow there and add ~5e-3 of
        rounding to every knockout) and the checkpoint's own dtype on an accelerator."""
        cls.check_options(str(path), kwargs)
        torch_dtype = default_dtype(dtype, device)
        model, processor = cls.load_model(path, dtype=torch_dtype, attn_implementation=attn_implementation)
        return cls(model.to(device), processor, model_id=str(path), **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in."""
        return next(self.model.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        """The language model's trained context (``max_position_embeddings``), if known."""
        cfg = self.model.config
        for c in (getattr(cfg, "text_config", None), getattr(cfg, "llm_config", None), cfg):
            n = getattr(c, "max_position_embeddings", None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    # ------------------------------------------------------------------ handles
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def module(self, part: str) -> Any:
        """The language model's ``part`` (``layers``, ``norm``, ``lm_head`` or ``embed``) found
        by its path in :attr:`modules`; a missing path is an error naming it."""
        path = getattr(self.modules, part)
        obj = self.model
        for name in path.split("."):
            if not hasattr(obj, name):
                raise UnsupportedModelError(
                    f"{self.model_id or self.family}: no {part} at model.{path} ({type(obj).__name__} has no "
                    f"{name!r}); the adapter's module names do not match this checkpoint's classes"
                )
            obj = getattr(obj, name)
        return obj

    @property
    def num_layers(self) -> int:
        return len(self.module("layers"))

    def attn_implementation(self) -> str:
        attention = getattr(self.module("layers")[0], self.modules.attention)
        return attention.config._attn_implementation

    def ensure_maskable(self) -> None:
        """Knockout needs eager or sdpa attention: switch (with a warning) if the model
        was loaded with an attention kernel that ignores masks (flash, flex)."""
        impl = self.attn_implementation()
        if impl in MASKABLE_ATTENTION:
            return
        log.warning("attention %r ignores knockout masks; switching the model to 'sdpa'", impl)
        self.model.set_attn_implementation("sdpa")
        if self.attn_implementation() not in MASKABLE_ATTENTION:
            raise UnsupportedModelError(
                f"{self.model_id}: could not switch attention from {impl!r} to sdpa; load it "
                "with attn_implementation='sdpa' or 'eager' for knockout"
            )

    def language_model(self) -> LanguageModel:
        return LanguageModel(
            forward=self.model,
            layers=self.module("layers"),
            norm=self.module("norm"),
            lm_head=self.module("lm_head"),
            embed_tokens=self.module("embed"),
            attn_implementation=self.attn_implementation,
            attention=self.modules.attention,
        )

    # ------------------------------------------------------------------ preparation
    def frames_of(self, sample: Sample) -> np.ndarray:
        """Decoded frames ``(T, H, W, 3)``: the sample's own, or sampled from its video with
        :meth:`policy_for` (the user's policy, else the benchmark's where the loader set one,
        LongVideoBench's, else the adapter's).
        Frames of another shape or dtype than ``(T >= 1, H, W, 3)`` uint8 are a ``DataError``
        naming the sample (:func:`~vlmflow.sample.check_frames`).

        ``num_frames`` is the number of frames *decoded from a video*: frames that come
        with the sample are used as given, never subsampled or repeated. When their count
        differs from a ``num_frames`` the user chose (``Model.configured``: a run's options,
        ``Model.probe(num_frames=...)``) a ``UserWarning`` says so, once per (count,
        setting) for this adapter and its configured copies (so once per run)."""
        if sample.frames is not None:
            frames = check_frames(sample.frames, sample.id)
            self._warn_own_frames(sample, frames)
            return frames
        from ..data.video import load_sample_frames

        return check_frames(load_sample_frames(sample, self.num_frames, self.policy_for(sample)), sample.id)

    def _warn_own_frames(self, sample: Sample, frames: np.ndarray) -> None:
        count = int(frames.shape[0])
        if count == self.num_frames or not getattr(self, "num_frames_chosen", False):
            return
        key = (count, int(self.num_frames))
        seen = self.__dict__.setdefault("_own_frames_warned", set())
        if key in seen:
            return
        seen.add(key)
        warnings.warn(
            f"sample {sample.id!r} brings its own {count} frames; num_frames={self.num_frames} applies "
            f"only to frames decoded from a video, so samples with their own frames use them as given "
            "(said once per frame count)",
            UserWarning,
            stacklevel=5,  # the caller of prepare (under its inference_mode wrapper)
        )

    def frame_region(self, height: int, width: int) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the part of an ``height x width`` frame its token grid covers
        after the processor's resize and crop (see :mod:`vlmflow.models.regions`)."""
        from .regions import frame_processor, processed_region

        return processed_region(frame_processor(self.processor), height, width)

    def build_prompt(self, sample: Sample) -> PromptText:
        if self.prompt_style in ("paper", "mvbench"):
            if not sample.is_multiple_choice:
                return open_ended_prompt(sample, self.video_placeholder)
            return paper_prompt(sample, self.video_placeholder, self.system_prompt)
        template = getattr(self.processor, "chat_template", None)
        if not template:
            raise PromptError(
                f"{self.model_id or self.family}: the processor has no chat template; use the "
                "paper prompt (--prompt paper)"
            )
        if sample.is_multiple_choice:
            user, answer_prompt = question_block(sample)[0] + POST_PROMPT, ANSWER_PROMPT
        else:
            user, answer_prompt = sample.question, ""
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt.strip()}]},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user}]},
        ]
        try:
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        except Exception as exc:  # jinja2 raises TemplateError, TypeError, KeyError, ...
            raise PromptError(
                f"{self.model_id or self.family}: the processor's chat template cannot render a "
                f"conversation with a video part ({type(exc).__name__}: {exc}); it may be a "
                "text-only template. Use the paper prompt (--prompt paper)"
            ) from exc
        return locate_prompt(sample, text + answer_prompt, self.video_placeholder, self.system_prompt.strip())

    @torch.inference_mode()
    def prepare(self, sample: Sample) -> Prepared:
        """Prompt, real processor, layout from the tokenizer's offsets, option-letter ids."""
        prompt = self.build_prompt(sample)
        frames = self.frames_of(sample)
        inputs = self.process(prompt.text, frames)
        input_ids = inputs["input_ids"]
        if input_ids.shape[0] != 1:
            raise PromptError(f"sample {sample.id!r}: expected one sequence, got {input_ids.shape[0]}")
        ids = input_ids[0].tolist()
        limit = self.context_length
        if limit is not None and len(ids) > limit:
            log.warning(
                "sample %r: %d tokens exceed %s's trained context of %d positions; results past it "
                "are extrapolation (use fewer frames, --num-frames, or a smaller pixel budget)",
                sample.id,
                len(ids),
                self.model_id or self.family,
                limit,
            )
        expanded, shift = self.expand_placeholder(prompt, input_ids)
        enc = self.tokenizer(expanded, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids:
            raise PromptError(
                f"sample {sample.id!r}: re-tokenising the expanded prompt does not reproduce the "
                "processor's input ids; token offsets cannot be trusted"
            )
        offsets = [tuple(o) for o in enc["offset_mapping"]]

        def moved(r: tuple[int, int]) -> tuple[int, int]:
            return (r[0] + shift, r[1] + shift) if r[0] > prompt.placeholder_at else r

        def tokens(r: tuple[int, int], what: str) -> Span:
            span = _char_to_token_span(offsets, moved(r))
            if span is None:
                raise PromptError(f"sample {sample.id!r}: {what} text not found among the prompt tokens")
            return span

        vt = self.video_tokens(input_ids, inputs)
        _check_frame_groups(sample, len(frames), vt)
        options = tuple(tokens(r, f"option {chr(65 + i)}") for i, r in enumerate(prompt.options))
        sys_span = (
            tokens(prompt.system, "system prompt") if prompt.system[1] > prompt.system[0] else Span(0, 0)
        )
        if sys_span.end and ids and offsets[0] == (0, 0):
            sys_span = Span(0, sys_span.end)
        layout = TokenLayout(
            length=len(ids),
            system=sys_span,
            video=vt.video,
            frames=vt.frames,
            frame_grids=vt.grids,
            question=tokens(prompt.question, "question"),
            question_no_options=tokens(prompt.question_no_options, "question"),
            options=options,
            answer=sample.answer,
            frames_per_group=vt.frames_per_group,
            frame_token_offsets=vt.grid_offsets,
            grid_order=vt.grid_order,
        )
        option_ids = self._option_ids(sample, expanded, ids)
        dtype = self.dtype
        moved_inputs = {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }
        policy = None if sample.frames is not None else self.policy_for(sample)
        return Prepared(sample, moved_inputs, layout, prompt.text, option_ids, frames, policy)

    def _option_ids(self, sample: Sample, expanded: str, ids: list[int]) -> tuple[int, ...]:
        out = []
        for letter in sample.letters:
            full = self.tokenizer(expanded + letter)["input_ids"]
            if len(full) != len(ids) + 1 or list(full[: len(ids)]) != ids:
                raise PromptError(
                    f"sample {sample.id!r}: option letter {letter!r} does not tokenise as one token "
                    "after the answer prompt, so its probability cannot be read"
                )
            out.append(int(full[-1]))
        if len(set(out)) != len(out):
            raise PromptError(f"sample {sample.id!r}: two option letters share a token id")
        return tuple(out)


# keyword arguments of ``load`` that are load settings (``load_model``'s own), not options,
# and what ``load`` sets itself
_LOAD_SETTINGS = {"device", "dtype", "attn_implementation", "model_id"}


def _check_frame_groups(sample: Sample, given: int, vt: VideoTokens) -> None:
    """The input's frame groups must hold the ``given`` frames, one group per
    ``frames_per_group`` of them in order (the last may be padded: Qwen-VL's temporal
    patches pad an odd count with a copy of the last frame). Anything else means the
    processor sampled or dropped frames itself, and ``frame:t`` would not be input frame
    ``t``: a ``PromptError`` naming the sample and both counts."""
    groups, per = len(vt.frames), max(1, int(vt.frames_per_group))
    if groups != -(-given // per):
        raise PromptError(
            f"sample {sample.id!r}: {given} frames were given to the processor but its input holds "
            f"{groups} frame group(s) of {per} ({groups * per} frames); the processor sampled or "
            "dropped frames itself (a video processor config with do_sample_frames: true?), so "
            "frame groups would not match the input frames"
        )


def _char_to_token_span(offsets: list[tuple[int, int]], r: tuple[int, int]) -> Span | None:
    """Tokens whose character range overlaps ``r`` (special tokens without text excluded)."""
    c0, c1 = r
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and b > c0 and a < c1]
    if not hits:
        return None
    return Span(hits[0], hits[-1] + 1)


def default_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype | None:
    """``dtype`` as a torch dtype; unset: float32 on CPU, None (the checkpoint's) elsewhere."""
    chosen = _dtype(dtype)
    if chosen is None and torch.device(device).type == "cpu":
        return torch.float32
    return chosen


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if canonical_dtype(dtype) not in names:  # the aliases (fp32, ...) are rundir's DTYPE_NAMES
        raise UnsupportedModelError(f"unknown dtype {dtype!r}; choose from {sorted([*names, *DTYPE_NAMES])}")
    return names[canonical_dtype(dtype)]


def contiguous_run(input_ids: torch.Tensor, token_id: int, what: str) -> Span:
    """The single contiguous run of ``token_id`` in ``input_ids`` ``(1, N)``."""
    pos = torch.nonzero(input_ids[0] == token_id).flatten()
    if pos.numel() == 0:
        raise PromptError(f"no {what} tokens in the input")
    start, end = int(pos[0]), int(pos[-1]) + 1
    if end - start != pos.numel():
        raise PromptError(f"the {what} tokens are not one contiguous run")
    return Span(start, end)
