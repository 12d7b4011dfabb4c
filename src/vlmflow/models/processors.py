"""Build a family's processor from the files its hub repository actually ships.

Many published checkpoints predate transformers' separate video processors: their
repositories have a ``preprocessor_config.json`` (image processor settings) and no
``video_preprocessor_config.json``. transformers 5.24 then guesses the video processor
class from the image config's ``processor_class`` — for LLaVA-NeXT-Video that names the
multimodal processor itself, which loads itself recursively (``RecursionError``,
transformers issue #42142). When a repository has no video config, this module builds the
family's video processor class from the image processor settings (the settings those
checkpoints were trained with: their video frames went through the image processor) and
assembles the processor from its parts, so no guessing happens.

    >>> from transformers import LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor
    >>> load_processor(LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor, path)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

VIDEO_CONFIG = "video_preprocessor_config.json"
# keys that name classes or describe the saved file, never processing settings
_NOT_SETTINGS = {
    "image_processor_type",
    "processor_class",
    "feature_extractor_type",
    "auto_map",
    "_processor_class",
}


_FROM_IMAGE_SETTINGS: weakref.WeakSet = weakref.WeakSet()


def built_from_image_settings(video_processor: Any) -> bool:
    """Whether ``video_processor`` was built here from a repository's image settings (the
    repository ships no video config), so its frame limits are the image ones."""
    return video_processor in _FROM_IMAGE_SETTINGS


def _file(path: str, name: str) -> str | None:
    from transformers.utils import cached_file

    return cached_file(
        path,
        name,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def has_video_config(path: str) -> bool:
    """Whether ``path`` ships video processor settings: its own ``video_preprocessor_config.json``
    or a ``video_processor`` entry in ``processor_config.json`` (what transformers 5 writes)."""
    if _file(path, VIDEO_CONFIG):
        return True
    proc = _file(path, "processor_config.json")
    if proc:
        with open(proc) as f:
            return "video_processor" in json.load(f)
    return False


def video_processor_from_image_config(video_processor_class: Any, path: str) -> Any:
    """The family's video processor with the repository's image processor settings."""
    from transformers.image_processing_base import ImageProcessingMixin

    settings, _ = ImageProcessingMixin.get_image_processor_dict(path)
    settings = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    video = video_processor_class(**settings)
    _FROM_IMAGE_SETTINGS.add(video)
    return video


def load_processor(processor_class: Any, video_processor_class: Any | None, path: str, **kwargs: Any) -> Any:
    """``processor_class`` loaded from ``path``; where ``path`` has no video processor config,
    the video processor is ``video_processor_class`` built from the image settings.

    ``kwargs`` override processor settings (as in ``from_pretrained``)."""
    if video_processor_class is None or has_video_config(path):
        return processor_class.from_pretrained(path, **kwargs)
    from transformers import AutoImageProcessor

    log.info(
        "%s has no %s: building %s from its image processor settings",
        path,
        VIDEO_CONFIG,
        video_processor_class.__name__,
    )
    video = video_processor_from_image_config(video_processor_class, path)
    args = []
    for attribute in processor_class.get_attributes():
        if "tokenizer" in attribute:
            args.append(processor_class._load_tokenizer_from_pretrained(attribute, path))
        elif attribute == "image_processor":
            args.append(AutoImageProcessor.from_pretrained(path))
        elif attribute == "video_processor":
            args.append(video)
        else:
            raise ValueError(f"cannot build {processor_class.__name__}: unexpected part {attribute!r}")
    processor_dict, extra = processor_class.get_processor_dict(path)
    return processor_class.from_args_and_dict(args, processor_dict, **{**extra, **kwargs})


def frames_as_given(processor: Any) -> dict[str, Any]:
    """Keyword arguments that make ``processor`` use the frames it is given as they are.

    vlmflow samples the frames itself (``frame_policy``, ``num_frames``), and ``frame:t``
    means input frame ``t``. A transformers video processor samples again when its config
    says ``do_sample_frames: true`` (transformers recommends it for new checkpoints), so it
    is told ``do_sample_frames=False``. Processors without one (PLLaVA's, which takes the
    frames as images) get nothing: their call does not know the option."""
    from transformers.video_processing_utils import BaseVideoProcessor

    video = getattr(processor, "video_processor", None)
    return {"do_sample_frames": False} if isinstance(video, BaseVideoProcessor) else {}
