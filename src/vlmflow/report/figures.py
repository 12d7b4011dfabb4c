"""Figure plumbing shared by the analyses' figures (each analysis draws its own, as pure
functions from records or summaries to a matplotlib figure, in its module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` (folders created; the file replaced all at once, so a
    failed write keeps the previous figure) and free it."""
    from ..store import replacing

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
    finally:
        plt.close(fig)


def frame_axes(ax: Any, frame: Any, region: Any) -> None:
    """Draw ``frame`` in pixel coordinates and dim what the processor cropped away
    (``region`` ``(x0, y0, x1, y1)``: the part it kept, see :mod:`vlmflow.models.regions`)."""
    from matplotlib.patches import Rectangle

    h, w = frame.shape[:2]
    ax.imshow(frame, extent=(0, w, h, 0))
    x0, y0, x1, y1 = region
    for rect in ((0, 0, x0, h), (x1, 0, w - x1, h), (x0, 0, x1 - x0, y0), (x0, y1, x1 - x0, h - y1)):
        if rect[2] > 0 and rect[3] > 0:
            ax.add_patch(Rectangle(rect[:2], rect[2], rect[3], facecolor="black", alpha=0.55, lw=0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
