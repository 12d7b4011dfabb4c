"""The Python API behind every CLI command: load, run analyses into a run folder, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run import RunSummary, close_run, open_run, run_samples


@dataclass
class Options:
    """What every run shares (the CLI's common options)."""

    model: str
    data: str
    tasks: tuple[str, ...] = ()
    samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None
    prompt: str = "paper"
    num_frames: int = 8
    attn: str = "sdpa"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        d = {
            "model": self.model,
            "data": self.data,
            "tasks": list(self.tasks),
            "samples": self.samples,
            "seed": self.seed,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "num_frames": self.num_frames,
        }
        return {**d, **self.extra}


@dataclass
class RunResult:
    out: Path
    summary: RunSummary
    report: dict[str, Any]


def run(options: Options, analyses: list[Any], out: str | Path, *, adapter: Any = None) -> RunResult:
    """Load the model and data of ``options``, analyse into ``out``, write the report."""
    from .data import load_dataset
    from .models import load_model
    from .report import finalize

    out = Path(out)
    config = {**options.manifest(), "analyses": {a.name: a.config() for a in analyses}}
    open_run(out, config)
    if adapter is None:
        adapter = load_model(
            options.model,
            device=options.device,
            dtype=options.dtype,
            attn_implementation=options.attn,
            prompt_style=options.prompt,
            num_frames=options.num_frames,
        )
    samples = load_dataset(
        options.data, tasks=list(options.tasks) or None, samples=options.samples, seed=options.seed
    )
    summary = run_samples(adapter, samples, analyses, out, progress=options.progress)
    close_run(out, summary, {"num_samples": len(samples)})
    report = finalize(out)
    return RunResult(out, summary, report)
