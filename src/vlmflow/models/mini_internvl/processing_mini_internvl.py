"""Mini-InternVL's tokenizer and processor (PLLaVA's, at 448 px with ImageNet statistics)."""

from __future__ import annotations

from typing import Any

from ..pllava import PllavaProcessor
from .modeling_mini_internvl import image_size_of

CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_tokenizer(path: str, raw: dict[str, Any]) -> Any:
    """The checkpoint's tokenizer. ``config.json`` names remote code (``auto_map``) that the
    tokenizer does not need; handing AutoTokenizer the LLM's config keeps it from asking."""
    from transformers import AutoConfig, AutoTokenizer

    llm_type = (raw.get("llm_config") or {}).get("model_type", "phi3")
    return AutoTokenizer.from_pretrained(path, config=AutoConfig.for_model(llm_type), trust_remote_code=False)


def mini_internvl_processor(tokenizer: Any, raw: dict[str, Any], tokens_per_frame: int) -> PllavaProcessor:
    """The paper's processor for Mini-InternVL: PLLaVA's, at 448 px with ImageNet statistics
    (set in the paper's code, not read from the checkpoint's preprocessor file)."""
    from transformers import CLIPImageProcessorPil

    size = image_size_of(raw)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    return PllavaProcessor(
        image_processor, tokenizer, tokens_per_frame=tokens_per_frame, image_token=CONTEXT_TOKEN
    )
