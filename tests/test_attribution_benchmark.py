"""``benchmarks/attribution.py`` reads the exact changes it ranks against as the library does:
``log_softmax64`` of the logits (float32 rounds a near-certain answer's small change to 0).
The full benchmark is not a test; its ``measure`` runs here on the tiny model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from vlmflow.analyses.targets import PAPER_TARGETS
from vlmflow.engine import Engine

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_benchmarks_exact_changes_are_the_librarys_float64_readout(
    tiny_llava, sample, monkeypatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmark imports its neighbours
    spec = importlib.util.spec_from_file_location("attribution_benchmark", BENCHMARKS / "attribution.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prepared = tiny_llava.prepare(sample)
    lm, inputs, layout = tiny_llava.language_model(), prepared.inputs, prepared.layout
    out = bench.measure(lm, inputs, layout, window=1, k=3, n_head=2, screen="model")

    with torch.inference_mode():
        logits = lm.forward(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1]
    base = logits.double().log_softmax(-1)
    token = int(base.argmax())
    assert out["answer_logprob"] == pytest.approx(float(base[token]), abs=1e-12)
    points = bench.suite(layout, lm.num_layers, 1)
    exact = Engine(lm, inputs, layout).evaluate([p for _, p in points]).double().log_softmax(-1)
    exact = (exact[:, token] - base[token]).numpy()
    for target in PAPER_TARGETS:
        drops = [e for (t, _), e in zip(points, exact, strict=True) if t == target]
        assert out["per_target"][target]["max_exact_drop"] == pytest.approx(min(drops), abs=1e-12), target
