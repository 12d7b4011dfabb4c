"""What every analysis shares: the unit base class, its registry, and the baseline read.

An analysis is one unit (a module of this package): a dataclass whose fields are its
options, registered in :data:`ANALYSES` with the decorator, that

* turns one :class:`~vlmflow.probe.Probe` into flat records (:meth:`Analysis.records`;
  it reads and cuts, and writes no files and draws nothing),
* summarises its records into tables (:meth:`Analysis.summarize`),
* builds its part of the report, figures included, from stored records
  (:meth:`Analysis.section`), and
* is a CLI command whose options are its fields marked with :func:`option`.

``vlmflow list analyses``, the report's order and sections and the CLI all read the one
registry; adding an analysis is adding a module here (found by :func:`load_all`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

from ..cuts import layer_ranges
from ..engine import softmax64
from ..errors import PlanError
from ..layout import TokenLayout
from ..models.base import Adapter, Prepared
from ..registry import Registry
from ..sample import Sample

if TYPE_CHECKING:
    from ..api import Options, RunResult
    from ..probe import Probe
    from ..report import Section
    from ..rundir import RunDir

log = logging.getLogger(__name__)
SAMPLE_MODES = ("correct", "wrong", "all")
# What makes an answer correct: ``ids`` - the argmax token is the true letter's token id
# (vlmflow's default); ``text`` - the argmax token decoded alone equals the letter, case
# ignored (the paper's code: ``decode([t]).lower() == letter.lower()``).
CORRECTNESS = ("ids", "text")


def option(
    default: Any = None,
    help: str = "",
    *flags: str,
    cli: type | Any = None,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option of the analysis's command.

    ``flags`` default to ``--<field-name>``; ``cli`` is the option's type when it differs
    from the default's (a tuple field is a repeatable option); ``parse`` turns the option's
    value into the field's (for instance ``"0-3,7"`` into ``(0, 1, 2, 3, 7)``).
    """
    meta = {"help": help, "flags": flags, "cli": cli, "parse": parse}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple default for a sequence option")
    return dataclasses.field(default=default, metadata={"option": meta})


@dataclass(frozen=True)
class CliOption:
    """One option of an analysis's command: ``name`` (a keyword of ``from_cli``), its
    default, help text, flags (default ``--name-with-dashes``), ``cli`` the option's type
    when not the default's (``list``: repeatable), ``parse`` from option value to field."""

    name: str
    default: Any
    help: str = ""
    flags: tuple[str, ...] = ()
    cli: Any = None
    parse: Callable[[Any], Any] | None = None


def as_layers(value: Any, what: str = "layers") -> tuple[int, ...] | None:
    """An analysis's layer option in the one form it stores and runs on: ``None`` (every
    layer) or a sorted tuple of layer numbers, from whatever the probe accepts (an int,
    a range or other iterable of ints, or text like ``"0-3,7"``); anything else is a
    one-line :class:`PlanError`."""
    from ..cuts import as_indices

    return None if value is None else as_indices(value, what)


