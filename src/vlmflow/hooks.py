"""Temporary changes to a model, each undone in ``finally``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn


@contextmanager
def layer_hooks(
    layers: Sequence[nn.Module],
    pre: Callable[[int, tuple, dict], tuple[tuple, dict] | None] | None = None,
    post: Callable[[int, tuple, dict, Any], Any] | None = None,
) -> Iterator[None]:
    """Install a kwargs-aware pre-hook and/or forward hook on every layer.

    ``pre(layer_index, args, kwargs)`` may return replacement ``(args, kwargs)``;
    ``post(layer_index, args, kwargs, output)`` may return a replacement output.
    """
    handles = []
    try:
        for i, layer in enumerate(layers):
            if pre is not None:
                handles.append(
                    layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(i, a, k), with_kwargs=True)
                )
            if post is not None:
                handles.append(
                    layer.register_forward_hook(lambda m, a, k, o, i=i: post(i, a, k, o), with_kwargs=True)
                )
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def attention_implementation(modules: Sequence[nn.Module], name: str) -> Iterator[None]:
    """Run the attention ``modules`` with the registered implementation ``name`` and leave
    every other as it is. Each module gets its own shallow copy of its config, restored
    afterwards."""
    import copy

    saved = []
    try:
        for attn in modules:
            saved.append((attn, attn.config))
            cfg = copy.copy(attn.config)
            cfg._attn_implementation = name
            attn.config = cfg
        yield
    finally:
        for attn, cfg in saved:
            attn.config = cfg


def eager_attention(modules: Sequence[nn.Module]) -> Any:
    """Run the attention ``modules`` eagerly, so that they return their weights."""
    return attention_implementation(modules, "eager")
