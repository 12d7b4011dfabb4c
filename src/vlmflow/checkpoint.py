"""Checks on a checkpoint before it is loaded, and one clear line when loading fails anyway.

A run should stop on a bad checkpoint at once, with one line saying what is wrong, before
any sample is processed - not after a traceback from deep inside transformers, and never by
running a model whose weights were silently left random. :func:`preflight` looks at a local
checkpoint folder without loading it (a config that parses and names a family vlmflow
knows; weight files that exist and whose headers read; a tokenizer); :func:`load_weights`, which
every adapter loads its weights with, refuses a checkpoint that lacks weights the model
needs (transformers would fill them with random values and only log it); :func:`load_error`
turns whatever loading still raises (a weight of the wrong shape, a missing attention
kernel) into an :class:`~vlmflow.errors.UnsupportedModelError` of one line.

    >>> preflight("/nonexistent/folder", known=lambda config: True)
    Traceback (most recent call last):
    ...
    vlmflow.errors.UnsupportedModelError: checkpoint folder not found: /nonexistent/folder
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UnsupportedModelError

# Keyword arguments of every model ``from_pretrained`` (:func:`load_weights` passes them).
# transformers 5.25 loads with hub kernels on by default: it kernelizes the decorated
# layers (RMSNorm, activations, the rotary application) for the device the model is on,
# with kernels downloaded from the Hub on an accelerator, and kernelizes again at every
# later train()/eval() switch (so a model loaded on CPU and moved to CUDA gets them then).
# vlmflow measures the model's own PyTorch computations: the same on every machine and
# under 5.24 (where kernels were opt-in and the keyword defaults to False), and
# differentiable (attribution runs autograd through layers the inference-only activation
# kernels would replace).
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# any one of these is a tokenizer (the hub repos ship tokenizer.json, sentencepiece's
# tokenizer.model - PLLaVA, Phi-3 - or a BPE vocab.json + merges.txt; tiktoken files elsewhere)
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "*.tiktoken",
    "spiece.model",
)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s message on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def looks_local(spec: str) -> bool:
    """Whether ``spec`` names a folder on disk rather than a hub id (``name`` or ``org/name``):
    it starts with ``.``, ``/`` or ``~``, is absolute on this OS, holds a path separator a hub
    id cannot (``\\``), has more than one ``/``, or exists. A missing one then fails at once
    instead of being retried on the hub. ``org/name`` that does not exist here is a hub id
    even when a folder ``org`` exists (as transformers reads it): a hub download must never be
    blocked by a local folder's name; :func:`missing_here` adds that fact to a hub error."""
    if spec.startswith((".", "/", "~")) or os.path.isabs(spec) or spec.count("/") > 1:
        return True
    if any(sep in spec for sep in {"\\", os.sep, os.altsep or "/"} - {"/"}):
        return True
    return Path(spec).expanduser().exists()


def missing_here(spec: str) -> str:
    """A note for a hub error on ``org/name`` when a folder ``org`` exists here (the user
    probably meant a local path: ``models/foo``), else ``""``."""
    parent = Path(spec).parent
    if spec.count("/") == 1 and parent != Path(".") and parent.is_dir():
        return f" (and there is no folder {spec} here, though {parent}/ exists)"
    return ""


