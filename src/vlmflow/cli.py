"""The ``vlmflow`` command line: a thin typer layer over :mod:`vlmflow.api`."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import typer

from .errors import VlmflowError

app = typer.Typer(
    help=(
        "Map how information flows inside Video LLMs: attention knockout between frames, "
        "question, options and the last token, layer by layer.\n\n"
        "M (--model) is a local checkpoint folder, a hub id, or 'demo' (the embedded model). "
        "D (--data) is NAME:PATH for a benchmark on disk (jsonl:/data/qa.jsonl, "
        "tvbench:/data/TVBench) or 'synthetic' for the built-in synthetic benchmark."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Model = Annotated[str, typer.Option("--model", "-m", help="checkpoint path, hub id, or 'demo'")]
Data = Annotated[str, typer.Option("--data", "-d", help="NAME:PATH or 'synthetic'")]
Tasks = Annotated[list[str] | None, typer.Option("--task", help="task name or paper task id (repeatable)")]
Samples = Annotated[int | None, typer.Option("--samples", "-n", help="at most N samples per task")]
Seed = Annotated[int, typer.Option(help="seed for subsampling and synthetic data")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="run folder (resumed if it exists)")]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu, cuda, cuda:1")]
Dtype = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: checkpoint's)")]
Prompt = Annotated[
    str, typer.Option(help="'paper' (the paper's template) or 'chat' (the model's chat template)")
]
Frames = Annotated[int, typer.Option("--num-frames", help="frames sampled per video")]
Attn = Annotated[
    str, typer.Option(help="attention implementation: sdpa or eager (flash is switched to sdpa for knockout)")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet, **extra):
    from .api import Options

    return Options(
        model=model,
        data=data,
        tasks=tuple(task or ()),
        samples=samples,
        seed=seed,
        device=device,
        dtype=dtype,
        prompt=prompt,
        num_frames=num_frames,
        attn=attn,
        progress=not quiet,
        extra=extra,
    )


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)`` (0-based)."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise typer.BadParameter(f"layers must look like 0-3,7; got {text!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        out += range(a, b + 1)
    return tuple(sorted(set(out)))


def _fail(exc: VlmflowError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _print_result(result) -> None:
    s = result.summary
    typer.echo(
        f"done: {s.done} samples, {len(s.failed)} failed, {s.skipped} already done "
        f"({s.seconds:.1f}s) -> {result.out}"
    )
    acc = result.report.get("accuracy")
    if acc is not None and not acc.empty:
        typer.echo(acc.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if "report" in result.report:
        typer.echo(f"report: {result.report['report']}")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
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
    from .analyses.information_flow import InformationFlow
    from .analyses.targets import PAPER_TARGETS
    from .api import run

    try:
        targets = tuple(target) if target else (() if cut else PAPER_TARGETS)
        analysis = InformationFlow(
            targets=targets,
            custom=tuple(cut or ()),
            window=window,
            window_style=window_style,
            layers=parse_layers(layers),
            sample_mode=sample_mode,
        )
        opts = _options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet)
        result = run(opts, [analysis], out or Path("vlmflow-out") / "flow")
    except VlmflowError as exc:
        _fail(exc)
    _print_result(result)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("vlmflow-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="held-out synthetic samples per task")] = 16,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 3,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """The main job on the embedded model: every analysis on a held-out synthetic
    temporal benchmark, with figures, an HTML report and a summary."""
    from .analyses.information_flow import InformationFlow
    from .analyses.targets import PAPER_TARGETS
    from .api import run

    try:
        analyses = [InformationFlow(targets=PAPER_TARGETS, window=window, sample_mode="correct")]
        opts = _options(
            "demo", f"synthetic:{samples}", None, None, 0, device, None, "paper", 8, "sdpa", quiet
        )
        result = run(opts, analyses, out)
    except VlmflowError as exc:
        _fail(exc)
    _print_result(result)
    flow = result.report.get("flow")
    if flow is not None and not flow.empty:
        cf = flow[flow["condition"] == "cross-frame"]
        typer.echo("cross-frame knockout: layers (1-based window centre) where it hurts most")
        for task, d in cf.groupby("task"):
            worst = d.nsmallest(2, "rel_pred_mean")
            where = ", ".join(f"L{int(r.layer) + 1}: {r.rel_pred_mean:+.1f}%" for r in worst.itertuples())
            typer.echo(f"  {task:18s} {where}")


@app.command("eval")
def eval_(
    model: Model,
    data: Data,
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
    """Accuracy only: the model's answer letter for every sample, per task."""
    from .api import run

    try:
        opts = _options(model, data, task, samples, seed, device, dtype, prompt, num_frames, attn, quiet)
        result = run(opts, [], out or Path("vlmflow-out") / "eval")
    except VlmflowError as exc:
        _fail(exc)
    _print_result(result)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """(Re)write the summaries, figures and HTML report of a run from its records."""
    from .report import finalize

    if not (run_dir / "records").is_dir():
        _fail(VlmflowError(f"{run_dir} is not a run folder (no records/)"))
    result = finalize(run_dir)
    typer.echo(f"{result['records']} records -> {result.get('report', run_dir)}")


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help="models, datasets, analyses or targets")]) -> None:
    """Show what is registered: model families, datasets, analyses or knockout targets."""
    if what == "models":
        from .models import MODELS

        for name in MODELS:
            cls = MODELS.get(name)
            typer.echo(f"{name:22s} model types: {', '.join(cls.model_types)}; supports: {cls.supports}")
        return
    if what == "datasets":
        from .data import DATASETS as registry
    elif what == "analyses":
        from .analyses import information_flow  # noqa: F401
        from .analyses.base import ANALYSES as registry
    elif what == "targets":
        from .analyses.targets import TARGETS as registry
    else:
        _fail(VlmflowError(f"cannot list {what!r}; choose models, datasets, analyses or targets"))
    for name, text in registry.describe().items():
        typer.echo(f"{name:30s} {text}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
