"""Model adapters (one per family), their registry, and ``load_model``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..checkpoint import load_error, missing_here, one_line, preflight
from ..errors import UnsupportedModelError, VlmflowError
from . import (
    internvl,  # noqa: F401  (registers the adapter)
    llava_image_baseline,  # noqa: F401  (registers the adapter)
    llava_next_video,  # noqa: F401  (registers the adapter)
    llava_onevision,  # noqa: F401  (registers the adapter)
    mini_internvl,  # noqa: F401  (registers the adapter)
    pllava,  # noqa: F401  (registers the adapter)
    qwen_vl,  # noqa: F401
    video_llava,  # noqa: F401  (registers the adapter)
    videollama3,  # noqa: F401  (registers the adapter)
)
from .base import MODELS, Adapter, Prepared

__all__ = [
    "MODELS",
    "Adapter",
    "Prepared",
    "load_model",
    "adapter_for",
    "resolve_spec",
    "DEMO_MODEL_DIR",
    "TINY_MODEL_DIR",
    "EMBEDDED_MODELS",
]

DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"
"""The shipped part of the demo model (vision, projector, LoRA; see :mod:`.demo`)."""
TINY_MODEL_DIR = Path(__file__).parent / "tiny_model"
"""The tiny 8-layer model (fixed option order), kept as a fast test fixture (``tiny``)."""

EMBEDDED_MODELS = {
    "demo": "the embedded demo model",
    "tiny": "the embedded 8-layer test model",
}
"""The model specs :func:`resolve_spec` resolves to a shipped checkpoint (for help texts)."""


def resolve_spec(spec: str) -> str:
    """The checkpoint folder a model spec names: ``demo`` -> the merged SmolLM2 demo model
    in the cache (built on first use) when its trained part ships in :data:`DEMO_MODEL_DIR`,
    else the tiny model; ``tiny`` -> the embedded tiny model; a folder in the demo's shipped
    format -> its merged copy; anything else unchanged but for a leading ``~`` (expanded
    here, once, for every later check and for transformers)."""
    from . import demo

    if spec.startswith("~"):
        spec = str(Path(spec).expanduser())

    if spec == "tiny":
        if not (TINY_MODEL_DIR / "config.json").exists():
            raise UnsupportedModelError(f"the tiny model is missing from {TINY_MODEL_DIR}; reinstall vlmflow")
        return str(TINY_MODEL_DIR)
    if spec == "demo":
        if not demo.is_shipped(DEMO_MODEL_DIR):  # until a trained SmolLM2 demo ships
            return resolve_spec("tiny")
        return str(demo.merged_dir(DEMO_MODEL_DIR))
    if demo.is_shipped(Path(spec)):
        return str(demo.merged_dir(Path(spec)))
    return spec


def adapter_for(model_type: str) -> type[Adapter]:
    """The adapter class registered for a transformers ``model_type``."""
    for name in MODELS:
        cls = MODELS.get(name)
        if model_type in cls.model_types:
            return cls
    supported = ", ".join(t for n in MODELS for t in MODELS.get(n).model_types)
    raise UnsupportedModelError(
        f"no adapter for model type {model_type!r}; supported: {supported} (see `vlmflow list models`)"
    )


def claimed_by(path: str) -> type[Adapter] | None:
    """The adapter whose ``matches`` claims the raw ``config.json`` at ``path``, if any."""
    from transformers import PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError):
        return None  # reported by the model_type lookup below
    return next((MODELS.get(n) for n in MODELS if MODELS.get(n).matches(raw)), None)


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
    progress: bool = True,
    **adapter_kwargs: Any,
) -> Adapter:
    """Load a checkpoint by local path, hub id, ``demo`` (the embedded SmolLM2 demo model)
    or ``tiny`` (the embedded 8-layer test model). Its ``model_id`` is ``spec`` as given
    (what records name), its ``model_path`` the folder it resolved to. ``progress=False``: without the Hugging
    Face progress bars (downloads, "Loading weights", the demo's first-use build), for
    this load only. Further keyword arguments are the family's adapter options
    (:meth:`Adapter.options`: ``num_frames``, ``prompt_style``, Qwen-VL's ``video_pixels``,
    ...); one the family does not accept is an ``UnsupportedModelError`` listing them,
    before anything loads."""
    with hf_progress(progress):
        return _load_model(spec, device, dtype, attn_implementation, adapter_kwargs)


@contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """Within the block, Hugging Face's progress bars (transformers' and the hub's) are off
    unless ``enabled``; after it they are as they were (a caller's own setting stands)."""
    if enabled:
        yield
        return
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    was_on, hub_was_off = hf_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # the hub's too
    # transformers' GGUF reader (the demo's first-use build) uses tqdm directly
    gguf: Any
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf
    except ImportError:
        gguf = None
    bar = getattr(gguf, "tqdm", None)
    if bar is not None:
        gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf.tqdm = bar
        with warnings.catch_warnings():  # the hub's "cannot enable" under HF_HUB_DISABLE_PROGRESS_BARS
            warnings.simplefilter("ignore")
            if was_on:
                hf_logging.enable_progress_bar()  # the hub's too: put back below
            if hub_was_off:
                hub.disable_progress_bars()
            elif not was_on:
                hub.enable_progress_bars()


def _load_model(
    spec: str, device: str, dtype: str | None, attn_implementation: str, adapter_kwargs: dict[str, Any]
) -> Adapter:
    from safetensors import SafetensorError
    from transformers import AutoConfig

    from . import demo

    path = resolve_spec(spec)
    try:
        preflight(path, _known)  # a bad folder stops here, in one line, before anything loads
    except UnsupportedModelError as exc:
        # the demo's merged copy in the cache, rebuilt if deleted: blamed only if damaged (a
        # refusal of a whole folder, say by another transformers, is not the cache's fault)
        if demo.is_damaged_cache(path):
            raise UnsupportedModelError(f"{exc}; {demo.DELETE_HINT.format(folder=path)}") from exc
        raise
    cls = claimed_by(path)
    if cls is None:
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)  # never prompt
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(
                f"cannot read a model config from {spec!r}: {one_line(exc)}{missing_here(path)}"
            ) from exc
        cls = adapter_for(config.model_type)
    cls.check_options(repr(spec), adapter_kwargs)  # a misspelt option stops before the weights load
    try:
        adapter = cls.load(
            path, device=device, dtype=dtype, attn_implementation=attn_implementation, **adapter_kwargs
        )
    except UnsupportedModelError as exc:  # weights missing from the folder (load_weights), ...
        # ... which a whole cached folder may meet too (a transformers that renames keys)
        if demo.is_damaged_cache(path):
            raise UnsupportedModelError(f"{exc}; {demo.DELETE_HINT.format(folder=path)}") from exc
        raise
    except VlmflowError:
        raise
    except (OSError, RuntimeError, ValueError, ImportError, KeyError, TypeError, SafetensorError) as exc:
        if demo.is_damaged_cache(path):  # rebuilt if deleted
            raise UnsupportedModelError(demo.damaged_cache_message(Path(path), exc)) from exc
        raise load_error(spec, cls.__name__, exc) from exc
    # records name the model as the user did ("demo", a hub id, the folder as given), the
    # same on every machine; the resolved folder (an install or cache path) is provenance
    adapter.model_id, adapter.model_path = str(spec), path
    return adapter


def _known(raw: dict[str, Any]) -> bool:
    """Whether an adapter handles the raw ``config.json`` ``raw`` (by claim or model type)."""
    if any(MODELS.get(n).matches(raw) for n in MODELS):
        return True
    return any(raw.get("model_type") in MODELS.get(n).model_types for n in MODELS)
