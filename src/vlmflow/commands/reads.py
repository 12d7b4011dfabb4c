"""`vlmflow answer-prob`, `logit-lens`, `attention` and `open-ended`."""

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

SampleMode = Annotated[str, typer.Option(help="analyse the samples the model gets correct, wrong, or all")]


def answer_prob(
    model: Model,
    data: Data,
    no_norm: Annotated[
        bool,
        typer.Option("--no-norm", help="skip the final norm for intermediate layers (paper's LLaVA code)"),
    ] = False,
    sample_mode: SampleMode = "correct",
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
    """Probability of the true and the false option letters read from every layer."""
    from ..analyses.answer_probability import AnswerProbability

    run_and_report(
        lambda: [AnswerProbability(norm=not no_norm, sample_mode=sample_mode)],
        out or Path("vlmflow-out") / "answer-prob",
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


def logit_lens(
    model: Model,
    data: Data,
    projection: Annotated[
        str, typer.Option(help="unembed (final norm + output head) or embed (input embeddings, as the paper)")
    ] = "unembed",
    topk: Annotated[int, typer.Option(help="tokens kept per video token and layer")] = 5,
    words: Annotated[
        str, typer.Option(help="keyword preset: synthetic or paper-action-sequence")
    ] = "synthetic",
    spatial: Annotated[
        str | None, typer.Option(help="comma-separated spatial words (overrides the preset)")
    ] = None,
    temporal: Annotated[
        str | None, typer.Option(help="comma-separated temporal words (overrides the preset)")
    ] = None,
    overlays: Annotated[int, typer.Option(help="samples drawn with their top words over the frames")] = 2,
    bins: Annotated[
        str,
        typer.Option(
            help="keyword-frequency layer bins: exact, or paper (its inclusive bins, 6 layers each)"
        ),
    ] = "exact",
    bin_size: Annotated[int, typer.Option(help="layers per keyword-frequency bin")] = 5,
    min_hits: Annotated[
        int, typer.Option(help="keywords with fewer hits are dropped from the frequency")
    ] = 100,
    sample_mode: SampleMode = "correct",
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
    """Logit lens on the video tokens: top vocabulary tokens per layer, keyword frequency."""
    from ..analyses.logit_lens import LogitLens

    split = lambda s: tuple(w.strip() for w in s.split(",") if w.strip()) if s else ()  # noqa: E731
    run_and_report(
        lambda: [
            LogitLens(
                projection=projection,
                topk=topk,
                words=words,
                spatial=split(spatial),
                temporal=split(temporal),
                sample_mode=sample_mode,
                overlays=overlays,
                bins=bins,
                bin_size=bin_size,
                min_hits=min_hits,
            )
        ],
        out or Path("vlmflow-out") / "logit-lens",
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


def attention(
    model: Model,
    data: Data,
    layers: Annotated[
        str | None, typer.Option(help="layers to read, 0-based, e.g. 0-7 (default all)")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="plan drawn beside the baseline: a target or SRC->DST[,..]; 'none' for baseline only"
        ),
    ] = "cross-frame",
    compare_layers: Annotated[
        str | None, typer.Option(help="layers the comparison plan blocks (default all)")
    ] = None,
    overlays: Annotated[int, typer.Option(help="samples drawn as heatmaps over their frames")] = 2,
    query_words: Annotated[
        str | None,
        typer.Option(
            help="comma-separated question words: one attention map over the video each (the paper)"
        ),
    ] = None,
    view: Annotated[
        str,
        typer.Option(help="groups (mean per query group) or query-words (also one map per question word)"),
    ] = "groups",
    sample_mode: SampleMode = "correct",
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
    """Attention from the last and question tokens to each frame, baseline vs a plan."""
    from ..analyses.attention_maps import AttentionMaps

    run_and_report(
        lambda: [
            AttentionMaps(
                layers=parse_layers(layers),
                compare=None if compare == "none" else compare,
                compare_layers=parse_layers(compare_layers),
                sample_mode=sample_mode,
                overlays=overlays,
                query_words=tuple(w.strip() for w in (query_words or "").split(",") if w.strip()),
                view=view,
            )
        ],
        out or Path("vlmflow-out") / "attention",
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


def open_ended(
    model: Model,
    data: Data,
    anchor: Annotated[
        str, typer.Option(help="verb (the paper: trace the n-th verb of the response) or first-token")
    ] = "verb",
    anchor_order: Annotated[
        list[int] | None,
        typer.Option("--anchor-order", help="which verbs, 1-based (repeatable; default 1 2 3)"),
    ] = None,
    min_verbs: Annotated[int, typer.Option(help="samples with fewer verbs are skipped")] = 3,
    num_open_tokens: Annotated[
        int, typer.Option(help="response tokens right before last left unblocked in non-last response")
    ] = 1,
    spacy_model: Annotated[
        str, typer.Option(help="spaCy pipeline that tags the verbs (the paper: en_core_web_lg)")
    ] = "en_core_web_sm",
    verb_match: Annotated[
        str, typer.Option(help="position (spaCy's verb tokens by offset) or string (the paper's code)")
    ] = "position",
    response_from: Annotated[
        str,
        typer.Option(
            help="generate, reference (teacher-force the benchmark's answer), or a JSON/JSONL file "
            "of responses by sample id"
        ),
    ] = "generate",
    response_tokens: Annotated[int, typer.Option(help="tokens generated for the response")] = 256,
    regenerate_tokens: Annotated[
        int, typer.Option(help="also generate this many tokens under each cut (the paper: 100; slow)")
    ] = 0,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="knockout targets (default vqrl-to-qrl; first-token: vql-to-ql)"),
    ] = None,
    cut: Annotated[
        list[str] | None, typer.Option("--cut", help="custom curve SRC->DST[,SRC->DST] (repeatable)")
    ] = None,
    window: Annotated[int, typer.Option(help="layers blocked around each sweep layer")] = 9,
    window_style: Annotated[str, typer.Option(help="center, inverse, top_down or bottom_up")] = "center",
    layers: Annotated[str | None, typer.Option(help="sweep only these layers, 0-based")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="first-token: tokens generated per plan")] = 16,
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
    """Open-ended knockout: trace the response's n-th verb when blocking video, question and
    response edges into the token before it (the paper), or the first generated token."""
    from ..analyses.open_ended import OpenEnded

    run_and_report(
        lambda: [
            OpenEnded(
                targets=tuple(target or ()),
                custom=tuple(cut or ()),
                window=window,
                window_style=window_style,
                layers=parse_layers(layers),
                max_new_tokens=max_new_tokens,
                anchor=anchor,
                anchor_orders=tuple(anchor_order or (1, 2, 3)),
                min_verbs=min_verbs,
                num_open_tokens=num_open_tokens,
                spacy_model=spacy_model,
                verb_match=verb_match,
                response_from=response_from,
                response_tokens=response_tokens,
                regenerate_tokens=regenerate_tokens,
            )
        ],
        out or Path("vlmflow-out") / "open-ended",
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
    app.command("answer-prob")(answer_prob)
    app.command("logit-lens")(logit_lens)
    app.command("attention")(attention)
    app.command("open-ended")(open_ended)
