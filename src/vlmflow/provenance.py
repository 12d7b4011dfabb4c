"""Fingerprints of what a run read: the model's weights and the dataset's annotations.

They go into ``manifest.json`` so a result says exactly which checkpoint and which data
produced it, and so resuming a run folder after the weights or the annotations changed is
refused (the records of the two would silently mix).

What is hashed (sha256, hex):

* **model** (a local folder, or ``demo``): for every weight file (``*.safetensors``; if
  there are none, ``*.bin``/``*.pt``/``*.pth``), in name order: its name, its size in bytes,
  its first MiB and its last MiB; then ``config.json`` whole. Reading 2 MiB per file keeps
  this instant for 15 GB checkpoints while any re-save, re-train or truncation changes it.
  A hub id is not hashed here: the run records the commit the weights were loaded from
  (``revision``, from ``config._commit_hash``) once the model is loaded.
* **data**: for a dataset on disk (``NAME:PATH``), ``path``: PATH made absolute (the
  report loads the samples again from there to draw them, from any working folder); every
  annotation file (``.json``,
  ``.jsonl``, ``.csv``, ``.tsv``, ``.yaml``, ``.yml``, ``.txt`` at PATH or under it), in
  path order: its relative path and its full contents. Videos are not hashed (too big; the
  sample hash below names them). For ``synthetic`` the generator's parameters are recorded.
  For every dataset, ``samples_sha256`` hashes the selected samples' ids, tasks, questions,
  options, answers, video paths and bounds in order (what the run iterates over).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .sample import Sample

MIB = 1 << 20
WEIGHT_PATTERNS = ("*.safetensors",)
LEGACY_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth")
ANNOTATION_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".txt")
# Fingerprint fields that must match for a run folder to be resumed.
MUST_MATCH = {"model": ("weights_sha256",), "data": ("annotations_sha256", "samples_sha256", "generator")}


def model_fingerprint(spec: str, *, progress: bool = True) -> dict[str, Any]:
    """``{"spec", "path", "weights_sha256", "weight_files", "hashed"}`` for a local model
    folder, ``demo`` or ``tiny``; ``{"spec", "hub_id"}`` for anything else (a hub id).
    ``progress=False``: the demo's first-use build shows no progress bars."""
    from .models import hf_progress, resolve_spec

    with hf_progress(progress):
        path = Path(resolve_spec(spec))
    if not path.is_dir():
        return {"spec": spec, "hub_id": spec}
    files = sorted(f for p in WEIGHT_PATTERNS for f in path.glob(p))
    files = files or sorted(f for p in LEGACY_WEIGHT_PATTERNS for f in path.glob(p))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(MIB))
            if size > MIB:
                fh.seek(max(MIB, size - MIB))
                h.update(fh.read(MIB))
    config = path / "config.json"
    if config.exists():
        h.update(b"config.json\0" + config.read_bytes())
    return {
        "spec": spec,
        "path": str(path.resolve()),
        "weights_sha256": h.hexdigest(),
        "weight_files": [f.name for f in files],
        "hashed": "per weight file: name, size, first and last MiB; then config.json",
    }


def data_fingerprint(spec: str, samples: Sequence[Sample], seed: int) -> dict[str, Any]:
    """The dataset ``spec``, a hash of its annotation files (or the synthetic generator's
    parameters) and a hash of the selected ``samples``."""
    name, _, arg = spec.partition(":")
    out: dict[str, Any] = {"spec": spec, "subsample_seed": seed, "num_samples": len(samples)}
    if name.strip() == "synthetic":
        from .data import synthetic

        params = {
            k: v.default
            for k, v in inspect.signature(synthetic.generate).parameters.items()
            if v.default is not inspect.Parameter.empty
        }
        spec_args = synthetic.parse_spec(arg)  # the loader's own reading of the spec
        per_task = spec_args.pop("num_per_task")
        params.update(spec_args)  # keeps the keys' order: earlier manifests still compare equal
        out["generator"] = {"function": "vlmflow.data.synthetic.generate", "num_per_task": per_task, **params}
        out["generator"]["tasks"] = list(params.get("tasks") or synthetic.TASKS)
    elif arg and Path(arg).exists():
        root = Path(arg)
        files = (
            [root]
            if root.is_file()
            else sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in ANNOTATION_SUFFIXES)
        )
        h = hashlib.sha256()
        for f in files:
            rel = f.name if f == root else str(f.relative_to(root))
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
        out["annotations_sha256"] = h.hexdigest()
        out["annotation_files"] = len(files)
    local = Path(arg.strip()).expanduser() if arg.strip() and name.strip() != "synthetic" else None
    if local is not None and local.exists():  # where the run read it, whatever its working folder
        out["path"] = str(local.resolve())
    out["samples_sha256"] = samples_hash(samples)
    return out


def samples_hash(samples: Sequence[Sample]) -> str:
    """sha256 of the samples' annotations (not their pixels), in order."""
    h = hashlib.sha256()
    for s in samples:
        item = [s.id, s.task, s.question, list(s.options), s.answer, s.answer_text, s.video, s.bound]
        h.update(json.dumps(item, default=str).encode() + b"\n")
    return h.hexdigest()


def mismatches(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the :data:`MUST_MATCH` fingerprint fields that differ between two manifests'
    ``provenance`` blocks (fields missing from either side are not compared)."""
    out = []
    for part, keys in MUST_MATCH.items():
        a, b = old.get(part) or {}, new.get(part) or {}
        for k in keys:
            if k in a and k in b and json.dumps(a[k], default=str) != json.dumps(b[k], default=str):
                out.append(f"{part}.{k}")
    return out
