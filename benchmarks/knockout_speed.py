"""Knockout speed: the engine against one masked full forward per plan, on the paper suite.

What it measures. For every target of ``PAPER_TARGETS`` (all layers, window 9, style
center by default) it evaluates each sweep plan two ways in the same run:

* **plain** - ``full_forward_logits`` once per plan: a full forward of the whole input with
  the plan's attention masks (last-position logits only). This is what a straightforward
  knockout implementation costs, and the reference the engine must reproduce;
* **engine** - one ``Engine.run_baseline()`` (timed once, added to the engine's suite
  total) and then ``Engine.evaluate(plans)`` per target, all of a target's plans in one call.

It prints the time of both, the speedup and the largest absolute difference between the
two ways' next-token probabilities per target and over the suite, and the peak memory of
the engine suite against that of one plain forward (so the engine's stored baseline states
are seen to cost less than a second model's worth of memory).

Why a random model. The engine's cost and exactness depend on the model's shape and the
token layout, not on its weights, so a randomly initialised ``LlamaForCausalLM`` shaped like
SmolLM2-135M with a hand-built video-QA layout (system prompt, 8 frames x 144 visual tokens,
question, 4 options, last token) gives representative timings without downloads.

Run ``python benchmarks/knockout_speed.py --quick`` for a smoke test (seconds), or without
``--quick`` for the full-size numbers (long on a CPU: 330 full forwards of 1243 tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

try:
    import vlmflow.engine
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import vlmflow.engine
from vlmflow.analyses.targets import PAPER_TARGETS, TARGETS, sweep
from vlmflow.cuts import Plan, compile_plan
from vlmflow.engine import Engine, LanguageModel, full_forward_logits
from vlmflow.layout import Span, TokenLayout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --check tolerance on probabilities; fp32 must match to 1e-5, half precisions only roughly.
DEFAULT_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}
# --check tolerance on logits. A random model spreads its next-token probability almost
# evenly over the vocabulary (~2e-5 per token at 49152), so a knockout moves probabilities
# by less than 1e-5 and the probability bound alone would pass an engine that ignored the
# plans. Logits move by ~1e-2 under a knockout and agree to ~1e-6 in fp32.
DEFAULT_LOGIT_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.5, "float16": 0.1}


@dataclass(frozen=True)
class Shape:
    """Model size and token layout of one benchmark configuration.

    The layout is, in order: BOS + system prompt, ``template_pre`` template tokens, the
    video (``frames`` frames of ``grid`` tokens each), ``template_mid`` template tokens,
    the question text, ``options`` options of ``option_len`` tokens, ``template_post``
    template tokens and the last token (whose next-token distribution is the answer).
    """

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    system: int
    template_pre: int
    frames: int
    grid: tuple[int, int]
    template_mid: int
    question: int
    options: int
    option_len: int
    template_post: int
    window: int

    @property
    def frame_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def length(self) -> int:
        return (
            self.system
            + self.template_pre
            + self.frames * self.frame_tokens
            + self.template_mid
            + self.question
            + self.options * self.option_len
            + self.template_post
            + 1
        )

    def describe(self) -> str:
        return (
            f"{self.name}: layers {self.layers} hidden {self.hidden} "
            f"intermediate {self.intermediate} heads {self.heads}/{self.kv_heads} "
            f"vocab {self.vocab} tokens {self.length} "
            f"({self.frames}x{self.frame_tokens} video) window {self.window}"
        )


# SmolLM2-135M's decoder with a ~1200-token video-QA prompt.
FULL = Shape(
    name="full", layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152,
    system=40, template_pre=2, frames=8, grid=(12, 12), template_mid=1, question=20,
    options=4, option_len=6, template_post=3, window=9,
)
# Small enough for CI on two cores, with the same structure (so the same code paths).
QUICK = Shape(
    name="quick", layers=6, hidden=128, intermediate=256, heads=4, kv_heads=2, vocab=1024,
    system=8, template_pre=2, frames=4, grid=(4, 4), template_mid=1, question=8,
    options=4, option_len=3, template_post=3, window=3,
)


def build_model(
    shape: Shape, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LlamaForCausalLM:
    """A randomly initialised Llama of ``shape`` (seed 0), sdpa attention, in eval mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    return model.to(device=device, dtype=dtype)


