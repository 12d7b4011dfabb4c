"""A bad checkpoint stops a run with one clear line before any sample is processed: no
config, an unknown model type, no weights, a damaged or missing weight file, weights of
the wrong shape, weights missing from the file (never left random), an attention kernel
that is not installed. (Flash or flex attention that
*is* available is switched to sdpa for knockout: tests/test_llava_next_video.py.)"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures.catalog import FAMILIES
from vlmflow.cli import app
from vlmflow.errors import UnsupportedModelError


def damage_config(key: str, value) -> callable:
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        if key == "intermediate_size":
            config["text_config"][key] = 2 * config["text_config"].get(key, 64)
        else:
            config[key] = value
        (d / "config.json").write_text(json.dumps(config))

    return edit


def remove(pattern: str):
    return lambda d: [f.unlink() for f in d.glob(pattern)]


def overwrite(pattern: str, data: bytes):
    return lambda d: [f.write_bytes(data) for f in d.glob(pattern)]


def cut_in_half(pattern: str):
    return lambda d: [f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]) for f in d.glob(pattern)]


def drop_weights(*parts: str):
    """Rewrite every safetensors file without the tensors whose name holds one of ``parts``
    (a checkpoint converted or downloaded incompletely: its headers read, tensors are absent)."""

    def edit(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        for f in d.glob("*.safetensors"):
            tensors = load_file(f)
            kept = {k: v for k, v in tensors.items() if not any(p in k for p in parts)}
            assert len(kept) < len(tensors), (f, parts)
            save_file(kept, str(f), metadata={"format": "pt"})

    return edit


def sharded(d: Path) -> None:
    (d / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        )
    )
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")


CASES = {
    "no config": (remove("config.json"), r"has no config.json \(not a transformers checkpoint folder\)"),
    "config not JSON": (overwrite("config.json", b"{oops"), "cannot read .*config.json"),
    "unknown model type": (damage_config("model_type", "bogus_vlm"), "no adapter for model type 'bogus_vlm'"),
    "no weights": (remove("*.safetensors"), "has a config but no weights"),
    "garbage weights": (overwrite("*.safetensors", b"garbage"), "model.safetensors is damaged or incomplete"),
    "cut weights": (cut_in_half("*.safetensors"), "damaged or incomplete|cannot load"),
    "missing shard": (sharded, r"model-00002-of-00002.safetensors named in .* missing"),
    "wrong shape": (damage_config("intermediate_size", None), "the weights do not fit the config"),
    "no tokenizer": (remove("tokenizer.json"), r"/model has a config and weights but no tokenizer \(none of"),
    "missing weights": (
        drop_weights("layers.1.", "lm_head"),
        r"/model: \d+ weight\(s\) the model needs are not in it, e.g. \[.*(layers\.1\.|lm_head).*"
        "they would be left random",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_checkpoint_is_one_clear_error_before_any_sample(
    case: str, tiny_llava_path: Path, tmp_path: Path
):
    edit, says = CASES[case]
    model = Path(shutil.copytree(tiny_llava_path, tmp_path / "model"))
    edit(model)
    out = tmp_path / "run"
    args = [
        "flow",
        "--model",
        str(model),
        "--data",
        "synthetic:1",
        "--task",
        "object_count",
        "--num-frames",
        "4",
    ]
    result = CliRunner().invoke(app, [*args, "-t", "cross-frame", "--out", str(out), "--quiet"])
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert __import__("re").search(says, errors[0]), errors[0]
    assert not (out / "records").exists()  # before any sample


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weights_missing_from_the_checkpoint_are_refused_in_every_family(
    family: str, tiny_models, tmp_path: Path
) -> None:
    """transformers fills a weight the checkpoint lacks with random values and only logs
    it: every family's load refuses such a checkpoint, naming it and the missing weights,
    instead of running a model that is partly random (option probabilities of 0)."""
    from vlmflow.models import load_model

    model = Path(shutil.copytree(tiny_models.path(family), tmp_path / "model"))
    drop_weights("layers.1.")(model)
    with pytest.raises(UnsupportedModelError) as caught:
        load_model(str(model), progress=False)
    message = str(caught.value)
    assert message.startswith(f"{model}: ") and "they would be left random" in message, message
    assert re.search(r"e\.g\. \['[^']*layers\.1\.", message), message


def test_a_head_tied_to_the_embeddings_is_not_missing() -> None:
    """The embedded tiny model ties its output head to the embeddings
    (``tie_word_embeddings``) and ships no head weight: that is no missing weight."""
    from safetensors import safe_open

    from vlmflow.models import TINY_MODEL_DIR, load_model

    with safe_open(str(TINY_MODEL_DIR / "model.safetensors"), "pt") as f:
        assert not any("lm_head" in k for k in f.keys())
    adapter = load_model("tiny", progress=False)
    head, embed = adapter.module("lm_head").weight, adapter.module("embed").weight
    assert head.data_ptr() == embed.data_ptr()


def test_an_attention_kernel_that_is_not_installed(tiny_llava_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    args = ["eval", "--model", str(tiny_llava_path), "--data", "synthetic:1", "--task", "object_count"]
    result = CliRunner().invoke(app, [*args, "--attn", "flash_attention_2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "use --attn sdpa" in result.output and "Traceback" not in result.output


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["eval", "--model", str(tmp_path / "nope"), "--data", "synthetic:1", "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and f"checkpoint folder not found: {tmp_path / 'nope'}" in result.output


@pytest.mark.parametrize("spec", ["./no_such_dir", "../no_such_dir", "models\\no_such_dir"])
def test_a_missing_local_path_fails_at_once_naming_it(tmp_path: Path, monkeypatch, spec: str) -> None:
    """A path with a backslash was taken for a hub id and retried on the hub (~45 s offline)
    before failing; every path that looks local is refused at once, by name."""
    import vlmflow

    (tmp_path / "work" / "models").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    start = time.monotonic()
    with pytest.raises(UnsupportedModelError, match=f"checkpoint folder not found: {re.escape(spec)}"):
        vlmflow.load(spec)
    assert time.monotonic() - start < 5


def test_a_hub_id_still_goes_to_the_hub(tmp_path: Path, monkeypatch) -> None:
    """``org/name`` and a bare ``name`` are hub ids, also when a folder ``org`` exists here
    (a download must not be blocked by a local folder's name): the local checks leave them
    to transformers."""
    from vlmflow.checkpoint import looks_local

    (tmp_path / "Qwen").mkdir()
    monkeypatch.chdir(tmp_path)
    for hub_id in ("llava-hf/LLaVA-NeXT-Video-7B-hf", "Qwen/Qwen2-VL-2B-Instruct", "gpt2"):
        assert not looks_local(hub_id), hub_id
    assert looks_local("./foo") and looks_local("models\\foo") and looks_local("a/b/c")


def test_a_hub_error_says_when_the_id_looks_like_a_missing_local_folder(tmp_path: Path, monkeypatch) -> None:
    """``models/foo`` with a folder ``models`` here goes to the hub; when the hub cannot
    give it, the error also says there is no such folder here (the likely typo)."""
    import vlmflow

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnsupportedModelError, match=r"no folder models/foo here, though models/ exists"):
        vlmflow.load("models/foo")


def test_a_home_relative_path_loads(tiny_llava_path: Path, tmp_path: Path, monkeypatch) -> None:
    """``~/model`` passed the pre-load check but reached transformers unexpanded ("Repo id
    must be in the form ..."); it is expanded once, for everything."""
    import vlmflow

    shutil.copytree(tiny_llava_path, tmp_path / "model")
    monkeypatch.setenv("HOME", str(tmp_path))
    model = vlmflow.load("~/model")
    assert model.num_layers > 0


@pytest.mark.parametrize(
    "files", [("tokenizer.model",), ("vocab.json", "merges.txt"), ("tokenizer.json",)], ids=" + ".join
)
def test_every_tokenizer_file_set_the_hub_ships_passes_the_check(tmp_path: Path, files) -> None:
    """Hub repos ship tokenizer.json (Qwen, LLaVA-NeXT-Video), only sentencepiece's
    tokenizer.model (PLLaVA, Phi-3 Mini-InternVL) or a BPE vocab.json + merges.txt: none is refused."""
    from vlmflow.checkpoint import preflight

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next_video"}))
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    for name in files:
        (tmp_path / name).write_text("x")
    preflight(str(tmp_path), lambda raw: True)


@pytest.mark.parametrize(
    ("family", "options", "named"),
    [
        ("qwen2_vl", {"num_frame": 16}, ["'num_frame' (did you mean 'num_frames'?)"]),
        ("qwen2_vl", {"max_visual_tokens": 100}, ["'max_visual_tokens'"]),  # VideoLLaMA3's
        ("llava_next_video", {"video_pixels": (1, 2), "frames_per_second": 1.0}, ["'video_pixels'"]),
    ],
)
def test_an_option_the_family_lacks_is_refused_before_the_weights_load(
    tiny_models, monkeypatch, family: str, options: dict, named: list[str]
) -> None:
    """A misspelt or another family's adapter option is an UnsupportedModelError naming it
    and this family's options, raised before the model loads (not 'cannot load ...' after)."""
    from tests.fixtures.catalog import FAMILIES, resolve
    from vlmflow.errors import UnsupportedModelError
    from vlmflow.models import load_model

    path = str(tiny_models.path(family))
    cls = resolve(FAMILIES[family].adapter)

    def no_weights(*args, **kwargs):
        raise AssertionError("the model was loaded before its options were checked")

    monkeypatch.setattr(cls, "load_model", classmethod(no_weights))
    with pytest.raises(UnsupportedModelError) as caught:
        load_model(path, progress=False, **options)
    message = str(caught.value)
    assert "cannot load" not in message and all(n in message for n in named), message
    assert f"its options: {', '.join(cls.options())}" in message
    assert "num_frames" in cls.options() and "prompt_style" in cls.options()
    monkeypatch.undo()
    ok = {"qwen2_vl": {"num_frames": 16, "video_pixels": None}, "llava_next_video": {"num_frames": 16}}
    assert load_model(path, progress=False, **ok[family]).num_frames == 16
