"""What every analysis shares: the registry and the baseline read of a prepared sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ..engine import Engine
from ..errors import PlanError
from ..models.base import Adapter, Prepared
from ..registry import Registry

SAMPLE_MODES = ("correct", "wrong", "all")
# What makes an answer correct: ``ids`` - the argmax token is the true letter's token id
# (vlmflow's default); ``text`` - the argmax token decoded alone equals the letter, case
# ignored (the paper's code: ``decode([t]).lower() == letter.lower()``).
CORRECTNESS = ("ids", "text")


class Analysis(Protocol):
    """A named family of plans and reads; turns one prepared sample into records."""

    name: ClassVar[str]

    def records(
        self, adapter: Adapter, prepared: Prepared, engine: Engine, base: Baseline
    ) -> list[dict[str, Any]]: ...

    def config(self) -> dict[str, Any]: ...


ANALYSES: Registry[type] = Registry("analysis")


@dataclass(frozen=True)
class Baseline:
    """The model's own answer to a prepared sample, read at the last position."""

    probs: torch.Tensor  # (vocab,) float32
    pred_id: int
    pred_token: str
    pred_option: str | None  # the option letter the argmax token is, if any
    gt_id: int | None
    gt_letter: str | None
    option_probs: tuple[float, ...]
    rule: str = "ids"

    @property
    def p_pred(self) -> float:
        return float(self.probs[self.pred_id])

    @property
    def p_gt(self) -> float | None:
        return None if self.gt_id is None else float(self.probs[self.gt_id])

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


def read_answer(adapter: Adapter, prepared: Prepared, logits: torch.Tensor, rule: str = "ids") -> Baseline:
    """Interpret last-position ``logits`` ``(vocab,)`` as an answer to ``prepared``;
    ``rule`` says what counts as correct (``CORRECTNESS``)."""
    if rule not in CORRECTNESS:
        raise PlanError(f"unknown correctness rule {rule!r}; choose from {CORRECTNESS}")
    probs = logits.float().softmax(-1)
    pred_id = int(probs.argmax())
    letters = prepared.sample.letters
    option = next((letters[i] for i, t in enumerate(prepared.option_ids) if t == pred_id), None)
    return Baseline(
        probs=probs,
        pred_id=pred_id,
        pred_token=adapter.tokenizer.decode([pred_id]),
        pred_option=option,
        gt_id=prepared.answer_id,
        gt_letter=prepared.sample.answer_letter,
        option_probs=tuple(float(probs[t]) for t in prepared.option_ids),
        rule=rule,
    )
