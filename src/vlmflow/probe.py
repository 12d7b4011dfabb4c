"""The front door: load a model, probe one input, ask the probe.

A researcher in a notebook needs two lines to reach every read and cut vlmflow offers::

    >>> import vlmflow
    >>> model = vlmflow.load("demo")
    >>> probe = model.probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    >>> probe.answer.letter in probe.sample.letters
    True

A :class:`Model` is a loaded checkpoint (its adapter: weights, real processor, the names of
its decoder layers, norm, head and embeddings). A :class:`Probe` is one prepared input of
that model with its :class:`~vlmflow.engine.Engine` and baseline answer: knockouts, sweeps
and reads are questions asked of it. Prompt settings (prompt style, number of frames,
frame policy) are arguments of :meth:`Model.probe`, not of the loaded model, so one loaded
model serves several setups.

Layers are 0-based throughout; in reads of the residual stream layer ``-1`` is the
embeddings (the input of decoder layer 0) and layer ``l`` the output of decoder layer ``l``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch

from .analyses.base import Answer, read_answer
from .attribution import Attribution, frame_pair_groups, relative_change
from .cuts import CompiledPlan, Cut, Plan, RandomCut, as_indices, check_cut_blocks, compile_plan, is_int
from .engine import Engine, check_max_batch_tokens, masked_forward
from .errors import DataError, PlanError, PromptError
from .layout import Span, TokenLayout
from .models.base import Adapter, Prepared
from .prompt import PROMPT_STYLES
from .sample import Sample

PlanLike = str | Cut | RandomCut | Plan | CompiledPlan


def load(
    spec: str = "demo",
    *,
    device: str = "cpu",
    dtype: str | None = None,
    attn: str = "sdpa",
    progress: bool = True,
    **options: Any,
) -> Model:
    """Load a checkpoint (local folder, hub id, or ``"demo"``, the embedded model).

    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``None`` (float32 on CPU,
    the checkpoint's own dtype on an accelerator); ``attn``: the attention implementation
    (``"sdpa"`` or ``"eager"``; knockout needs one of them, so a model loaded with another,
    such as ``"flex_attention"``, is switched to sdpa with a warning on its first probe).
    The model family is found from the checkpoint's config. ``progress=False`` loads
    without Hugging Face's progress bars (this load only; the global setting is restored).
    Further keyword arguments are the family's adapter options, as for
    :func:`vlmflow.models.load_model` (``num_frames``, ``prompt_style``, ``frame_policy``, and
    per family e.g. ``frames_per_second``, ``max_visual_tokens``, ``token_compression``,
    ``video_pixels``, ``pooling_shape``: see ``docs/families/``); one the family does not
    accept is an ``UnsupportedModelError`` listing the accepted ones, before the weights load.

    >>> import vlmflow
    >>> model = vlmflow.load("demo")
    >>> model.num_layers > 0
    True
    """
    from .models import load_model

    check_load_options(dtype=dtype, device=device, attn=attn)
    # the prompt settings are refused here, before the weights load, as configure() would
    if options.get("prompt_style", "paper") not in PROMPT_STYLES:
        raise PromptError(f"unknown prompt style {options['prompt_style']!r}; choose from {PROMPT_STYLES}")
    if "num_frames" in options:
        check_num_frames(options["num_frames"])
    check_frame_policy(options.get("frame_policy"))
    return Model(
        load_model(spec, device=device, dtype=dtype, attn_implementation=attn, progress=progress, **options)
    )


def check_num_frames(num_frames: Any) -> int:
    """``num_frames`` if it is a whole number of frames >= 1, else a ``PromptError`` saying
    so (checked before the model loads, instead of failing every video sample later)."""
    if not is_int(num_frames) or num_frames < 1:
        raise PromptError(
            f"num_frames must be a whole number >= 1 (frames decoded per video), got {num_frames!r}"
        )
    return int(num_frames)


def check_frame_policy(frame_policy: Any) -> str | None:
    """``frame_policy`` if it is ``None`` (the adapter's default) or a known frame sampling
    policy, else a ``PromptError`` naming the choices (checked before a run folder is touched
    or a probe is built, instead of failing every video sample later)."""
    from .data.video import POLICIES

    if frame_policy is not None and frame_policy not in POLICIES:
        raise PromptError(
            f"unknown frame_policy {frame_policy!r}; choose from {', '.join(POLICIES)} (or None: "
            "the model's default)"
        )
    return frame_policy


def check_load_options(
    *, prompt: str = "paper", dtype: str | None = None, device: str = "cpu", attn: str = "sdpa"
) -> None:
    """Refuse an unknown prompt style, dtype, device or attention implementation, naming
    the choices (cheap checks, made before a run folder is touched or the model loads)."""
    from .errors import UnsupportedModelError
    from .models.base import _dtype

    if prompt not in PROMPT_STYLES:
        raise PromptError(f"unknown prompt style {prompt!r}; choose from {', '.join(PROMPT_STYLES)}")
    _dtype(dtype)
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UnsupportedModelError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)") from exc
    if attn not in ("eager", "sdpa") and "/" not in attn:  # "/": a hub kernel, checked by transformers
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if attn not in known:
            raise UnsupportedModelError(
                f"unknown attention implementation {attn!r}; choose from {', '.join(known)}"
            )


class Model:
    """A loaded checkpoint; :meth:`probe` prepares inputs of it.

    ``adapter`` is the family adapter (``model.adapter.model`` is the transformers module).
    """

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def __repr__(self) -> str:
        return f"Model({self.adapter.model_id!r}, family={self.adapter.family!r}, layers={self.num_layers})"

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def model_id(self) -> str:
        return self.adapter.model_id

    def configured(
        self, *, prompt: str | None = None, num_frames: int | None = None, frame_policy: str | None = None
    ) -> Adapter:
        """The adapter with these prompt settings (a shallow copy sharing the weights); a
        setting left ``None`` keeps the loaded model's (``vlmflow.load(..., prompt_style=,
        num_frames=, frame_policy=)``; by default ``"paper"``, 8 and the family's policy).

        ``num_frames`` is the number of frames decoded from a sample's video (``None``: the
        adapter's, 8); a sample that brings its own frames (``sample.frames``, synthetic
        data) is used as given, with a warning when ``num_frames`` was chosen here and their
        count differs from it."""
        if prompt is not None and prompt not in PROMPT_STYLES:
            raise PromptError(f"unknown prompt style {prompt!r}; choose from {PROMPT_STYLES}")
        if num_frames is not None:
            check_num_frames(num_frames)
        check_frame_policy(frame_policy)
        loaded = self.adapter
        style = loaded.prompt_style if prompt is None else prompt
        if frame_policy is None and getattr(loaded, "frame_policy_chosen", False):
            frame_policy = loaded.frame_policy  # chosen at load: kept, and it still wins
        adapter = copy.copy(loaded)
        adapter.prompt_style = style
        adapter.num_frames = loaded.num_frames if num_frames is None else int(num_frames)
        adapter.num_frames_chosen = num_frames is not None
        adapter.frame_policy = frame_policy or type(loaded).frame_policy_for(style)
        adapter.frame_policy_chosen = frame_policy is not None  # then it wins over a dataset's
        adapter.frame_policy_rule = "chosen"
        adapter.policy_samples = []
        return adapter

    def probe(
        self,
        sample: Sample | None = None,
        *,
        video: str | None = None,
        frames: np.ndarray | None = None,
        question: str | None = None,
        options: Sequence[str] = (),
        answer: int | str | None = None,
        task: str = "default",
        id: str = "probe",
        prompt: str | None = None,
        num_frames: int | None = None,
        frame_policy: str | None = None,
        max_batch_tokens: int | None = None,
    ) -> Probe:
        """Prepare one input and run its baseline pass.

        Give a :class:`~vlmflow.sample.Sample`, or build one from ``video`` (a video file or
        a folder of frames) or ``frames`` (``(T, H, W, 3)`` uint8), ``question``,
        ``options`` and ``answer`` (the correct option's index or text; ``None`` if
        unknown). ``prompt`` (``"paper"``, ``"chat"`` or ``"mvbench"``: see
        :data:`vlmflow.prompt.PROMPT_STYLE_HELP`), ``num_frames`` and
        ``frame_policy`` set how the input is built for this probe only (``None``: the
        loaded model's, as :meth:`configured`). ``num_frames`` is
        how many frames are decoded from ``video`` (default 8); ``frames`` (or a sample's
        own frames) are used as given, whatever ``num_frames`` says (a warning says so when
        it is given and the counts differ; ``probe.prepared.num_frames`` says how many were
        used).

        >>> import vlmflow
        >>> model = vlmflow.load("demo")
        >>> clip = vlmflow.load_dataset("synthetic:1:fixed")[0].frames  # (8, 64, 64, 3)
        >>> p = model.probe(frames=clip, question="Which way does the object move?",
        ...                 options=["left", "right", "up", "down"], answer="right")
        >>> p.sample.answer_letter
        'B'
        """
        check_max_batch_tokens(max_batch_tokens)  # before the input is built
        if sample is None:
            sample = make_sample(
                video=video,
                frames=frames,
                question=question,
                options=options,
                answer=answer,
                task=task,
                id=id,
            )
        elif (
            any(x is not None for x in (video, frames, question, answer))
            or options
            or task != "default"
            or id != "probe"
        ):  # id= and task= were ignored silently beside a sample
            raise PromptError(
                "give either a sample or video/frames/question/options/answer/task/id, not both"
            )
        if sample.error is not None:  # an annotation item its loader could not read
            raise DataError(sample.error)
        # knockout needs masks: flash/flex attention is switched to sdpa (warned once: the
        # switch is made on the shared weights, so later probes find sdpa)
        self.adapter.ensure_maskable()
        adapter = self.configured(prompt=prompt, num_frames=num_frames, frame_policy=frame_policy)
        return Probe(adapter, adapter.prepare(sample), max_batch_tokens=max_batch_tokens)


def make_sample(
    *,
    video: str | None = None,
    frames: np.ndarray | None = None,
    question: str | None = None,
    options: Sequence[str] = (),
    answer: int | str | None = None,
    task: str = "default",
    id: str = "probe",
) -> Sample:
    """A :class:`Sample` from keyword arguments (``answer``: index or option text)."""
    if question is None:
        raise PromptError("a probe needs a question")
    if not isinstance(question, str):  # was a raw TypeError while the prompt was built
        raise PromptError(f"question must be text (a str), got {type(question).__name__}: {question!r}")
    if (video is None) == (frames is None):
        raise PromptError("give exactly one of video= (a file or frame folder) or frames=")
    if isinstance(options, (str, bytes)):  # was split into one option per character
        raise PromptError(
            f"options must be a list of option texts, got the string {options!r} "
            f"(write options=[{options!r}] for a single option)"
        )
    options = tuple(str(o) for o in options)
    if isinstance(answer, str):
        if answer not in options:
            raise PromptError(f"answer {answer!r} is not one of the options {list(options)}")
        answer = options.index(answer)
    elif answer is not None and not is_int(answer):  # 1.0 used to be a TypeError, True index 1
        raise PromptError(f"answer must be an option index (an integer) or an option's text, got {answer!r}")
    if answer is not None and not 0 <= answer < len(options):
        raise PromptError(f"answer index {answer} outside the {len(options)} options")
    return Sample(
        id=id,
        question=question,
        options=options,
        answer=None if answer is None else int(answer),
        task=task,
        video=None if video is None else str(video),
        frames=None if frames is None else np.asarray(frames),
        answer_text=None if answer is None or not options else options[answer],
    )


@dataclass(frozen=True)
class Lens:
    """Top-k logit-lens tokens: ``ids`` and ``probs`` ``(len(layers), len(positions), k)``,
    ``tokens`` the decoded ids (nested lists of the same shape)."""

    layers: tuple[int, ...]
    positions: np.ndarray
    ids: torch.Tensor
    probs: torch.Tensor
    tokens: list[list[list[str]]]

    def __repr__(self) -> str:  # the counts, not the tensors (``tokens``, ``to_frame()`` show them)
        return f"Lens(layers={len(self.layers)}, positions={len(self.positions)}, k={self.ids.shape[-1]})"

    def to_frame(self) -> pd.DataFrame:
        """One row per layer x position x rank: ``layer, position, rank, token_id, token, prob``."""
        rows = [
            (layer, int(pos), r, int(self.ids[i, j, r]), self.tokens[i][j][r], float(self.probs[i, j, r]))
            for i, layer in enumerate(self.layers)
            for j, pos in enumerate(self.positions)
            for r in range(self.ids.shape[-1])
        ]
        return pd.DataFrame(rows, columns=["layer", "position", "rank", "token_id", "token", "prob"])


class Residual(Sequence[torch.Tensor]):
    """The baseline residual stream: ``resid[l]`` is the output of decoder layer ``l``
    ``(N, d)``; ``resid[-1]`` the embeddings (the input of layer 0). A slice runs over the
    layers ``0..L-1`` as over ``range(len(resid))`` and gives a list: ``resid[0:2]`` is
    ``[resid[0], resid[1]]``, ``resid[-2:]`` the last two layers (the embeddings only ever
    as ``resid[-1]``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __len__(self) -> int:
        return self._engine.lm.num_layers

    def __getitem__(self, layer: int | slice) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        n = len(self)
        if isinstance(layer, slice):
            return [self[i] for i in range(n)[layer]]
        if not is_int(layer):
            raise TypeError(f"resid takes a layer number or a slice, not {type(layer).__name__}")
        layer = int(layer)
        if not -1 <= layer < n:
            raise IndexError(f"layer {layer} outside -1..{n - 1} (-1 = embeddings)")
        return self._engine.hidden_states[layer + 1][0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[layer] for layer in range(len(self)))


class Probe:
    """One prepared input with its engine and baseline: ask it for knockouts and reads.

    ``sample``, ``prepared`` (inputs, layout, option ids), ``engine`` and ``adapter`` are
    public; the baseline pass runs once, on first use.

    >>> import vlmflow
    >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
    >>> sorted(probe.answer.probabilities) == list(probe.sample.letters)
    True
    >>> probe.knockout("video->last").letter in probe.sample.letters
    True
    """

    def __init__(
        self,
        adapter: Adapter,
        prepared: Prepared,
        *,
        max_batch_tokens: int | None = None,
        correctness: str = "ids",
    ) -> None:
        self.adapter = adapter
        self.prepared = prepared
        self.correctness = correctness  # what counts as a correct answer (analyses.base.CORRECTNESS)
        self.engine = Engine(
            adapter.language_model(), prepared.inputs, prepared.layout, max_batch_tokens=max_batch_tokens
        )
        self._last_attribution: Attribution | None = None  # see _attribution
        self._attributed_queries: list[str] = []

    def __repr__(self) -> str:
        return f"Probe({self.sample.id!r}, tokens={self.layout.length}, frames={self.layout.num_frames})"

    @property
    def sample(self) -> Sample:
        return self.prepared.sample

    @property
    def layout(self) -> TokenLayout:
        return self.prepared.layout

    @property
    def num_layers(self) -> int:
        return self.engine.lm.num_layers

    # ------------------------------------------------------------------ the answer
    @cached_property
    def answer(self) -> Answer:
        """The model's own answer: ``.letter``, ``.probabilities`` (letter -> p), ``.correct``."""
        return read_answer(self.adapter, self.prepared, self.engine.baseline_logits(), self.correctness)

    @property
    def base(self) -> Answer:
        """The baseline answer (:attr:`answer`), by the name the analyses use."""
        return self.answer

    def read(self, logits: torch.Tensor) -> Answer:
        """Interpret last-position ``logits`` ``(vocab,)`` as an answer to this input."""
        # (the vocabulary's size is not read off lm_head: a quantised head packs its weight)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 1:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise PlanError(f"read: logits must be one position's logits, a tensor (vocab,), got {shape}")
        return read_answer(self.adapter, self.prepared, logits, self.correctness)

    @property
    def groups(self) -> dict[str, list[Span]]:
        """Token groups and their spans: ``system``, ``video``, ``frame:T``, ``question``,
        ``question_no_options``, ``option:X``, ``options``, ``true_option`` and
        ``false_options`` (when the answer is known: without it, both are a ``PlanError``),
        ``template``, ``last``, ``all`` and, for open-ended inputs, ``response`` and
        ``non_last_response`` (half-open ranges; empty groups are left out except
        ``template``). Every method also takes ``frames:A-B``, ``frames:<T`` and
        ``G1+G2`` unions of these."""
        lay = self.layout
        out: dict[str, list[Span]] = {"system": [lay.system], "video": [lay.video]}
        out.update({f"frame:{t}": [s] for t, s in enumerate(lay.frames)})
        out["question"] = [lay.question]
        out["question_no_options"] = [lay.question_no_options]
        out.update({f"option:{c}": [s] for c, s in zip(self.sample.letters, lay.options, strict=True)})
        out["options"] = [s for s in lay.options if len(s)]
        if lay.answer is not None:  # without a ground truth neither exists (a PlanError)
            out["true_option"] = [lay.true_option]
            out["false_options"] = [s for s in lay.false_options if len(s)]
        for key in ("response", "non_last_response"):  # open-ended inputs only
            if len(getattr(lay, key)):
                out[key] = [getattr(lay, key)]
        try:
            out["template"] = _spans(lay.resolve("template"))
        except PlanError:  # every position is in another group
            out["template"] = []
        out["last"] = [Span(lay.last, lay.last + 1)]
        out["all"] = [Span(0, lay.length)]
        return out

    # ------------------------------------------------------------------ cuts
    def plan(self, what: PlanLike, layers: Iterable[int] | int | str | None = None) -> Plan | CompiledPlan:
        """A plan from ``"SRC->DST[,SRC->DST]"`` text (blocked in ``layers``, default all), a
        ``Cut`` or ``RandomCut`` (a plan of one), or a plan as it is. ``layers`` is for text
        only: a cut or a plan carries its own. A cut (text, ``Cut`` or one of a ``Plan``'s)
        that blocks nothing is an error, and so is a ``Plan`` with no cuts: each would
        silently give the baseline. (The engine itself accepts an empty plan and returns the
        baseline; only this front door refuses.) A ``CompiledPlan`` is passed through as it is."""
        if isinstance(what, (Cut, RandomCut, Plan, CompiledPlan)):
            name = (
                f"{what.src}->{what.dst}"
                if isinstance(what, Cut)
                else f"random {what.fraction:g} after {what.start}"
                if isinstance(what, RandomCut)
                else what.plan.name
                if isinstance(what, CompiledPlan)
                else what.name
            )
            if layers is not None:
                raise PlanError(
                    f"{type(what).__name__} {name!r} carries its own layers; layers= applies to "
                    "text plans only"
                )
            if isinstance(what, CompiledPlan):
                return what
            if isinstance(what, Plan):
                if not what.cuts:
                    raise PlanError(f"plan {name!r} blocks nothing: it has no cuts")
                for cut in what.cuts:
                    self._check_cut(cut, f"plan {name!r}: ")
                return what
            self._check_cut(what)
            return Plan(name, (what,))
        if not isinstance(what, str):
            raise PlanError(
                f"a plan is 'SRC->DST' text, a Cut or a Plan, not {type(what).__name__}: {what!r}"
            )
        blocked = tuple(range(self.num_layers)) if layers is None else as_indices(layers)
        if not blocked:
            raise PlanError(f"plan {what!r} blocks nothing: no layers are given")
        cuts = tuple(Cut.parse(part, blocked) for part in what.split(","))
        for part, cut in zip(what.split(","), cuts, strict=True):  # a typed cut is never silently empty
            check_cut_blocks(cut.src, cut.dst, part.strip(), self.layout)
        return Plan(what, cuts)

    def _check_cut(self, cut: Cut | RandomCut, where: str = "") -> None:
        """Refuse a cut that blocks nothing on this input (no layers, or causally empty; a
        ``RandomCut``: no layers, a ``start`` group this input lacks, or a fraction of its
        causal edges under one edge)."""
        if isinstance(cut, RandomCut):
            name = f"random {cut.fraction:g} after {cut.start}"
            if not cut.layers:
                raise PlanError(f"{where}cut {name!r} blocks nothing: it names no layers")
            try:
                self.layout.resolve(cut.start)
            except PlanError as exc:
                raise PlanError(f"{where}cut {name!r}: {exc}") from None
            n = self.layout.length
            if int(n * (n + 1) // 2 * cut.fraction) == 0:
                raise PlanError(
                    f"{where}cut {name!r} blocks nothing: {cut.fraction:g} of this input's "
                    f"{n * (n + 1) // 2} causal edges is under one edge"
                )
            return
        name = f"{cut.src}->{cut.dst}"
        if not cut.layers:
            raise PlanError(f"{where}cut {name!r} blocks nothing: it names no layers")
        try:
            check_cut_blocks(cut.src, cut.dst, name, self.layout)
        except PlanError as exc:
            raise PlanError(f"{where}{exc}") from None

    def knockout(
        self, plans: PlanLike | Sequence[PlanLike], layers: Iterable[int] | int | str | None = None
    ) -> Answer | list[Answer]:
        """The answer with attention edges cut, exactly (as a full masked forward).

        One plan (``"video->last"``, a ``Cut`` or a ``Plan``; text plans are blocked in
        ``layers``, default every layer) gives one answer; a list gives a list, evaluated
        together (an empty list gives an empty list). An answer's ``p_pred`` is its own top
        token's probability; ``p_pred_new`` / ``rel_pred`` (the baseline answer's probability
        under the knockout and its % change) and ``p_gt_new`` / ``rel_gt`` are
        :meth:`sweep`'s columns of the same knockout (see ``Answer``).

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> cut = probe.knockout("frames:<4->frame:4", layers=range(probe.num_layers // 2))
        >>> round(sum(cut.probabilities.values()), 6) <= 1.0
        True
        """
        if isinstance(plans, (Mapping, AbstractSet)):  # keys would be blocked in every layer, unordered
            raise PlanError(
                f"knockout takes a plan or a list of plans, not a {type(plans).__name__} ({plans!r}): "
                "give the layers with layers=, e.g. knockout('video->last', layers=[3]), or a "
                "Cut('video', 'last', (3,))"
            )
        single = isinstance(plans, (str, Cut, RandomCut, Plan, CompiledPlan)) or not isinstance(
            plans, Iterable
        )
        items = [plans] if single else list(plans)
        layer_list = None if layers is None else as_indices(layers)
        plans = [self.plan(p, layer_list) for p in items]
        logits = self.engine.evaluate(plans)
        names = [p.plan.name if isinstance(p, CompiledPlan) else p.name for p in plans]
        base = self.base
        answers = [replace(self.read(lg), plan=n, base=base) for n, lg in zip(names, logits, strict=True)]
        return answers[0] if single else answers

    def sweep(
        self,
        target: str | Sequence[str] = "cross-frame",
        *,
        window: int = 9,
        style: str = "center",
        layers: Iterable[int] | int | str | None = None,
        custom: str | Sequence[str] = (),
    ) -> pd.DataFrame:
        """Knockout sweeps of the paper's targets (and ``custom`` ``SRC->DST`` curves, one
        text or a list of them): one
        row per curve x sweep layer, with the window's blocked layers, the baseline
        answer's and the ground truth's probability before and after and their % change.

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> df = probe.sweep("cross-frame", window=3)
        >>> len(df) == probe.num_layers and {"layer", "rel_pred"} <= set(df.columns)
        True
        """
        from .analyses.base import as_names
        from .analyses.information_flow import sweep_rows

        targets, customs = as_names(target, "target") or (), as_names(custom, "custom") or ()
        sweep_layers = None if layers is None else as_indices(layers)
        rows = sweep_rows(self, targets, customs, window=window, style=style, layers=sweep_layers)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ attribution
    def screen(
        self,
        target: str | Sequence[str] = "cross-frame",
        *,
        k: int = 30,
        control: int = 10,
        window: int = 9,
        style: str = "center",
        layers: Iterable[int] | int | str | None = None,
        custom: str | Sequence[str] = (),
        exact_below: float = 0.02,
        order: str = "drop",
        seed: int = 0,
    ) -> pd.DataFrame:
        """:meth:`sweep`'s plans screened by edge attribution: every curve x layer plan
        estimated from one attribution pass (one forward and one backward), then the plans
        the engine evaluates for under ``exact_below`` of a forward, the top ``k`` by
        estimate (``order``: ``"drop"`` or ``"magnitude"``) and ``control`` others drawn at
        random (``seed``) evaluated exactly (see ``docs/attribution.md``).

        One row per plan with :meth:`sweep`'s columns: the engine's exact values where the
        plan was verified (``method="exact"``; ``verified_as`` ``"cheap"``, ``"top"`` or
        ``"control"``), the estimate where not (``method="estimate"``, ``verified_as`` NaN:
        ``p_pred_new`` is the
        baseline's times ``exp(estimate)``; what only an exact evaluation gives, the ground
        truth's new probability and the new answer, is NaN). ``rel_pred_estimate`` is the
        estimated % change on every row. Sweep points that block the same (a window over
        every layer) are one plan, verified once, every row of it exact; ``k``, ``control``
        and the summary count distinct plans (``rows``: the sweep points).
        ``df.attrs["screen"]`` holds the counts and the rank agreement between estimate and
        exact (``Screen.summary``; over the verified plans whose exact change of ``log p`` is
        above ``resolution``, the logits' rounding: ``unresolved`` counts those left out), with
        ``max_error_pct`` (the largest ``|exact - estimate|`` of a verified plan, in
        percentage points), ``missed_control`` (control plans whose exact effect beats the
        top ``k``'s by ``order``, a larger drop for ``"drop"``: false negatives the random
        sample found), ``underestimated`` (verified
        plans whose exact change is notable and over 10x the estimate, either sign) and
        ``contradicted`` (those of them whose estimate has the wrong sign); a missed or an
        underestimated plan is also a ``UserWarning``: the estimates, and so the rows left
        as estimates, are unreliable for this input.

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> df = probe.screen("cross-frame", k=1, control=1, window=3, layers=[16, 20, 24, 28])
        >>> len(df), sorted(df["method"])
        (4, ['estimate', 'estimate', 'exact', 'exact'])
        >>> df.attrs["screen"]["verified"]
        2
        """
        from .analyses.base import as_names
        from .analyses.screened_flow import screened_sweep

        targets, customs = as_names(target, "target") or (), as_names(custom, "custom") or ()
        _, pairs, screen = screened_sweep(
            self,
            targets,
            customs,
            window=window,
            style=style,
            layers=None if layers is None else as_indices(layers),
            k=k,
            control=control,
            exact_below=exact_below,
            order=order,
            seed=seed,
        )
        base, nan = self.base, float("nan")
        unverified = {  # flow_row's columns after rel_pred: the baseline's, and NaN for the new answer
            "p_gt_base": base.p_gt,
            "p_gt_new": nan,
            "rel_gt": nan,
            "pred_base": base.record()["pred"],
            "pred_new": nan,
            "gt": base.gt_letter,
            "correct_base": base.correct,
            "correct_new": nan,
        }
        rows = [
            exact if exact is not None else est | unverified | {"rel_pred_estimate": est["rel_pred"]}
            for est, exact in pairs
        ]
        labels = ["method", "verified_as", "rel_pred_estimate"]
        df = pd.DataFrame(rows)
        df = df[[*(c for c in rows[0] if c not in labels), *labels]]
        # NaN where not verified, as the other columns only an exact row fills: pandas' string
        # column made None NaN once a row was verified, and kept None when none was
        df["verified_as"] = df["verified_as"].where(df["verified_as"].notna(), np.nan)
        df.attrs["screen"] = screen.summary()
        for message in screen.warnings():  # the estimates contradicted by the verified plans
            warnings.warn(message, UserWarning, stacklevel=2)
        return df

    def head_map(
        self, src: str, dst: str, *, layers: Iterable[int] | int | str | None = None
    ) -> pd.DataFrame:
        """Which heads carry ``src -> dst``: the estimated % change of the answer's
        probability when the edges from group ``src`` to group ``dst`` are blocked in one
        head of one layer, for every (layer, head) from one attribution pass. Index: layer
        (``layers``, default all), columns: head. Estimates, not knockouts: verify the
        interesting ones with :meth:`knockout` and ``Cut(src, dst, (layer,), heads=(h,))``.

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> L = probe.num_layers
        >>> heat = probe.head_map("video", "true_option", layers=[L - 2, L - 1])
        >>> heat.shape == (2, probe.engine.lm.num_heads)
        True
        """
        for side, group in (("src", src), ("dst", dst)):
            if not isinstance(group, str):
                raise PlanError(f"head_map: {side} must be one token group (text), got {group!r}")
        check_cut_blocks(src, dst, f"{src}->{dst}", self.layout)
        # a cut the engine refuses (it leaves some query no key) has no estimate either
        compile_plan(Plan(f"{src}->{dst}", (Cut(src, dst, (0,)),)), self.layout, self.num_layers)
        layer_list = self._layers(layers)
        att = self._attribution([src], [dst], layer_list)
        heat = relative_change(att.delta_logprob(att.head_map(src, dst)[layer_list]))
        return pd.DataFrame(
            heat,
            index=pd.Index(layer_list, name="layer"),
            columns=pd.RangeIndex(heat.shape[1], name="head"),
        )

    def frame_pairs(self, *, layers: Iterable[int] | int | str | None = None) -> pd.DataFrame:
        """Which frame pairs carry cross-frame information, and in which layers: the
        estimated % change of the answer's probability when ``frame:a -> frame:b`` (a < b)
        is blocked in every head of one layer, from one attribution pass. Index: layer
        (``layers``, default all), columns: the pair's cut, ``"frame:a->frame:b"``, as the
        records name it. Estimates: verify a cell with :meth:`knockout` (its column, in its
        layer).

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> pairs = probe.frame_pairs(layers=[0, 1])
        >>> pairs.shape == (2, probe.layout.num_frames * (probe.layout.num_frames - 1) // 2)
        True
        """
        if self.layout.num_frames < 2:
            raise PlanError(
                f"sample {self.sample.id!r} has {self.layout.num_frames} frame(s): no frame pairs"
            )
        layer_list = self._layers(layers)
        att = self._attribution(*frame_pair_groups(self.layout.num_frames), layer_list)
        est = relative_change(att.delta_logprob(att.frame_pairs()[layer_list]))
        n = self.layout.num_frames
        pairs = [(a, b) for b in range(1, n) for a in range(b)]
        return pd.DataFrame(
            np.stack([est[:, a, b] for a, b in pairs], axis=1),
            index=pd.Index(layer_list, name="layer"),
            columns=pd.Index([f"frame:{a}->frame:{b}" for a, b in pairs], name="pair"),
        )

    def attribute(
        self,
        sources: str | Sequence[str],
        queries: str | Sequence[str],
        *,
        layers: Iterable[int] | int | str | None = None,
        metric: str = "logodds",
    ) -> Attribution:
        """The raw attribution pass for the baseline answer's token: first-order estimates of
        any knockout of ``sources -> queries`` (token groups) in ``layers`` (default all),
        ``att.estimates(plans)`` (changes of ``metric``, ``"logodds"`` or ``"logprob"``;
        ``att.delta_logprob`` maps them to changes of ``log p``). The probe keeps its last
        pass and reuses it while it covers a request, so the result may cover more groups
        and layers than asked for.

        >>> import vlmflow
        >>> from vlmflow import Cut, Plan
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> L = probe.num_layers
        >>> att = probe.attribute("video", "last", layers=[L - 2, L - 1])
        >>> est = att.estimates([Plan("v->l", (Cut("video", "last", (L - 2, L - 1)),))])
        >>> est.shape
        (1,)
        """
        sources = [sources] if isinstance(sources, str) else list(sources)
        queries = [queries] if isinstance(queries, str) else list(queries)
        return self._attribution(sources, queries, self._layers(layers), metric)

    def _layers(
        self, layers: Iterable[int] | int | str | None, what: str = "layers", lowest: int = 0
    ) -> list[int]:
        """``layers`` (default all, from ``lowest``: ``-1`` where the embeddings count) as a
        sorted list within ``lowest..L-1``, else a ``PlanError`` naming ``what``."""
        out = list(range(lowest, self.num_layers)) if layers is None else list(as_indices(layers, what))
        if not out or out[0] < lowest or out[-1] >= self.num_layers:
            embeddings = " (-1 = embeddings)" if lowest < 0 else ""
            raise PlanError(
                f"{what} {out} must be a non-empty subset of {lowest}..{self.num_layers - 1}{embeddings}"
            )
        return out

    def _positions(self, positions: str | Sequence[int] | int, what: str = "positions") -> np.ndarray:
        """A group name's positions, or whole token positions checked to lie in ``0..N-1``
        (``(n,)`` int64); else a ``PlanError`` naming ``what``."""
        if isinstance(positions, str):
            return self.layout.resolve(positions)
        pos = np.atleast_1d(np.asarray(positions))
        n = self.layout.length
        if pos.ndim != 1 or pos.size == 0 or not np.issubdtype(pos.dtype, np.integer):
            raise PlanError(
                f"{what} must be a token group name or a non-empty list of whole token positions, "
                f"got {positions!r}"
            )
        outside = pos[(pos < 0) | (pos >= n)]
        if outside.size:
            raise PlanError(
                f"{what} {outside.tolist()} outside 0..{n - 1} (this input has {n} tokens; "
                "name a group such as 'last' instead of counting from the end)"
            )
        return pos.astype(np.int64)

    def _attribution(
        self, sources: Sequence[str], queries: Sequence[str], layers: Sequence[int], metric: str = "logodds"
    ) -> Attribution:
        """Every attribution pass of the probe runs here: the last pass is kept with what it
        covers and reused while it covers a request (its source groups, query positions and
        layers; the same metric); otherwise one pass covers the request and, for the same
        metric, what the last one covered."""
        from .attribution import attribute, graph_budget_mb

        for group in (*sources, *queries):  # an unknown or empty group: PlanError naming it
            self.layout.resolve(group)
        if not sources or not queries:
            raise PlanError("attribution needs at least one source and one query group")
        cached = self._last_attribution
        if cached is not None and cached.metric == metric:
            qpos = np.unique(np.concatenate([self.layout.resolve(q) for q in queries]))
            if (
                set(sources) <= set(cached.atoms)
                and np.isin(qpos, cached.queries).all()
                and set(layers) <= set(cached.S)
            ):
                return cached
            sources = [*cached.atoms, *(g for g in sources if g not in cached.atoms)]
            queries = [*self._attributed_queries, *(g for g in queries if g not in self._attributed_queries)]
            layers = sorted({*cached.S, *layers})
        # a probe whose baseline has not run yet gets it from the pass's forward (one forward
        # less), keeping the graph of as many top layers as half the free memory holds; the
        # answer token is then the baseline's top token, which is what ``base.pred_id`` is
        fused = not self.engine.ran
        att = attribute(
            self.engine,
            token_id=None if fused else self.base.pred_id,
            sources=list(sources),
            queries=list(queries),
            layers=list(layers),
            metric=metric,
            fused=fused,
            max_graph_mb=graph_budget_mb(next(self.engine.lm.layers.parameters()).device) if fused else None,
        )
        self._last_attribution, self._attributed_queries = att, list(queries)
        return att

    # ------------------------------------------------------------------ reads
    @property
    def resid(self) -> Residual:
        """The baseline residual stream, ``probe.resid[l]`` ``(N, d)`` (``-1``: embeddings)."""
        return Residual(self.engine)

    @torch.inference_mode()
    def lens(
        self,
        layers: Iterable[int] | int | str | None = None,
        positions: str | Sequence[int] = "last",
        *,
        k: int = 5,
        projection: str = "unembed",
    ) -> Lens:
        """Logit lens: the top-``k`` tokens of the residual stream at ``positions`` (a group
        name or positions) after each of ``layers`` (default ``-1..L-1``).

        ``projection``: ``"unembed"`` (final norm + output head) or ``"embed"`` (the input
        embedding matrix, as the paper's code: the final norm only at the last layer, as the
        :class:`~vlmflow.LogitLens` analysis reads it). Positions are token indices ``0..N-1``; layers
        ``-1..L-1`` (``-1``: the embeddings); ``k`` at most the vocabulary.

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> lens = probe.lens(layers=[0, probe.num_layers - 1], positions="last", k=2)
        >>> tuple(lens.ids.shape)
        (2, 1, 2)
        """
        from .analyses.logit_lens import PROJECTIONS, lens_logits

        if projection not in PROJECTIONS:
            raise PlanError(f"lens: unknown projection {projection!r}; choose from {PROJECTIONS}")
        layer_list = tuple(self._layers(layers, "lens: layers", lowest=-1))
        pos = self._positions(positions, "lens: positions")
        index = torch.as_tensor(pos)
        top_ids, top_probs = [], []
        for layer in layer_list:
            resid = self.resid[layer]
            h = resid.index_select(0, index.to(resid.device))
            last = layer == self.num_layers - 1  # "embed" applies the final norm there only
            probs = lens_logits(self.engine.lm, h, projection, last=last).softmax(-1)
            vocab = probs.shape[-1]
            if not is_int(k) or not 1 <= k <= vocab:
                raise PlanError(f"lens: k must be a whole number in 1..{vocab} (the vocabulary), got {k!r}")
            p, i = probs.topk(int(k), dim=-1)
            top_ids.append(i.cpu())
            top_probs.append(p.cpu())
        ids, probs = torch.stack(top_ids), torch.stack(top_probs)
        vocab = {int(t): self.adapter.tokenizer.decode([int(t)]) for t in ids.unique().tolist()}
        tokens = [[[vocab[int(t)] for t in row] for row in layer] for layer in ids.tolist()]
        return Lens(layer_list, pos, ids, probs, tokens)

    def attention(
        self,
        layers: Iterable[int] | int | str | None = None,
        queries: str | Sequence[str] | None = ("last",),
        plan: PlanLike | None = None,
        positions: dict[str, Any] | None = None,
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Attention weights of the ``queries`` groups, averaged over heads and query
        positions: ``{layer: {group: (N,) weights over key positions}}`` (each row sums to
        1). ``plan`` reads them under a cut. Only the layers read run eager attention.
        ``positions`` adds named queries given as token positions (name -> array).

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> w = probe.attention(layers=[1], queries="last")[1]["last"]
        >>> w.shape[0] == probe.layout.length and abs(float(w.sum()) - 1) < 1e-4
        True
        """
        layer_list = tuple(self._layers(layers, "attention: layers"))
        names = ("last",) if queries is None else (queries,) if isinstance(queries, str) else queries
        if not isinstance(names, Iterable) or not all(isinstance(q, str) for q in names):
            raise PlanError(
                f"attention: queries must be a token group name or a list of names, got {queries!r}"
            )
        names = tuple(names)
        extra = {
            name: self._positions(pos, f"attention: positions[{name!r}]")
            for name, pos in (positions or {}).items()
        }
        compiled = None
        if plan is not None:
            compiled = self.engine.compiled(self.plan(plan))
        _, reads = masked_forward(
            self.engine.lm,
            self.prepared.inputs,
            compiled,
            read_attention=layer_list,
            queries={**{q: self.layout.resolve(q) for q in names}, **extra},
        )
        return reads

    def generate(self, plan: PlanLike | None = None, max_new_tokens: int = 16) -> Generated:
        """Greedy generation with ``plan``'s cuts in force at prefill and at every step.

        >>> import vlmflow
        >>> probe = vlmflow.load("demo").probe(vlmflow.load_dataset("synthetic:1:fixed")[0])
        >>> out = probe.generate(max_new_tokens=2)
        >>> len(out.token_ids) <= 2
        True
        """
        from .generation import generate_with_plan

        if not is_int(max_new_tokens) or max_new_tokens < 1:
            raise PlanError(f"generate: max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        compiled = None
        if plan is not None:
            compiled = self.engine.compiled(self.plan(plan))
        gen = generate_with_plan(
            self.adapter.model, self.engine.lm, self.prepared.inputs, compiled, max_new_tokens=max_new_tokens
        )
        text = self.adapter.tokenizer.decode(list(gen.token_ids), skip_special_tokens=True)
        return Generated(text, gen.token_ids, gen.first_probs)


@dataclass(frozen=True)
class Generated:
    """A greedy continuation: ``text``, new ``token_ids``, the first step's ``first_probs``
    ``(vocab,)`` (float64: a near-certain token's change is not rounded away)."""

    text: str
    token_ids: tuple[int, ...]
    first_probs: torch.Tensor

    def __repr__(self) -> str:  # not the vocabulary-long first_probs
        return f"Generated({self.text!r}, tokens={len(self.token_ids)})"


def _spans(positions: np.ndarray) -> list[Span]:
    """Sorted positions -> maximal half-open runs."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [positions.size - 1]])
    return [Span(int(positions[a]), int(positions[b]) + 1) for a, b in zip(starts, ends, strict=True)]