def preflight(spec: str, known: Callable[[dict[str, Any]], bool]) -> None:
    """Check the checkpoint folder ``spec`` (hub ids are left to transformers).

    ``known(raw_config)`` says whether some adapter handles the config. Raises
    :class:`UnsupportedModelError` for a missing folder, a file given instead of a folder,
    no or unreadable ``config.json``, an unknown family, no weight files, a shard named by
    the weight index but absent, a weight file whose header cannot be read, or no
    tokenizer file.
    """
    if not looks_local(spec):
        return
    root = Path(spec).expanduser()
    if not root.exists():
        raise UnsupportedModelError(f"checkpoint folder not found: {spec}")
    if not root.is_dir():
        raise UnsupportedModelError(f"{spec} is a file; give the checkpoint folder (with config.json)")
    config = root / "config.json"
    if not config.is_file():
        raise UnsupportedModelError(
            f"cannot read a model config from {spec!r}: it has no config.json "
            "(not a transformers checkpoint folder)"
        )
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(
            f"cannot read a model config from {spec!r}: {config}: {one_line(exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise UnsupportedModelError(f"{config} must hold a JSON object, not {type(raw).__name__}")
    if not known(raw):
        from .models import MODELS

        supported = ", ".join(t for n in MODELS for t in MODELS.get(n).model_types)
        raise UnsupportedModelError(
            f"{spec}: no adapter for model type {raw.get('model_type')!r}; supported: {supported} "
            "(see `vlmflow list models`)"
        )
    weights = sorted({f for pattern in WEIGHT_PATTERNS for f in root.glob(pattern)})
    if not weights:
        raise UnsupportedModelError(
            f"{spec} has a config but no weights ({', '.join(WEIGHT_PATTERNS)}); is the download complete?"
        )
    for index in root.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnsupportedModelError(f"cannot read the weight index {index}: {one_line(exc)}") from None
        missing = sorted(s for s in shards if not (root / s).is_file())
        if missing:
            raise UnsupportedModelError(
                f"{spec}: weight shard(s) {', '.join(missing)} named in {index.name} are missing; "
                "is the download complete?"
            )
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
    if not any(any(root.glob(pattern)) for pattern in TOKENIZER_PATTERNS):
        raise UnsupportedModelError(
            f"{spec} has a config and weights but no tokenizer (none of {', '.join(TOKENIZER_PATTERNS)}); "
            "is the download complete?"
        )


def _check_safetensors(file: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: a damaged file
        raise UnsupportedModelError(f"weight file {file} is damaged or incomplete: {one_line(exc)}") from None


def load_weights(model_class: Any, path: str, *, hint: str = "", **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``model_class.from_pretrained(path, **kwargs)`` that refuses missing weights.

    Returns the model and transformers' loading info. Transformers fills a weight the
    checkpoint lacks with a random initialisation and only logs it (nothing under a log
    level of errors); here that is an :class:`UnsupportedModelError` naming ``path``, how
    many weights are missing and the first few (``hint``: a family's likely cause, appended).
    Weights the model ties to another (an output head tied to the embeddings under
    ``tie_word_embeddings``) and buffers transformers does not expect in a checkpoint are
    not missing: transformers has taken them out of ``missing_keys`` by the time it returns.
    Checkpoint weights the model does not use are logged as a warning.
    """
    kwargs = {**NO_HUB_KERNELS, **kwargs}
    model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    check_loading_info(path, info, hint)
    return model, info


def check_loading_info(path: str, info: dict[str, Any], hint: str = "") -> None:
    """Raise for the missing or mismatched weights in ``info`` (transformers' loading info of
    ``path``); log the unused ones (see :func:`load_weights`)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(k[0] if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weight(s) the model needs are not in it, e.g. {missing[:5]}")
        if mismatched:
            parts.append(f"{len(mismatched)} have another shape than the model's, e.g. {mismatched[:5]}")
        raise UnsupportedModelError(
            f"{path}: {'; '.join(parts)}; they would be left random, so it is not loaded "
            f"(an incomplete or differently converted checkpoint?){hint and '; ' + hint}"
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        log.warning("%s: %d checkpoint weights not used, e.g. %s", path, len(unexpected), unexpected[:3])


def load_error(spec: str, family: str, exc: BaseException) -> UnsupportedModelError:
    """One line for a checkpoint that failed to load after :func:`preflight` passed."""
    text = one_line(exc)
    hint = ""
    if "ignore_mismatched_sizes" in text:  # transformers v5 names the tensors only in its log
        text = "some weights have another shape than the config makes"
    if "size mismatch" in text or "shape" in text:
        hint = "; the weights do not fit the config (another model's config.json?)"
    elif "flash" in text.lower():
        hint = "; flash attention is not available here: use --attn sdpa (knockout needs sdpa or eager)"
    return UnsupportedModelError(f"cannot load {spec!r} ({family}): {text}{hint}")
