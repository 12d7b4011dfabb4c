"""The demo model's cache (``$VLMFLOW_CACHE``): concurrent first loads, builds that died,
damaged files, an unwritable cache and file modes. The expensive build (GGUF
de-quantisation, LoRA merge) is stubbed: these tests are about the folder, not the model."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from vlmflow.models import demo as demo_module


class FakeModel:
    """Stands in for the merged model and the processor: ``save_pretrained`` writes a small
    but real checkpoint after ``delay`` seconds, counting the builds."""

    def __init__(self, builds: list[str], delay: float) -> None:
        self.builds, self.delay = builds, delay

    def eval(self) -> None:
        pass

    def merge_and_unload(self) -> FakeModel:
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.delay:  # the model, not the processor
            self.builds.append(str(folder))
            time.sleep(self.delay)
            save_file({"w": torch.arange(6.0)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VLMFLOW_CACHE", str(root))
    return root


@pytest.fixture
def shipped(tmp_path) -> Path:
    folder = tmp_path / "shipped"
    (folder / "lora").mkdir(parents=True)
    (folder / demo_module.VISION_FILE).write_bytes(b"vision")
    (folder / "lora" / "adapter_config.json").write_text("{}")
    return folder


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The folders the stubbed merge wrote into, one per build."""
    made: list[str] = []
    monkeypatch.setattr(
        demo_module, "build_demo_model", lambda seed=0: (FakeModel(made, 0.4), FakeModel(made, 0))
    )
    monkeypatch.setattr(demo_module, "load_trained", lambda path, model: model)
    return made


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_concurrent_first_loads_build_once_and_share_the_folder(cache, shipped, builds) -> None:
    """Two loads that start together: one builds, the other waits for it and uses its folder
    (before, both built, and one could delete or replace the folder the other was loading)."""
    results: list[Path | BaseException] = []

    def load() -> None:
        try:
            results.append(demo_module.merged_dir(shipped))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    out = cache / f"demo-{demo_module._fingerprint(shipped)}"
    assert results == [out, out]
    assert len(builds) == 1, builds
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(out.name + ".tmp")) == []


def test_a_build_that_died_leaves_no_folder_behind(cache, shipped, builds) -> None:
    """A temporary folder of a build whose process is gone is removed by the next build; one
    of a live process is left alone."""
    out = cache / f"demo-{demo_module._fingerprint(shipped)}"
    dead = cache / f"{out.name}.tmp{dead_pid()}"
    live = cache / f"{out.name}.tmp{os.getppid()}"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    assert demo_module.merged_dir(shipped) == out
    assert not dead.exists()
    assert live.is_dir()


