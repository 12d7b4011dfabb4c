"""The documentation runs: the README's Python section, ``examples/quickstart.py`` and the
runnable examples in the public entry points' docstrings, all on the demo model."""

from __future__ import annotations

import doctest
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_python_section_runs(capsys) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no Python section"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert "rel_pred" in capsys.readouterr().out


def test_quickstart_example_runs(capsys) -> None:
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "the model answers" in out and "hurts most around layer" in out and "last token -> frames" in out
    # every printed layer is 0-based, as the sweep's table it prints (it said the worst
    # layer + 1, and the lens's L // 2 and the attention's L - 1 as L // 2 + 1 and L)
    rows = [m.groups() for m in re.finditer(r"^\s*cross-frame\s+(\d+)\s+\[[\d, ]*\]\s+(\S+)$", out, re.M)]
    layers = [int(layer) for layer, _ in rows]
    n = len(layers)
    assert layers == list(range(n)) and n > 2
    said = re.search(r"hurts most around layer (\d+): ", out)
    least = min(float(value) for _, value in rows)  # as printed: ties are possible
    assert said and float(rows[int(said.group(1))][1]) == least
    assert f"video tokens at layer {n // 2} :" in out and f"last token -> frames at layer {n - 1}:" in out


DOCTEST_MODULES = [
    "vlmflow",
    "vlmflow.probe",
    "vlmflow.api",
    "vlmflow.rundir",
    "vlmflow.cuts",
    "vlmflow.checkpoint",
]


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples_run(module: str, tmp_path, monkeypatch) -> None:
    import importlib

    monkeypatch.chdir(tmp_path)  # examples that write run folders write them here
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module} failed"
    if module != "vlmflow.cuts":
        assert result.attempted > 0


def test_test_files_named_in_docs_exist() -> None:
    """Every ``tests/...py`` path the docs and the README name is a file of the repository."""
    texts = [p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    named = {m for text in texts for m in re.findall(r"\btests/[\w/]+\.py\b", text)}
    assert named
    assert sorted(p for p in named if not (ROOT / p).is_file()) == []


def test_attribution_doc_first_block_runs() -> None:
    """docs/attribution.md's first Python block runs verbatim (it sets up its own probe)."""
    block = python_blocks((ROOT / "docs" / "attribution.md").read_text())[0]
    namespace: dict = {"__name__": "attribution_doc"}
    exec(compile(block, "docs/attribution.md", "exec"), namespace)
    assert namespace["screen"].summary()["verified"] > 0
    assert namespace["heat"].shape[0] == namespace["engine"].lm.num_layers


def test_documented_mask_forms_and_packing_rounding_are_the_engine_s(tiny_llava_path, sample) -> None:
    """The README's masks (boolean under sdpa, additive floats under eager, per head where
    a cut names heads) are what the engine passes, and the docs of ``max_batch_tokens``
    say it changes results by rounding (measured here in float32), not that it changes none."""
    import torch

    from vlmflow.api import Options
    from vlmflow.cuts import Cut, Plan
    from vlmflow.engine import Engine
    from vlmflow.hooks import layer_hooks
    from vlmflow.models import load_model

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Masks are boolean `(1, 1, q, k)`" not in readme
    assert "`(1, H, q, k)`" in readme and "additive floats" in readme and "under `eager`" in readme
    common = (ROOT / "src/vlmflow/commands/common.py").read_text()
    for text in (" ".join(Options.__doc__.split()), common):
        assert "floating-point" in text and "results do not change" not in text
        assert "do not depend on it" not in text

    adapter = load_model(str(tiny_llava_path), attn_implementation="eager")
    prepared = adapter.prepare(sample)
    lm = adapter.language_model()
    engine = Engine(lm, prepared.inputs, prepared.layout)
    engine.run_baseline()
    masks: list[torch.Tensor] = []

    def pre(i: int, args: tuple, kwargs: dict) -> None:
        masks.append(kwargs["attention_mask"])

    heads = lm.num_heads
    plans = [
        Plan("h", (Cut("question", "last", (1,), heads=(0,)),)),
        Plan("v", (Cut("video", "last", (1,)),)),
    ]
    with layer_hooks(lm.layers, pre=pre):
        engine.evaluate(plans)
    assert masks and all(m.is_floating_point() for m in masks)
    assert any(m.shape[:2] == (1, heads) for m in masks)
    small = Engine(lm, prepared.inputs, prepared.layout, max_batch_tokens=1)
    assert (engine.evaluate(plans).softmax(-1) - small.evaluate(plans).softmax(-1)).abs().max() < 1e-6
