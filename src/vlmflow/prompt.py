"""Prompt text for multiple-choice VideoQA, with the character ranges of every group.

Styles: ``paper`` is the prompt the paper used for the family: the paper's LLaVA template
exactly (REFERENCE_NOTES §2.4) with the model's own video placeholder, for every family but
VideoLLaMA3, whose paper prompt is its native chat template (see its adapter); ``mvbench``
is that LLaVA template for every family; ``chat`` renders the model's chat template. The
LLaVA template and ``chat`` end with the answer prompt ``Best option:(`` so the next token
is the option letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PromptError
from .sample import Sample

SYSTEM_MVBENCH = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the "
    "detail and movement of objects, and the action and pose of persons. Based on your "
    "observations, select the best option that accurately addresses the question.\n"
)
POST_PROMPT = "\nOnly give the best option."
ANSWER_PROMPT = "Best option:("
PROMPT_STYLE_HELP = {
    "paper": "the paper's template per family",
    "chat": "the model's chat template",
    "mvbench": "the LLaVA eval_mvbench template for any family",
}
PROMPT_STYLES = tuple(PROMPT_STYLE_HELP)

CharRange = tuple[int, int]


@dataclass(frozen=True)
class PromptText:
    """A prompt with one video placeholder and the character ranges of its groups."""

    text: str
    placeholder: str
    placeholder_at: int
    system: CharRange
    question: CharRange
    question_no_options: CharRange
    options: tuple[CharRange, ...] = field(default=())


def question_block(sample: Sample) -> tuple[str, CharRange, list[CharRange]]:
    """``Question: {q}\\nOptions:\\n(A) ...`` (rstripped), the raw question's range and each
    option's ``(X) text`` range, relative to the block."""
    if not sample.options:
        raise PromptError(f"sample {sample.id!r} has no options for a multiple-choice prompt")
    head = "Question: "
    text = head + sample.question + "\nOptions:\n"
    q_range = (len(head), len(head) + len(sample.question))
    opts = []
    for letter, option in zip(sample.letters, sample.options, strict=True):
        line = f"({letter}) {option}"
        opts.append((len(text), len(text) + len(line)))
        text += line + "\n"
    return text.rstrip(), q_range, opts


def paper_prompt(sample: Sample, placeholder: str, system: str = SYSTEM_MVBENCH) -> PromptText:
    """The paper's ``eval_mvbench`` conversation (REFERENCE_NOTES §2.1-2.4)."""
    block, q_range, opts = question_block(sample)
    before = system + " USER: "
    mid = placeholder + "\n USER: "
    text = before + mid + block + " " + POST_PROMPT + " ASSISTANT:" + ANSWER_PROMPT
    at = len(before) + len(mid)
    return PromptText(
        text=text,
        placeholder=placeholder,
        placeholder_at=len(before),
        system=(0, len(system.rstrip())),
        question=(at, at + len(block)),
        question_no_options=(at + q_range[0], at + q_range[1]),
        options=tuple((at + a, at + b) for a, b in opts),
    )


SYSTEM_OPEN_ENDED = (
    "You are Video-ChatGPT, a large vision-language assistant. You are able to understand the "
    "video content that the user provides, and assist the user with a variety of tasks using "
    "natural language.Follow the instructions carefully and explain your answers in detail "
    "based on the provided video."
)


SYSTEM_MVBENCH_OPEN_ENDED = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the "
    "detail and movement of objects, and the action and pose of persons. Based on your "
    "observations, answer the question concisely.\n"
)
"""The system prompt of the paper's ``eval_mvbench_open_ended`` templates (LLaVA and phi3)."""


def open_ended_prompt(
    sample: Sample,
    placeholder: str,
    system: str = SYSTEM_OPEN_ENDED,
    *,
    roles: tuple[str, str] = ("USER: ", "ASSISTANT:"),
    video: tuple[str, str] = ("", "\n"),
) -> PromptText:
    """The paper's open-ended conversation: ``<system> USER: <video>\\n USER: {Q} ASSISTANT:``
    (``eval_vcgbench``). A sample may set, in ``meta``, ``system`` (another system prompt),
    ``question_template`` (e.g. ``"Question: {q}\\n"``) and ``answer_prompt`` (text the
    assistant turn starts with), as the paper's open-ended TVBench / Video-MME do.
    ``roles`` (user, assistant) and ``video`` (the text around the placeholder) are another
    template's: the phi3 one's ``("<|user|>\\n", "<|assistant|>\\n")`` and
    ``("<img>", "</img>\\n")``; every turn is preceded by a space."""
    system = sample.meta.get("system", system)
    template = sample.meta.get("question_template", "{q}")
    before = system + " " + roles[0] + video[0]
    mid = placeholder + video[1] + " " + roles[0]
    at = len(before) + len(mid)
    head = template.split("{q}")[0]
    user = template.format(q=sample.question)
    text = before + mid + user + " " + roles[1] + sample.meta.get("answer_prompt", "")
    raw = (at + len(head), at + len(head) + len(sample.question))
    whole = (at, at + len(user.rstrip()))  # the paper's question range: the user text as given
    return PromptText(text, placeholder, len(before), (0, len(system.rstrip())), whole, raw, ())


def locate_prompt(sample: Sample, text: str, placeholder: str, system: str = "") -> PromptText:
    """Find the groups of ``sample`` in a prompt rendered elsewhere (a chat template).

    The question block must appear verbatim after the video placeholder.
    """
    at_video = text.find(placeholder)
    if at_video < 0:
        raise PromptError(f"sample {sample.id!r}: the prompt has no video placeholder {placeholder!r}")
    if sample.options:
        block, q_range, opts = question_block(sample)
    else:
        block, q_range, opts = sample.question, (0, len(sample.question)), []
    at = text.find(block, at_video)
    if at < 0:
        raise PromptError(
            f"sample {sample.id!r}: the question and option text was not found in the prompt "
            "after the video; the chat template rewrote it"
        )
    sys_at = text.find(system) if system else -1
    return PromptText(
        text=text,
        placeholder=placeholder,
        placeholder_at=at_video,
        system=(sys_at, sys_at + len(system.rstrip())) if sys_at >= 0 else (0, 0),
        question=(at, at + len(block)),
        question_no_options=(at + q_range[0], at + q_range[1]),
        options=tuple((at + a, at + b) for a, b in opts),
    )