def test_the_base_folder_is_built_once_for_concurrent_loads(cache, monkeypatch) -> None:
    made: list[Path] = []

    def write_base(gguf: Path, tmp: Path) -> None:
        made.append(tmp)
        time.sleep(0.4)
        save_file({"w": torch.arange(3.0)}, str(tmp / "model.safetensors"))
        (tmp / "tokenizer.json").write_text("{}")
        (tmp / "config.json").write_text("{}")

    monkeypatch.setattr(demo_module, "base_gguf_path", lambda: Path("/nonexistent/base.gguf"))
    monkeypatch.setattr(demo_module, "_write_base", write_base)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(demo_module.base_lm_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [cache / demo_module.BASE_NAME] * 2
    assert len(made) == 1


def test_a_truncated_cached_file_is_rebuilt(cache, shipped, builds) -> None:
    """Truncating a cached weights file (a full disk, a copy cut short) makes the folder
    count as absent: the next load rebuilds it instead of failing on the file."""
    out = demo_module.merged_dir(shipped)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    assert demo_module.merged_dir(shipped) == out
    assert len(builds) == 2
    from safetensors.torch import load_file

    assert load_file(str(weights))["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_folder_of_an_earlier_version_is_kept_if_whole(cache, shipped, builds) -> None:
    """A folder cached by an earlier vlmflow (no completion record) is used as it is when its
    weights are whole, and rebuilt when they are not."""
    out = cache / f"demo-{demo_module._fingerprint(shipped)}"
    out.mkdir(parents=True)
    save_file({"w": torch.arange(6.0)}, str(out / "model.safetensors"))
    (out / "config.json").write_text("{}")
    assert demo_module.merged_dir(shipped) == out
    assert builds == []
    assert (out / demo_module.MARKER).is_file()

    (out / demo_module.MARKER).unlink()
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    assert demo_module.merged_dir(shipped) == out
    assert len(builds) == 1


def corrupt_keeping_size(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[:8] = (len(data) * 4).to_bytes(8, "little")  # a header longer than the file
    file.write_bytes(bytes(data))


def flip_last_byte(file: Path) -> None:
    """Change a file's bytes, keeping its size and its safetensors header (only a sha256
    check finds it)."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_damaged_base_file_names_the_folder_to_delete(cache, monkeypatch) -> None:
    """A cached base file that passes the size check but does not load (its bytes changed)
    stops with the folder to delete, not with safetensors' own error."""
    from vlmflow.errors import UnsupportedModelError

    def write_base(gguf: Path, tmp: Path) -> None:
        save_file({"w": torch.arange(3.0)}, str(tmp / "model.safetensors"))
        (tmp / "tokenizer.json").write_text("{}")
        (tmp / "config.json").write_text("{}")

    monkeypatch.setattr(demo_module, "base_gguf_path", lambda: Path("/nonexistent/base.gguf"))
    monkeypatch.setattr(demo_module, "_write_base", write_base)
    monkeypatch.setattr(demo_module, "build_demo_processor", lambda: SimpleNamespace(tokenizer=None))
    monkeypatch.setattr(demo_module, "demo_config", lambda tok: None)
    monkeypatch.setattr(
        "transformers.LlavaNextVideoForConditionalGeneration", lambda config: None, raising=True
    )
    folder = demo_module.base_lm_dir()
    corrupt_keeping_size(folder / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match=f"{folder}.*delete that folder"):
        demo_module.build_demo_model(0)


def test_a_damaged_merged_file_names_the_folder_to_delete(cache, monkeypatch) -> None:
    """The same for the merged checkpoint ``load_model("demo")`` loads from the cache."""
    import shutil

    from vlmflow.errors import UnsupportedModelError
    from vlmflow.models import TINY_MODEL_DIR, load_model

    folder = cache / "demo-0123456789abcdef"
    shutil.copytree(TINY_MODEL_DIR, folder)
    demo_module._write_marker(folder)
    corrupt_keeping_size(folder / "model.safetensors")
    monkeypatch.setattr(demo_module, "merged_dir", lambda path: folder)
    with pytest.raises(UnsupportedModelError, match=f"{folder}.*delete that folder"):
        load_model("demo")


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Found no NVIDIA driver on your system"),
        ImportError("FlashAttention2 has been toggled on, but the flash_attn package is not installed"),
    ],
)
def test_a_whole_cached_folder_that_fails_to_load_is_not_blamed(cache, monkeypatch, error) -> None:
    """``load("demo", device="cuda")`` on a machine without a GPU, or with
    ``attn="flash_attention_2"`` where flash-attn is not installed, said that a cached file
    of the demo model does not load and to delete its (whole) folder. Only a damaged folder
    is blamed; any other failure reads as for any checkpoint (with load_error's hint)."""
    import shutil

    import vlmflow.models as models
    from vlmflow.errors import UnsupportedModelError

    folder = cache / "demo-0123456789abcdef"
    shutil.copytree(models.TINY_MODEL_DIR, folder)
    demo_module._write_marker(folder)
    monkeypatch.setattr(demo_module, "merged_dir", lambda path: folder)

    class Failing:
        @staticmethod
        def check_options(spec, kwargs) -> None:
            pass

        @staticmethod
        def load(path, **kwargs):
            raise error

    monkeypatch.setattr(models, "claimed_by", lambda path: Failing)
    with pytest.raises(UnsupportedModelError) as raised:
        models.load_model("demo")
    said = str(raised.value)
    assert said.startswith("cannot load 'demo' (Failing): ") and str(error) in said
    assert "delete that folder" not in said and "cached file" not in said
    if isinstance(error, ImportError):
        assert "use --attn sdpa" in said
    # the same failure with the folder's bytes changed (same size) blames the cache
    flip_last_byte(folder / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match=f"{folder}.*delete that folder"):
        models.load_model("demo")


@pytest.mark.parametrize("where", ["preflight", "load"])
def test_a_whole_cached_folder_refused_by_the_loader_is_not_blamed(cache, monkeypatch, where) -> None:
    """A refusal (``UnsupportedModelError``) of a whole cached demo folder, such as weights
    a newer transformers names otherwise, said to delete the 520 MB folder, which rebuilds
    the same files. Only a damaged folder gets that hint, before or after the weights load."""
    import shutil

    import vlmflow.models as models
    from vlmflow.errors import UnsupportedModelError

    folder = cache / "demo-0123456789abcdef"
    shutil.copytree(models.TINY_MODEL_DIR, folder)
    demo_module._write_marker(folder)
    monkeypatch.setattr(demo_module, "merged_dir", lambda path: folder)
    refusal = UnsupportedModelError("the checkpoint lacks weights: language_model.lm_head.weight")

    def refuse(*args, **kwargs):
        raise refusal

    if where == "preflight":
        monkeypatch.setattr(models, "preflight", refuse)
    else:
        monkeypatch.setattr(
            models, "claimed_by", lambda path: SimpleNamespace(check_options=lambda *a: None, load=refuse)
        )
    with pytest.raises(UnsupportedModelError) as raised:
        models.load_model("demo")
    assert str(raised.value) == str(refusal)
    flip_last_byte(folder / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match=f"{folder}.*delete that folder"):
        models.load_model("demo")


def test_an_unwritable_cache_is_named_before_the_build(tmp_path, monkeypatch, shipped, builds) -> None:
    """``VLMFLOW_CACHE`` under a file (or otherwise unwritable) stops at once with one line
    naming it, not with a raw NotADirectoryError after minutes of conversion."""
    from vlmflow.errors import UnsupportedModelError

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(UnsupportedModelError, match=r"afile/cache cannot be written.*VLMFLOW_CACHE"):
        demo_module.merged_dir(shipped)
    assert builds == []


def test_cached_files_get_the_usual_modes(cache, shipped, builds) -> None:
    """The weights (which safetensors writes 0600) get the mode of every other cached file
    under the process's umask: 0644 under 022, so a shared cache is readable to all."""
    old = os.umask(0o022)
    try:
        out = demo_module.merged_dir(shipped)
    finally:
        os.umask(old)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


def test_the_completion_record_is_written_after_the_files_are_on_disk(
    cache, shipped, builds, monkeypatch
) -> None:
    """Every cached file, and the completion record, is fsynced before the record is
    renamed into place: after a power loss, a folder with a record holds the bytes it
    describes (the page cache may otherwise write the small record first and the weights
    never, and a later load would trust a folder of zeros)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(self: Path, target: str | Path) -> Path:
        events.append(("replace", str(target)))
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    out = demo_module.merged_dir(shipped)
    marker_at = next(
        i for i, (kind, path) in enumerate(events) if kind == "replace" and path.endswith(demo_module.MARKER)
    )
    synced = {Path(path).name for kind, path in events[:marker_at] if kind == "fsync"}
    stored = {f.name for f in out.iterdir()}
    assert stored - {demo_module.MARKER} <= synced, (stored, synced)
    assert demo_module.MARKER + ".tmp" in synced


def test_a_load_waiting_for_another_build_says_so_at_the_clis_level(cache, shipped, builds, caplog) -> None:
    """A second first load waits for the first; the line naming the holder was logged at INFO,
    which the CLI does not show without -v, so a user saw nothing for the whole build."""
    import logging

    results: list[Path] = []
    with caplog.at_level(logging.WARNING, logger="vlmflow"):
        load = lambda: results.append(demo_module.merged_dir(shipped))  # noqa: E731
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 2 and len(builds) == 1
    waits = [r for r in caplog.records if "waiting for" in r.getMessage()]
    assert waits and all(r.levelno == logging.WARNING for r in waits)
