"""The paper's open-ended variants of TVBench and Video-MME (``tvbench_open_ended:ROOT``,
``videomme_open_ended:ROOT``), read from the same layouts as ``tvbench`` and ``videomme``.

As the paper's ``BaseDataset(open_ended=True)`` and ``VideoMMEDataset(open_ended=True)``
(REFERENCE_NOTES §1.7): no options; the user turn is ``Question: {q}\\n``; the system prompt
is the MVBench one ending "answer the question concisely."; TVBench tasks get their own
answer prompt, written after ``ASSISTANT:`` so the model completes the sentence:

=====================  ===========================================================
Action Antonym         ``\\nThe action being performed in the video regarding the
                       {object} is to`` (object from the answer, else without it)
Action Sequence        ``\\nThe action the person is doing first is to``
Action Localization    ``\\nThe action '{action}' occurs at the``
Moving Direction       ``\\n{The cyan sphere} moves to the``
Object Count           ``\\nThe number of moving objects is`` (digits become words)
Scene Transition       ``\\nThe scene in the video changes from the`` (fixed question)
=====================  ===========================================================

Other tasks have no answer prompt. The reference answer (lower-cased and trimmed as the
paper does) is ``answer_text``; the candidates, trimmed the same way, ``meta["candidates"]``.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import DataError
from ..prompt import SYSTEM_MVBENCH_OPEN_ENDED
from ..sample import Sample
from .registry import DATASETS

QUESTION_TEMPLATE = "Question: {q}\n"
ANTONYM_OBJECTS = ("jacket", "shoe", "bag", "headphone", "hat/cap", "glasses")
COLOURS = ("cyan", "green", "blue", "gray", "purple", "yellow", "brown", "red")
SHAPES = ("sphere", "cylinder", "cube")
DIRECTION_OBJECTS = tuple(f"the {c} {s}" for c in COLOURS for s in SHAPES)
NUMBER_WORDS = dict(
    zip("0123456789", "zero one two three four five six seven eight nine".split(), strict=True)
)
SCENE_QUESTION = "Where does the scene in the video change from one place to another place?"
LOCALIZATION = ("throughout", "beginning", "middle", "end")


def _strip_from(text: str) -> str:
    text = text.lower()
    for prefix in ("from the ", "from a ", "from "):
        if text.startswith(prefix):
            return text.replace(prefix, "", 1)
    return text


def _where(sample: Sample) -> str:
    """The annotation file and item of ``sample`` (when known) and its id, for an error."""
    m = sample.meta
    place = f"{m['json']} item {m['index']} " if "json" in m and "index" in m else ""
    return f"{place}(sample {sample.id!r})" if place else f"sample {sample.id!r}"


def open_tvbench_sample(sample: Sample) -> Sample:
    """The open-ended form of one TVBench ``sample`` (see the module doc)."""
    question = sample.question
    answer = sample.options[sample.answer] if sample.answer is not None else ""
    candidates = list(sample.options)
    prompt = None
    task = sample.task
    if task == "Action Antonym":
        obj = next((o for o in ANTONYM_OBJECTS if o in answer), "")
        prompt = (
            f"\nThe action being performed in the video regarding the {obj} is to"
            if obj
            else "\nThe action being performed in the video is to"
        )
        answer, candidates = answer.lower(), [c.lower() for c in candidates]
    elif task == "Action Sequence":
        prompt = "\nThe action the person is doing first is to"
        answer, candidates = answer.lower(), [c.lower() for c in candidates]
    elif task == "Action Localization":
        m = re.search(r"action '(.*?)'", question)
        if m is None:
            raise DataError(f"{_where(sample)}: no action '...' in the question for the open-ended prompt")
        prompt = f"\nThe action '{m.group(1)}' occurs at the"
        answer = next((w for w in LOCALIZATION if w in answer.lower()), "end")
        candidates = list(LOCALIZATION)
    elif task == "Moving Direction":
        obj = next((o for o in DIRECTION_OBJECTS if o in question), "the object")
        prompt = f"\n{obj[:1].upper() + obj[1:]} moves to the"
        answer, candidates = ("right" if "right" in answer else "left"), ["left", "right"]
    elif task == "Object Count":
        prompt = "\nThe number of moving objects is"
        if answer not in NUMBER_WORDS or any(c not in NUMBER_WORDS for c in candidates):
            raise DataError(f"{_where(sample)}: Object Count answers must be digits 0-9, got {answer!r}")
        answer, candidates = NUMBER_WORDS[answer], [NUMBER_WORDS[c] for c in candidates]
    elif task == "Scene Transition":
        question = SCENE_QUESTION
        prompt = "\nThe scene in the video changes from the"
        answer, candidates = _strip_from(answer), [_strip_from(c) for c in candidates]
    meta = {
        **sample.meta,
        "candidates": candidates,
        "question_template": QUESTION_TEMPLATE,
        "system": SYSTEM_MVBENCH_OPEN_ENDED,
    }
    if prompt is not None:
        meta["answer_prompt"] = prompt
    return dataclasses.replace(
        sample,
        question=question,
        options=(),
        answer=None,
        answer_text=answer,
        source="tvbench_open_ended",
        meta=meta,
    )


def open_videomme_sample(sample: Sample) -> Sample:
    """The open-ended form of one Video-MME ``sample``: the question alone, no answer prompt."""
    answer = sample.options[sample.answer] if sample.answer is not None else None
    meta = {
        **sample.meta,
        "candidates": list(sample.options),
        "question_template": QUESTION_TEMPLATE,
        "system": SYSTEM_MVBENCH_OPEN_ENDED,
    }
    return dataclasses.replace(
        sample, options=(), answer=None, answer_text=answer, source="videomme_open_ended", meta=meta
    )


@DATASETS.register(
    "tvbench_open_ended", help="TVBench as open-ended questions with the paper's per-task answer prompts"
)
def load_tvbench_open_ended(arg: str) -> list[Sample]:
    """TVBench (same layout as ``tvbench``) in the paper's open-ended form."""
    from .tvbench import load_tvbench

    return _open_each(load_tvbench(arg), open_tvbench_sample, "tvbench_open_ended")


@DATASETS.register("videomme_open_ended", help="Video-MME as open-ended questions (no options), as the paper")
def load_videomme_open_ended(arg: str) -> list[Sample]:
    """Video-MME (same layout as ``videomme``) in the paper's open-ended form."""
    from .videomme import load_videomme

    return _open_each(load_videomme(arg), open_videomme_sample, "videomme_open_ended")


def _open_each(samples: list[Sample], convert, source: str) -> list[Sample]:
    """``convert`` each well-formed sample; one it cannot convert fails alone, with the reason,
    and an already failed one is passed on as it is (under ``source``)."""
    out = []
    for s in samples:
        if s.error is None:
            try:
                out.append(convert(s))
                continue
            except DataError as e:
                s = dataclasses.replace(s, options=(), answer=None, error=str(e))
        out.append(dataclasses.replace(s, source=source))
    return out
