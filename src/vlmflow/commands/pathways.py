"""`vlmflow pathways`: effective pathways from a preset, a spec file, or a search."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated

import typer

from ..errors import VlmflowError
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
    fail,
    options,
    print_result,
)


def pathways(
    model: Model,
    data: Data,
    preset: Annotated[
        str | None, typer.Option(help="the paper's pathway of a model (see --help of `list`)")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="a pathway spec file (JSON or YAML)")] = None,
    search: Annotated[
        bool, typer.Option("--search", help="find the layer ranges on a calibration split")
    ] = False,
    calib: Annotated[
        float, typer.Option(help="fraction of samples used to search (the rest is held out)")
    ] = 0.5,
    tolerance: Annotated[
        float, typer.Option(help="accuracy the search may lose against the baseline")
    ] = 0.02,
    step: Annotated[int, typer.Option(help="layers a search move shrinks or grows a range by")] = 1,
    seeds: Annotated[int, typer.Option(help="random-blocking seeds")] = 3,
    random_fraction: Annotated[
        str,
        typer.Option(
            help="edges random blocking cuts: measured (each sample's pathway fraction), paper "
            "(the scripts' fixed 0.58/0.63/0.60/0.42 per preset) or a number"
        ),
    ] = "measured",
    no_scale: Annotated[
        bool, typer.Option("--no-scale", help="refuse a spec made for another layer count")
    ] = False,
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
    """Keep only effective pathways, block all other edges among video, question and last;
    accuracy vs the baseline and vs random blocking of the same edge fraction."""
    from ..analyses.pathways import PRESETS, Pathways, load_spec

    out = out or Path("vlmflow-out") / "pathways"
    try:
        if sum(x is not None and x is not False for x in (preset, spec, search or None)) != 1:
            raise VlmflowError(
                f"give exactly one of --preset ({', '.join(PRESETS)}), --spec FILE or --search"
            )
        opts = options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet)
        if search:
            result = run_search(opts, out, calib=calib, tolerance=tolerance, step=step, seeds=seeds)
        else:
            from ..api import run

            chosen = load_spec(preset or str(spec))
            analysis = Pathways(
                spec=chosen, seeds=tuple(range(seeds)), scale=not no_scale, random_fraction=random_fraction
            )
            result = run(opts, [analysis], out)
    except VlmflowError as exc:
        fail(exc)
    print_result(result)
    table = result.report.get("summaries", {}).get("pathways")
    if table is not None and not table.empty:
        typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def run_search(opts, out: Path, *, calib: float, tolerance: float, step: int, seeds: int):
    """Search on a calibration split, then evaluate the found pathway on the held-out rest."""
    from ..analyses.base import read_answer  # noqa: F401  (imported for the registry)
    from ..analyses.pathways import Pathways, search_pathway
    from ..api import run
    from ..data import load_dataset
    from ..engine import Engine
    from ..models import load_model

    adapter = load_model(
        opts.model,
        device=opts.device,
        dtype=opts.dtype,
        attn_implementation=opts.attn,
        prompt_style=opts.prompt,
        num_frames=opts.num_frames,
    )
    adapter.ensure_maskable()
    samples = load_dataset(opts.data, tasks=list(opts.tasks) or None, samples=opts.samples, seed=opts.seed)
    order = list(range(len(samples)))
    random.Random(opts.seed).shuffle(order)
    k = max(1, min(len(samples) - 1, int(round(len(samples) * calib))))
    calib_ids = {samples[i].id for i in order[:k]}
    prepared, engines = [], []
    for s in samples:
        if s.id in calib_ids:
            p = adapter.prepare(s)
            prepared.append(p)
            engines.append(Engine(adapter.language_model(), p.inputs, p.layout))
    found = search_pathway(adapter, prepared, engines, adapter.num_layers, tolerance=tolerance, step=step)
    del engines
    out.mkdir(parents=True, exist_ok=True)
    (out / "pathway_search.json").write_text(
        json.dumps(
            {
                "spec": found.spec.to_dict(),
                "calib_samples": sorted(calib_ids),
                "calib_accuracy": found.calib_accuracy,
                "calib_base_accuracy": found.base_accuracy,
                "calib_suppressed": found.suppressed,
                "tolerance": tolerance,
                "step": step,
                "trace": found.trace,
            },
            indent=2,
        )
    )
    typer.echo(
        f"search: kept {json.dumps(found.spec.to_dict()['keep'])} blocked "
        f"{json.dumps(found.spec.to_dict()['block'])}; calibration accuracy {found.calib_accuracy:.3f} "
        f"(baseline {found.base_accuracy:.3f}), {found.suppressed:.1%} of edges suppressed"
    )
    held = [s.id for s in samples if s.id not in calib_ids]
    opts.extra = {**opts.extra, "search": {"calib": calib, "tolerance": tolerance, "step": step}}
    return run(
        opts, [Pathways(spec=found.spec, seeds=tuple(range(seeds)))], out, adapter=adapter, sample_ids=held
    )


def register(app: typer.Typer) -> None:
    app.command()(pathways)
