"""The paper's choices in one place: what ``--paper`` selects on every command.

vlmflow keeps its own defaults where they are better founded (docs/paper-parity.md says
where and why) and offers the paper's behaviour behind an option. ``PAPER_OPTIONS`` maps a
command to those options, by their Python parameter names; ``PAPER_RUN`` holds what every
command shares. With ``--paper`` each listed option not given explicitly takes the paper's
value; an option given explicitly wins. The library equivalent is passing the same
keyword arguments to the analysis classes (e.g. ``LogitLens(projection="embed",
bins="paper")``) and ``Options(correctness="text")``.

Example::

    >>> apply_paper("logit-lens", {"projection": "unembed", "topk": 5}, explicit={"topk"})
    {'projection': 'embed', 'topk': 5}
"""

from __future__ import annotations

from typing import Any

# What every command shares: the paper's prompt, its decoded-text correctness rule and its
# subsampling seed (``--test_ratio N`` draws ``random.seed(42); random.sample(...)`` per task,
# the same positions ``--samples N --seed 42`` draws).
PAPER_RUN: dict[str, Any] = {"prompt": "paper", "correctness": "text", "seed": 42}

PAPER_OPTIONS: dict[str, dict[str, Any]] = {
    # the knockout machinery already matches the paper point by point
    "flow": {"sample_mode": "correct", "window": 9, "window_style": "center"},
    "eval": {},
    # the family's setting (the adapter's paper_final_norm): its LLaVA code reads intermediate
    # layers without the final norm, its VideoLLaMA3 code with it
    "answer-prob": {"sample_mode": "correct", "norm": "paper"},
    # input-embedding lens (normed at the last layer), its word lists, its 6-layer bins
    "logit-lens": {"projection": "embed", "words": "paper-action-sequence", "bins": "paper", "min_hits": 100},
    # one map per question word over the video, layers 11-20 (1-based), heads averaged; its
    # words are matched from the raw question to the last token (options and prompt included);
    # every sample (its --skip_baseline_wrong_samples is off and the script does not pass it)
    "attention": {"view": "query-words", "layers": "10-19", "word_span": "to-last", "sample_mode": "all"},
    # the scripts' fixed random-blocking fraction per model, for its presets; a spec file or
    # a search has none: each sample's measured fraction, as the scripts' were (a note says so)
    "pathways": {"random_fraction": lambda values: "paper" if values.get("preset") else "measured"},
    # VCGBench: generated response, en_core_web_lg, its string matching of verbs, and the
    # text regenerated under every cut (100 tokens; slow, it changes no statistic)
    "open-ended": {
        "anchor": "verb",
        "spacy_model": "en_core_web_lg",
        "verb_match": "string",
        "response_from": "generate",
        "response_tokens": 256,
        "num_open_tokens": 1,
        "min_verbs": 3,
        "regenerate_tokens": 100,
    },
}


def apply_paper(command: str, values: dict[str, Any], explicit: set[str] = frozenset()) -> dict[str, Any]:
    """``values`` (a command's options) with the paper's choices for ``command`` for every
    option that is not in ``explicit`` (the options the user gave). A choice that depends
    on the other options is a function of ``values``."""
    out = dict(values)
    for key, value in {**PAPER_RUN, **PAPER_OPTIONS.get(command, {})}.items():
        if key in out and key not in explicit:
            out[key] = value(values) if callable(value) else value
    return out


def paper_notes(command: str, values: dict[str, Any], explicit: set[str] = frozenset()) -> list[str]:
    """What ``--paper`` could not take from the paper for these options (one line each)."""
    if command == "pathways" and "random_fraction" not in explicit and not values.get("preset"):
        return [
            "note: --paper: the paper fixed a random-blocking fraction only for its presets "
            "(--preset); this pathway's random blocking uses each sample's measured fraction"
        ]
    return []
