"""`vlmflow flow`: attention knockout sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    Attn,
    Data,
    Device,
    Dtype,
    Frames,
    Model,
    Out,
    Prompt,
    Quiet,
    Samples,
    Seed,
    Tasks,
    parse_layers,
    run_and_report,
)


def flow(
    model: Model,
    data: Data,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="cross-frame, vql-to-ql, question-and-options-to-last, vq-to-true-opt "
            "(repeatable; default all)",
        ),
    ] = None,
    cut: Annotated[
        list[str] | None,
        typer.Option("--cut", help="custom curve SRC->DST[,SRC->DST] over token groups (repeatable)"),
    ] = None,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 9,
    window_style: Annotated[str, typer.Option(help="center, inverse, top_down or bottom_up")] = "center",
    layers: Annotated[str | None, typer.Option(help="sweep only these layers, 0-based, e.g. 0-7,12")] = None,
    sample_mode: Annotated[
        str, typer.Option(help="analyse the samples the model gets correct, wrong, or all")
    ] = "correct",
    screen: Annotated[
        int | None,
        typer.Option(
            help="estimate every plan by attribution and verify only the top K exactly "
            "(plus a random control sample of 10); records say method=estimate|exact"
        ),
    ] = None,
    task: Tasks = None,
    samples: Samples = None,
    seed: Seed = 0,
    out: Out = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    prompt: Prompt = "paper",
    num_frames: Frames = 8,
    attn: Attn = "sdpa",
    quiet: Quiet = False,
) -> None:
    """Attention knockout sweeps: block edges between token groups layer by layer and
    measure the change in the answer's probability."""
    from ..analyses.information_flow import InformationFlow
    from ..analyses.targets import PAPER_TARGETS

    targets = tuple(target) if target else (() if cut else PAPER_TARGETS)

    def analyses() -> list:
        options = dict(
            targets=targets,
            custom=tuple(cut or ()),
            window=window,
            window_style=window_style,
            layers=parse_layers(layers),
            sample_mode=sample_mode,
        )
        if screen is None:
            return [InformationFlow(**options)]
        from ..analyses.screened_flow import ScreenedFlow

        return [ScreenedFlow(**options, k=screen)]

    run_and_report(
        analyses,
        out or Path("vlmflow-out") / "flow",
        model,
        data,
        task,
        samples,
        seed,
        device,
        dtype,
        prompt,
        num_frames,
        attn,
        quiet,
    )


def register(app: typer.Typer) -> None:
    app.command()(flow)