def language_model(model: LlamaForCausalLM) -> LanguageModel:
    """The engine's view of a plain ``LlamaForCausalLM``."""
    return LanguageModel(
        forward=model,
        layers=model.model.layers,
        norm=model.model.norm,
        lm_head=model.lm_head,
        embed_tokens=model.model.embed_tokens,
        attn_implementation=lambda: model.config._attn_implementation,
    )


def build_input(shape: Shape, device: str = "cpu") -> tuple[dict[str, torch.Tensor], TokenLayout]:
    """Random token ids (seed 1, BOS first) and the matching layout; the answer is option 1."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, shape.vocab, (1, shape.length), generator=gen)
    ids[0, 0] = 1  # BOS
    pos = 0

    def take(n: int) -> Span:
        nonlocal pos
        span = Span(pos, pos + n)
        pos += n
        return span

    system = take(shape.system)
    take(shape.template_pre)
    frames = tuple(take(shape.frame_tokens) for _ in range(shape.frames))
    take(shape.template_mid)
    question_text = take(shape.question)
    options = tuple(take(shape.option_len) for _ in range(shape.options))
    take(shape.template_post)
    take(1)  # the last token
    assert pos == shape.length
    layout = TokenLayout(
        length=shape.length,
        system=system,
        video=Span(frames[0].start, frames[-1].end),
        frames=frames,
        frame_grids=(shape.grid,) * shape.frames,
        question=Span(question_text.start, options[-1].end),
        question_no_options=question_text,
        options=options,
        answer=1,
    )
    return {"input_ids": ids.to(device)}, layout


def target_plans(
    target: str, layout: TokenLayout, shape: Shape, layers: Sequence[int] | None
) -> list[Plan]:
    """The sweep plans of one target: every curve at every (or each given) layer."""
    points = sweep(
        TARGETS.get(target)(layout), shape.layers, window=shape.window, style="center",
        layers=layers,
    )
    return [p.plan for p in points]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def _plain_baseline(lm: LanguageModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One unmasked forward, as cheap as the model allows: no cache, last logits only."""
    out = lm.forward(**inputs, use_cache=False, logits_to_keep=1)
    return out.logits[0, -1].float()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shape for a smoke test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--targets", nargs="+", default=list(PAPER_TARGETS), choices=list(TARGETS))
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="sweep only these layers (default: every layer)")
    p.add_argument("--check", action="store_true",
                   help="exit non-zero if max_abs_diff (or the logit diff) exceeds its tolerance")
    p.add_argument("--tolerance", type=float, default=None,
                   help="--check tolerance on probabilities (default 1e-5 for float32)")
    p.add_argument("--logit-tolerance", type=float, default=None,
                   help="--check tolerance on logits (default 1e-4 for float32)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--measure-memory", choices=("engine", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--dtype-gap", action="store_true",
                   help="instead of timing: the engine-vs-plain gap in float32 and in bfloat16, "
                   "beside bfloat16's own distance from float32")
    return p.parse_args(argv)


def _setup(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    model = build_model(shape, DTYPES[args.dtype], args.device)
    inputs, layout = build_input(shape, args.device)
    return shape, language_model(model), inputs, layout


# ---------------------------------------------------------------------- memory
def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's peak resident memory, in MB.

    ``ru_maxrss`` is what we want to report, but after ``exec`` Linux folds the spawning
    process's high-water mark into it (``signal->maxrss``), so a child started by a parent
    that already holds a model would report at least the parent's footprint. ``VmHWM`` is
    the same high-water mark without that inheritance; use it where ``/proc`` exists.
    """
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_rss_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs``), where allowed.

    Building the random model briefly holds extra copies of its weights; without a reset
    that transient, not the workload, would set both peaks. The weights stay resident, so
    the peak measured afterwards still includes them.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_workload(mode: str, args: argparse.Namespace, shape, lm, inputs, layout) -> None:
    """What a memory measurement runs: the engine suite, or one plain baseline forward."""
    if mode == "baseline":
        _plain_baseline(lm, inputs)
        return
    engine = Engine(lm, inputs, layout)
    engine.run_baseline()
    for target in args.targets:
        engine.evaluate(target_plans(target, layout, shape, args.layers))


def _measure_memory_child(args: argparse.Namespace) -> None:
    """``--measure-memory MODE``: run one workload in this fresh process, print its peak."""
    shape, lm, inputs, layout = _setup(args)
    gc.collect()
    setup_peak_mb = _peak_rss_mb()
    reset = _reset_rss_peak()
    rss_before_mb = _proc_status_mb("VmRSS")
    _memory_workload(args.measure_memory, args, shape, lm, inputs, layout)
    print(json.dumps({
        "peak_mb": _peak_rss_mb(),  # process peak while the workload ran, weights included
        "rss_before_mb": rss_before_mb,  # resident before it: interpreter, torch, weights
        "setup_peak_mb": setup_peak_mb,  # peak while building the model (init transient)
        "peak_reset": reset,
        # raw getrusage, which includes the spawning process's peak (see _peak_rss_mb)
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _measure_memory_subprocess(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """Process-level peak RSS (model weights included) of ``mode`` in a fresh interpreter."""
    cmd = [sys.executable, os.path.abspath(__file__), "--measure-memory", mode,
           "--device", args.device, "--dtype", args.dtype,
           "--threads", str(torch.get_num_threads()), "--targets", *args.targets]
    if args.quick:
        cmd.append("--quick")
    if args.layers is not None:
        cmd += ["--layers", *map(str, args.layers)]
    src = os.path.dirname(os.path.dirname(os.path.abspath(vlmflow.engine.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement {mode!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_memory_cuda(mode: str, args, shape, lm, inputs, layout) -> dict[str, float]:
    """Peak allocated CUDA memory of ``mode``; the weights stay allocated, so they count."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _memory_workload(mode, args, shape, lm, inputs, layout)
    torch.cuda.synchronize()
    return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20}


# ---------------------------------------------------------------------- main
def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Time and compare both ways on every requested target; print the lines, return numbers."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    shape, lm, inputs, layout = _setup(args)
    device = args.device
    print(
        f"knockout_speed {shape.describe()} | torch {torch.__version__} "
        f"transformers {transformers.__version__} threads {torch.get_num_threads()} "
        f"device {device} dtype {args.dtype}",
        flush=True,
    )

    base_probs = _plain_baseline(lm, inputs).softmax(-1)  # the warm-up forward

    _sync(device)
    t0 = time.perf_counter()
    engine = Engine(lm, inputs, layout)
    engine.run_baseline()
    _sync(device)
    baseline_s = time.perf_counter() - t0
    engine_base_diff = (engine.baseline_logits().softmax(-1) - base_probs).abs().max().item()

    results: dict[str, Any] = {}
    for target in args.targets:
        plans = target_plans(target, layout, shape, args.layers)

        _sync(device)
        t0 = time.perf_counter()
        plain = torch.stack([
            full_forward_logits(lm, inputs, compile_plan(p, layout, shape.layers)) for p in plans
        ])
        _sync(device)
        plain_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        fast = engine.evaluate(plans)
        _sync(device)
        engine_s = time.perf_counter() - t0

        p_plain, p_fast = plain.softmax(-1), fast.softmax(-1)
        results[target] = {
            "plans": len(plans),
            "plain_s": plain_s,
            "engine_s": engine_s,
            "speedup": plain_s / engine_s,
            "max_abs_diff": (p_plain - p_fast).abs().max().item(),
            "max_abs_logit_diff": (plain - fast).abs().max().item(),
            # How far the knockouts move the probabilities: the diff must be far below this.
            "max_abs_effect": (p_plain - base_probs).abs().max().item(),
        }
        r = results[target]
        print(
            f"{target}: plain {plain_s:.2f}s engine {engine_s:.3f}s "
            f"speedup {r['speedup']:.1f}x max_abs_diff {r['max_abs_diff']:.1e}",
            flush=True,
        )

    plain_total = sum(r["plain_s"] for r in results.values())
    engine_total = baseline_s + sum(r["engine_s"] for r in results.values())
    max_diff = max([engine_base_diff] + [r["max_abs_diff"] for r in results.values()])
    max_logit_diff = max(r["max_abs_logit_diff"] for r in results.values())

    del engine
    if device.startswith("cuda"):
        memory = {m: _measure_memory_cuda(m, args, shape, lm, inputs, layout)
                  for m in ("engine", "baseline")}
    else:
        memory = {m: _measure_memory_subprocess(m, args) for m in ("engine", "baseline")}

    summary = {
        "shape": asdict(shape) | {"length": shape.length},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "dtype": args.dtype,
        "targets": results,
        "baseline_pass_s": baseline_s,
        "plain_total_s": plain_total,
        "engine_total_s": engine_total,
        "suite_speedup": plain_total / engine_total,
        "max_abs_diff": max_diff,
        "max_abs_logit_diff": max_logit_diff,
        "engine_peak_mb": memory["engine"]["peak_mb"],
        "baseline_peak_mb": memory["baseline"]["peak_mb"],
        "memory": memory,
    }
    print(
        f"suite: plain {plain_total:.2f}s engine {engine_total:.2f}s "
        f"(baseline pass {baseline_s:.3f}s included) max_abs_logit_diff {max_logit_diff:.1e}"
    )
    print(
        f"suite speedup: {summary['suite_speedup']:.1f}x max_abs_diff: {max_diff:.1e} "
        f"engine_peak_mb: {summary['engine_peak_mb']:.0f} "
        f"baseline_peak_mb: {summary['baseline_peak_mb']:.0f}",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def dtype_gap(args: argparse.Namespace) -> dict[str, Any]:
    """How exact the engine is per dtype, against the model's own rounding.

    For the same weights (seed 0, cast from float32) and the same sweep plans it prints, per
    dtype, the largest difference between the engine and a plain masked forward in that
    dtype (probabilities and logits), and for bfloat16 also the plain forward's own distance
    from the float32 one: the noise bf16 adds by itself, which the engine's gap should not
    exceed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    inputs, layout = build_input(shape, args.device)
    plans = [p for t in args.targets for p in target_plans(t, layout, shape, args.layers)]
    print(f"dtype_gap {shape.describe()} | {len(plans)} plans | device {args.device}", flush=True)
    out: dict[str, Any] = {}
    reference: torch.Tensor | None = None
    for name in ("float32", "bfloat16"):
        lm = language_model(build_model(shape, DTYPES[name], args.device))
        engine = Engine(lm, inputs, layout)
        fast = torch.cat([engine.evaluate(plans[i : i + 32]) for i in range(0, len(plans), 32)])
        plain = torch.stack([
            full_forward_logits(lm, inputs, compile_plan(p, layout, shape.layers)) for p in plans
        ])
        reference = plain if reference is None else reference
        row = {
            "engine_vs_plain_prob": (fast.softmax(-1) - plain.softmax(-1)).abs().max().item(),
            "engine_vs_plain_logit": (fast - plain).abs().max().item(),
            "plain_vs_float32_prob": (plain.softmax(-1) - reference.softmax(-1)).abs().max().item(),
            "plain_vs_float32_logit": (plain - reference).abs().max().item(),
        }
        out[name] = row
        print(
            f"{name}: engine vs plain: prob {row['engine_vs_plain_prob']:.1e} "
            f"logit {row['engine_vs_plain_logit']:.1e} | plain vs float32 plain: "
            f"prob {row['plain_vs_float32_prob']:.1e} logit {row['plain_vs_float32_logit']:.1e}",
            flush=True,
        )
    bf = out["bfloat16"]
    print(
        f"bfloat16 engine gap / bfloat16's own noise: logits "
        f"{bf['engine_vs_plain_logit'] / max(bf['plain_vs_float32_logit'], 1e-30):.2f}, probabilities "
        f"{bf['engine_vs_plain_prob'] / max(bf['plain_vs_float32_prob'], 1e-30):.2f}",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_memory:
        _measure_memory_child(args)
        return 0
    if args.dtype_gap:
        dtype_gap(args)
        return 0
    summary = run(args)
    if not args.check:
        return 0
    tolerance = args.tolerance or DEFAULT_TOLERANCE[args.dtype]
    logit_tolerance = args.logit_tolerance or DEFAULT_LOGIT_TOLERANCE[args.dtype]
    failed = False
    if summary["max_abs_diff"] > tolerance:
        print(f"FAIL: max_abs_diff {summary['max_abs_diff']:.1e} > {tolerance:.0e}",
              file=sys.stderr)
        failed = True
    if summary["max_abs_logit_diff"] > logit_tolerance:
        print(f"FAIL: max_abs_logit_diff {summary['max_abs_logit_diff']:.1e} > "
              f"{logit_tolerance:.0e}", file=sys.stderr)
        failed = True
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