def as_names(value: Any, what: str) -> tuple[str, ...] | None:
    """A name option (targets, cut texts, query groups) as a tuple of strings: one string is
    one name (``"cross-frame"``, not its characters); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        items = (value,)
    bad = [x for x in items if not isinstance(x, str)]
    if bad:
        raise PlanError(f"{what} must be a name or a sequence of names, got {value!r}")
    return items


def check_sample_mode(mode: str) -> None:
    if mode not in SAMPLE_MODES:
        raise PlanError(f"unknown sample mode {mode!r}; choose from {SAMPLE_MODES}")


class Analysis:
    """Base class of the analysis units (subclasses are dataclasses; see the module doc).

    Class attributes: ``name`` (records' ``analysis`` column, the CLI command, the report
    key), ``order`` (position in the report), ``needs_knockout`` (whether it cuts, so the
    model's attention must take masks), ``command`` (whether it has a CLI command of its
    own; a variant reached through another command's option has none), ``via`` (for one
    without a command, how the CLI runs it, e.g. ``flow --screen K``), ``version`` and
    ``changes`` (below).

    ``version`` counts the changes to *how* the analysis computes its records that no option
    names (a fix of a formula, a tokenizer rule): it is bumped with each, and ``changes`` says
    per version what changed. A run folder records the version its records were computed by
    (``computed_in.analysis_versions``; a folder that records none counts as version 1), and
    a resume by another version is refused (:meth:`~vlmflow.rundir.RunDir.refuse_other_versions`),
    so old and new records are never mixed in one table. A change to what is only computed
    from stored records (a summary, a figure) needs no bump: the report recomputes those.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    needs_knockout: ClassVar[bool] = True
    command: ClassVar[bool] = True  # whether the CLI has a command of its name
    via: ClassVar[str] = ""  # without a command: the command line that runs it
    version: ClassVar[int] = 1  # of how records are computed; bumped with a note in changes
    changes: ClassVar[dict[int, str]] = {}  # version -> what changed from the version before

    def records(self, probe: Probe) -> list[dict[str, Any]]:
        """The records of one input (``[]`` to skip it)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The options as JSON-able data, stored in the run's manifest."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def adopt_recorded(self, recorded: dict[str, Any], folder: Path | str) -> None:
        """Resuming ``folder``, whose manifest stored ``recorded`` as this analysis's
        options: take from it what the environment resolved (not the user's options) when
        the folder started, or refuse (:class:`~vlmflow.errors.RunError`) when that is no
        longer available; default: nothing. A different configuration is refused later,
        by :meth:`~vlmflow.rundir.RunDir.open`."""

    @classmethod
    def summarize(cls, records: pd.DataFrame) -> pd.DataFrame:
        """This analysis's error-free records -> its summary table (default: generic)."""
        from ..report import summarize_layers

        return summarize_layers(records)

    @classmethod
    def section(cls, records: pd.DataFrame, run: RunDir) -> Section | pd.DataFrame | None:
        """Its part of the report, drawn from stored records (figures into ``run``)."""
        return cls.summarize(records)

    @classmethod
    def terminal(cls, report: dict[str, Any]) -> list[str]:
        """Lines the CLI prints after a run of this analysis, from the report's result
        (:func:`~vlmflow.report.finalize`; default none)."""
        return []

    def check_layers(self, num_layers: int, model: str = "") -> None:
        """Refuse, before any sample, a layer selection (an option parsed by
        :func:`~vlmflow.cuts.parse_layers`: ``--layers``, ``--compare-layers``) that names a
        layer the loaded model does not have: a :class:`PlanError` naming the option, its
        value and the valid range."""
        from ..cuts import parse_layers

        if not dataclasses.is_dataclass(self):
            return
        for f in dataclasses.fields(self):
            meta = f.metadata.get("option")
            value = getattr(self, f.name)
            if not meta or meta.get("parse") is not parse_layers or value is None:
                continue
            bad = [x for x in value if not 0 <= x < num_layers]
            if not bad:
                continue
            flag = meta["flags"][0] if meta["flags"] else "--" + f.name.replace("_", "-")
            missing = f"layer {bad[0]} does not" if len(bad) == 1 else f"layers {layer_ranges(bad)} do not"
            error = PlanError(
                f"{flag} {layer_ranges(value)}: {model or 'the model'} has {num_layers} layers "
                f"(0-{num_layers - 1}), so {missing} exist (analysis {self.name}); give layers "
                f"within 0-{num_layers - 1}"
            )
            error.option = f.name  # type: ignore[attr-defined]  # the CLI says where a preset set it
            raise error

    # ------------------------------------------------------------------ command line
    @classmethod
    def cli_options(cls) -> list[CliOption]:
        """The command's own options: the fields declared with :func:`option`."""
        return [
            CliOption(f.name, f.default, **f.metadata["option"])
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if "option" in f.metadata
        ]

    @classmethod
    def from_cli(cls, **values: Any) -> Analysis:
        """The analysis from its command's option values."""
        kwargs = {}
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for opt in cls.cli_options():
            if opt.name not in fields:  # an option the class's own from_cli handles
                continue
            value = values[opt.name]
            if opt.parse is not None:
                value = opt.parse(value)
            elif opt.cli is list or isinstance(opt.default, tuple):  # a repeatable option
                value = tuple(value) if value else opt.default
            kwargs[opt.name] = value
        return cls(**kwargs)

    @classmethod
    def run_cli(cls, options: Options, out: Path, **values: Any) -> RunResult:
        """What the command does: run this analysis over ``options``' samples into ``out``."""
        from ..api import run

        return run(options, [cls.from_cli(**values)], out)


ANALYSES: Registry[type[Analysis]] = Registry("analysis")


def check_layers(analyses: Sequence[Analysis], num_layers: int, model: str = "") -> None:
    """Every analysis's layer selections within the model's ``num_layers`` (see
    :meth:`Analysis.check_layers`); a run calls this once, right after the model loads."""
    for analysis in analyses:
        analysis.check_layers(num_layers, model)


def video_grid(layout: TokenLayout) -> dict[str, Any]:
    """Record fields that place each video token on its frame: ``video_grid`` (per frame
    group ``[offset among the video tokens, h, w]``, the tokens row-major over the grid, or
    ``[offset, h, w, 1]`` when they run column-major, ``TokenLayout.grid_order``; read with
    :func:`~vlmflow.models.regions.grid_entry`) and ``frames_per_group``; the report draws
    per-sample overlays from them."""
    offsets = layout.frame_token_offsets or (0,) * layout.num_frames
    column = [1] if layout.grid_order == "column" else []
    grid = [
        [span.start - layout.video.start + off, h, w, *column]
        for span, off, (h, w) in zip(layout.frames, offsets, layout.frame_grids, strict=True)
    ]
    return {"video_grid": grid, "frames_per_group": layout.frames_per_group}


def frame_region_of(probe: Probe) -> dict[str, Any]:
    """Record field ``frame_region``: ``[x0, y0, x1, y1]``, the part of the frames fed to
    the model that its processor kept (the centre crop, see :mod:`vlmflow.models.regions`),
    so the report lays each token grid over the pixels it was computed from."""
    frames = probe.prepared.frames
    if frames is None:
        return {}
    return {"frame_region": [float(v) for v in probe.adapter.frame_region(*frames.shape[1:3])]}


class Overlays(list):  # type: ignore[type-arg]
    """What :func:`overlay_samples` returns: the ``(sample, frames)`` pairs to draw. When the
    run's samples cannot be loaded again (a dataset moved or gone) it is empty; then ``kept``
    holds, caption -> path, the figures of those samples an earlier report drew (kept as they
    are, not removed as stale) and ``note`` says so for the section's notes."""

    def __init__(self, pairs: Sequence[tuple[Sample, Any]] = ()) -> None:
        super().__init__(pairs)
        self.kept: dict[str, Path] = {}
        self.note = ""


QUOTES = "'\""  # around a KeyError's text


def _legacy_name(sample_id: str) -> bool:
    """Whether a report before :func:`~vlmflow.rundir.file_stem` could have named a figure
    ``<id>.png`` in its folder (one path component: no separator, not ``.`` or ``..``)."""
    return (
        bool(sample_id)
        and sample_id not in {".", ".."}
        and not any(c in sample_id for c in "/\\\0")
        and len(os.fsencode(sample_id)) <= 250  # a longer name is no file (ENAMETOOLONG)
    )


def overlay_path(run: RunDir, folder: str, sample_id: str) -> Path:
    """``figures/<folder>/<file stem of the id>.png``: a sample's overlay figure."""
    from ..rundir import file_stem

    return run.figure_path(f"{folder}/{file_stem(sample_id)}")


def overlay_samples(
    records: pd.DataFrame, run: RunDir, analysis: str, caption: str = "Over the frames"
) -> Overlays:
    """The samples an analysis draws over their frames in the report, with their frames
    ``(T, H, W, 3)``: the first ``overlays`` (its option) sample ids in sorted order, so the
    choice depends neither on sharding nor on processing order. Frames are loaded again
    from the run's dataset as the run sampled them, from its path as the run resolved it
    (:meth:`~vlmflow.rundir.RunDir.data_specs`, so a report from another working folder
    finds a relative path). When that fails nothing is drawn: the figures an earlier report
    drew of those samples (``figures/<analysis>/``, see :func:`overlay_path`) are kept and
    shown, captioned ``"<caption>: <id>"``, and the section's note says why (see :class:`Overlays`)."""
    from ..data import load_dataset
    from ..data.video import load_sample_frames

    manifest = run.manifest()
    config = manifest.get("config", {})
    count = int(config.get("analyses", {}).get(analysis, {}).get("overlays", 0) or 0)
    drawable = records[records["error"].isna()] if "error" in records else records  # not failed samples
    ids = sorted(set(drawable["sample_id"].astype(str)))[:count]
    if not ids:
        return Overlays()
    # the run's policy: the user's (config) wins over a benchmark's own, as in the run,
    # unless the folder was started before it won (RunDir.frame_policy_rule)
    chosen = config.get("frame_policy")
    # (the rule reads every record: asked only when it can matter, i.e. a policy was chosen)
    benchmark_wins = bool(chosen) and run.frame_policy_rule(manifest) == "benchmark"
    recorded = manifest.get("frame_policy")
    default = recorded if isinstance(recorded, str) else "segment_middle"
    failures = []
    for spec in run.data_specs():
        try:
            samples = load_dataset(
                spec,
                tasks=config.get("tasks") or None,
                samples=config.get("samples"),
                seed=config.get("seed", 0),
            )
            by_id = {s.id: s for s in samples}
            if missing := [sid for sid in ids if sid not in by_id]:
                raise KeyError(f"no sample {missing[0]!r} in it")
            out = Overlays()
            for sid in ids:
                sample = by_id[sid]
                frames = sample.frames
                if frames is None:
                    if benchmark_wins:
                        policy = sample.meta.get("frame_policy", chosen or default)
                    else:
                        policy = chosen or sample.meta.get("frame_policy", default)
                    frames = load_sample_frames(sample, int(config.get("num_frames", 8)), policy)
                out.append((sample, frames))
            return out
        except Exception as exc:  # overlays are an extra: a moved dataset must not cost the report
            failures.append(f"{spec}: {str(exc).strip(QUOTES) or type(exc).__name__}")
    why = "; ".join(failures) or "the run recorded no dataset"
    log.warning("no %s overlays: cannot load the run's samples again (%s)", analysis, why)
    out = Overlays()
    for sid in ids:
        path = overlay_path(run, analysis, sid)
        if not path.is_file() and _legacy_name(sid):  # drawn before ids became file stems
            path = path.with_name(f"{sid}.png")
        if path.is_file():
            out.kept[f"{caption}: {sid}"] = path
    kept = len(out.kept)
    out.note = (
        f" The per-sample figures over the frames were not drawn again: the run's samples cannot be "
        f"loaded ({why}); "
        + (
            f"the {kept} an earlier report drew {'is' if kept == 1 else 'are'} kept and shown."
            if kept
            else "no earlier one is kept."
        )
    )
    return out


def ordered() -> list[type[Analysis]]:
    """Every registered analysis in report order (``order``, then name)."""
    from . import load_all

    load_all()
    return sorted((ANALYSES.get(n) for n in ANALYSES), key=lambda c: (c.order, c.name))


@dataclass(frozen=True, repr=False)
class Answer:
    """An answer read at the last position: the model's own (the baseline) or one under a
    knockout (``plan`` names it). Its repr is one line: the letter, the option
    probabilities, the truth (and for a knockout, the baseline answer's probability and its
    % change); ``probs`` (the whole vocabulary) stays out of it.

    Fields: ``probs`` the next-token probabilities ``(vocab,)``, float64; ``pred_id`` /
    ``pred_token`` this answer's top token (the argmax of ``probs``: under a knockout, the
    knockout's own answer, which may differ from the baseline's) and ``pred_option`` the
    option letter it is, if any; ``gt_id`` / ``gt_letter`` the true letter's token and letter
    (``None`` without a known answer); ``option_probs`` each option letter's probability, in
    the order of ``letters``; ``rule`` what counts as correct (``CORRECTNESS``); ``plan`` the
    knockout's plan name (``None``: the baseline); ``base`` the baseline answer a knockout is
    compared with (``None``: the baseline itself).

    Probabilities: ``p_pred`` is ``probs`` at *this* answer's top token (a knockout that
    turns A at 0.99 into B at 0.99995 has ``p_pred`` 0.99995); ``p_gt`` the truth's. The
    paper's quantities compare a knockout with the baseline, named as ``probe.sweep``'s
    columns: ``p_pred_base`` / ``p_pred_new`` the baseline answer's probability before and
    after the knockout, ``rel_pred`` its % change, ``p_gt_base`` / ``p_gt_new`` / ``rel_gt``
    the same for the truth, ``pred_base`` / ``pred_new`` the two answers; ``None`` on the
    baseline answer itself."""

    probs: torch.Tensor  # (vocab,) float64: float32 rounds a near-certain answer's p to 1.19e-7 steps
    pred_id: int
    pred_token: str
    pred_option: str | None  # the option letter the argmax token is, if any
    gt_id: int | None
    gt_letter: str | None
    option_probs: tuple[float, ...]
    letters: tuple[str, ...] = ()
    rule: str = "ids"
    plan: str | None = field(default=None, compare=False)  # the knockout's plan; None: baseline
    base: Answer | None = field(default=None, compare=False)  # a knockout's baseline; None: baseline

    def __repr__(self) -> str:
        what = "baseline" if self.plan is None else f"knockout {self.plan!r}"
        answer = self.letter if self.letter is not None else repr(self.pred_token)
        options = ", ".join(f"{k}: {v:.3g}" for k, v in self.probabilities.items())
        truth = "" if self.gt_letter is None else f", gt={self.gt_letter}, correct={self.correct}"
        change = ""
        if self.base is not None:
            change = f", p(baseline {self.pred_base})={self.p_pred_new:.3g} ({self.rel_pred:+.3g}%)"
        return f"Answer({what}: {answer}, p={self.p_pred:.3g}{change}, options={{{options}}}{truth})"

    @property
    def letter(self) -> str | None:
        """The option letter the model answers (``None`` if its top token is no letter)."""
        return self.pred_option

    @property
    def probabilities(self) -> dict[str, float]:
        """Option letter -> probability of that letter as the next token."""
        return dict(zip(self.letters, self.option_probs, strict=True))

    @property
    def p_pred(self) -> float:
        """The probability of this answer's own top token (a knockout's: its new answer's)."""
        return float(self.probs[self.pred_id])

    @property
    def p_gt(self) -> float | None:
        """The true letter's probability (``None`` without a known answer)."""
        return None if self.gt_id is None else float(self.probs[self.gt_id])

    @property
    def p_pred_base(self) -> float | None:
        """A knockout's: the baseline answer's probability before it (``base.p_pred``)."""
        return None if self.base is None else self.base.p_pred

    @property
    def p_pred_new(self) -> float | None:
        """A knockout's: the baseline answer's probability under it (``probe.sweep``'s
        ``p_pred_new``, not this answer's own ``p_pred``)."""
        return None if self.base is None else float(self.probs[self.base.pred_id])

    @property
    def rel_pred(self) -> float | None:
        """A knockout's: the % change of the baseline answer's probability (``probe.sweep``'s
        ``rel_pred``; -100: the knockout removed it); NaN when the baseline's was 0."""
        if self.base is None:
            return None
        return relative_change(self.p_pred_new, self.base.p_pred)  # type: ignore[arg-type]

    @property
    def p_gt_base(self) -> float | None:
        """A knockout's: the truth's probability before it (``None`` for the baseline or
        without a known answer)."""
        return None if self.base is None else self.base.p_gt

    @property
    def p_gt_new(self) -> float | None:
        """A knockout's: the truth's probability under it (its ``p_gt``)."""
        return None if self.base is None else self.p_gt

    @property
    def rel_gt(self) -> float | None:
        """A knockout's: the % change of the truth's probability (``probe.sweep``'s ``rel_gt``)."""
        if self.base is None or self.p_gt is None or self.base.p_gt is None:
            return None
        return relative_change(self.p_gt, self.base.p_gt)

    @property
    def pred_base(self) -> str | None:
        """A knockout's: the baseline's answer (its letter, else its top token)."""
        return None if self.base is None else self.base.record()["pred"]

    @property
    def pred_new(self) -> str | None:
        """A knockout's: its own answer (its letter, else its top token)."""
        return None if self.base is None else self.record()["pred"]

    @property
    def correct_ids(self) -> bool | None:
        """The argmax token is the true letter's token id."""
        return None if self.gt_id is None else self.pred_id == self.gt_id

    @property
    def correct_text(self) -> bool | None:
        """The argmax token, decoded on its own, equals the true letter, case ignored (the
        paper's rule; no stripping, as its code)."""
        return None if self.gt_letter is None else self.pred_token.lower() == self.gt_letter.lower()

    @property
    def correct(self) -> bool | None:
        """Correct by the run's rule (``rule``: ``ids`` or ``text``, see ``CORRECTNESS``)."""
        return self.correct_text if self.rule == "text" else self.correct_ids

    def keep(self, mode: str) -> bool:
        """Whether ``sample_mode`` (correct / wrong / all) analyses this sample."""
        if mode == "all" or self.correct is None:
            return True
        return self.correct if mode == "correct" else not self.correct

    def record(self) -> dict[str, Any]:
        return {
            "pred": self.pred_option if self.pred_option else self.pred_token,
            "pred_token": self.pred_token,
            "gt": self.gt_letter,
            "correct": self.correct,
            "correct_ids": self.correct_ids,
            "correct_text": self.correct_text,
            "p_pred": self.p_pred,
            "p_gt": self.p_gt,
            "option_probs": list(self.option_probs),
        }


Baseline = Answer  # the name the analyses use for the model's own answer


def relative_change(new: float, base: float) -> float:
    """``(new - base) / base * 100``; NaN when the base probability is 0."""
    return (new - base) / base * 100.0 if base > 0 else float("nan")


def read_answer(adapter: Adapter, prepared: Prepared, logits: torch.Tensor, rule: str = "ids") -> Answer:
    """Interpret last-position ``logits`` ``(vocab,)`` as an answer to ``prepared``;
    ``rule`` says what counts as correct (``CORRECTNESS``). The softmax is taken in float64:
    in float32 a near-certain answer's probability moves in steps of 1.19e-7 (its epsilon
    near 1), so a knockout's small change of it reads as 0 or a multiple of that."""
    if rule not in CORRECTNESS:
        raise PlanError(f"unknown correctness rule {rule!r}; choose from {CORRECTNESS}")
    probs = softmax64(logits)
    pred_id = int(probs.argmax())
    letters = prepared.sample.letters
    option = next((letters[i] for i, t in enumerate(prepared.option_ids) if t == pred_id), None)
    return Answer(
        probs=probs,
        pred_id=pred_id,
        pred_token=adapter.tokenizer.decode([pred_id]),
        pred_option=option,
        gt_id=prepared.answer_id,
        gt_letter=prepared.sample.answer_letter,
        option_probs=tuple(float(probs[t]) for t in prepared.option_ids),
        letters=letters,
        rule=rule,
    )
