"""Which part of a decoded frame a frame group's token grid covers.

Processors that resize the short side and then centre-crop (CLIP-style: LLaVA-NeXT-Video,
Video-LLaVA, the paper's PLLaVA, LLaVA-OneVision's image path) show the model only the
middle of a wide frame; processors that resize the whole frame (Qwen-VL, VideoLLaMA3,
InternVL) show all of it, stretched. Overlays must put token ``(row, col)`` of the grid
over the pixels it was computed from, so they use :func:`processed_region`.

Example: a 64 x 36 (16:9) frame, short side resized to 32 (-> 56 x 32) and centre-cropped
to 32 x 32, keeps columns 12..44 of the resized frame, i.e. x in [13.71, 50.29) of the
original, all rows::

    >>> from types import SimpleNamespace as NS
    >>> crop = {"height": 32, "width": 32}
    >>> p = NS(do_resize=True, size={"shortest_edge": 32}, do_center_crop=True, crop_size=crop)
    >>> [round(v, 2) for v in processed_region(p, 36, 64)]
    [13.71, 0.0, 50.29, 36.0]
"""

from __future__ import annotations

from typing import Any

Region = tuple[float, float, float, float]  # x0, y0, x1, y1 in original frame pixels


def _get(d: Any, key: str) -> Any:
    if d is None:
        return None
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


def processed_region(processor: Any, height: int, width: int) -> Region:
    """The region ``(x0, y0, x1, y1)`` of an ``height x width`` frame that survives the
    image/video ``processor``'s resize and centre crop (the whole frame if it does not crop)."""
    crop = getattr(processor, "crop_size", None)
    if not getattr(processor, "do_center_crop", False) or not crop:
        return (0.0, 0.0, float(width), float(height))
    rh, rw = height, width
    size = getattr(processor, "size", None)
    if getattr(processor, "do_resize", True) and size is not None:
        short = _get(size, "shortest_edge")
        if short:
            lo, hi = min(height, width), max(height, width)
            new_lo, new_hi = int(short), int(short * hi / lo)
            rh, rw = (new_lo, new_hi) if height <= width else (new_hi, new_lo)
        elif _get(size, "height") and _get(size, "width"):
            rh, rw = int(_get(size, "height")), int(_get(size, "width"))
    ch, cw = int(_get(crop, "height") or rh), int(_get(crop, "width") or rw)
    top, left = max(0, int(round((rh - ch) / 2))), max(0, int(round((rw - cw) / 2)))
    sy, sx = rh / height, rw / width
    return (left / sx, top / sy, min(rw, left + cw) / sx, min(rh, top + ch) / sy)


def token_cells(grid: tuple[int, int], order: str = "row") -> list[tuple[int, int]]:
    """``(row, col)`` of each token of an ``(h, w)`` grid, in token order: laid row-major, or
    column-major for ``order="column"`` (see :class:`~vlmflow.layout.TokenLayout`)."""
    h, w = grid
    if order == "column":
        return [(r, c) for c in range(w) for r in range(h)]
    return [(r, c) for r in range(h) for c in range(w)]


def token_centres(grid: tuple[int, int], region: Region, order: str = "row") -> list[tuple[float, float]]:
    """Pixel centre ``(x, y)`` in the original frame of each token of an ``(h, w)`` grid laid
    over ``region`` in ``order`` (:func:`token_cells`)."""
    h, w = grid
    x0, y0, x1, y1 = region
    cells = token_cells(grid, order)
    return [(x0 + (c + 0.5) * (x1 - x0) / w, y0 + (r + 0.5) * (y1 - y0) / h) for r, c in cells]


def grid_entry(entry: Any) -> tuple[int, int, int, str]:
    """``(offset, h, w, order)`` of one record ``video_grid`` entry (see
    :func:`~vlmflow.analyses.base.video_grid`): ``[offset, h, w]`` is row-major,
    ``[offset, h, w, 1]`` column-major."""
    off, h, w, *rest = (int(x) for x in entry)
    return off, h, w, "column" if rest and rest[0] else "row"


def grid_values(values: Any, entry: Any) -> Any:
    """The ``(h, w)`` array of one frame group's values (one per video token, all of them)
    placed on its grid by the record ``video_grid`` ``entry``'s order."""
    import numpy as np

    off, h, w, order = grid_entry(entry)
    cells = np.asarray(values)[off : off + h * w]
    return cells.reshape(w, h).T if order == "column" else cells.reshape(h, w)


def frame_processor(processor: Any) -> Any:
    """The processor part that resizes video frames: the video processor, else the image one."""
    return getattr(processor, "video_processor", None) or getattr(processor, "image_processor", None)
