"""Every benchmark loader, fed annotation files damaged in every way a download or a hand
edit can (property-based, bounded): missing fields, wrong types, duplicate ids, answers
not among the options, empty option lists, non-UTF-8 bytes, enormous lines, files cut at
any byte, files that are not the expected shape. Each gives well-formed samples or one
clear one-line ``DataError`` naming the file; never another exception."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "data"))

from benchfiles import lvb_item, mvbench_item, tomato_item, videomme_row, write_videomme  # noqa: E402

from vlmflow.data import load_dataset  # noqa: E402
from vlmflow.errors import DataError  # noqa: E402

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def tvbench_item(i: int) -> dict[str, Any]:
    return {
        "video": f"v{i}.mp4",
        "question": "Which way?",
        "candidates": ["left", "right"],
        "answer": "right",
    }


def jsonl_item(i: int) -> dict[str, Any]:
    return {
        "id": f"q{i}",
        "video": "v.mp4",
        "question": "?",
        "options": ["a", "b"],
        "answer": i % 2,
        "task": "t",
    }


def vcg_item(i: int) -> dict[str, Any]:
    return {"Q": "What happens?", "A": "a cat jumps", "video_name": f"v{i}"}


# loader -> (items of a valid file, where the file goes, how it is written, the dataset spec)
LOADERS: dict[str, tuple[Any, str, str]] = {
    "jsonl": (jsonl_item, "qa.jsonl", "jsonl"),
    "tvbench": (tvbench_item, "json/action_count.json", "list"),
    "mvbench": (lambda i: mvbench_item(f"v{i}.mp4"), "json/my_task.json", "list"),
    "tomato": (lambda i: tomato_item(f"k{i}"), "jsons/count.json", "keyed"),
    "longvideobench": (lvb_item, "lvb_val.json", "list"),
    "vcgbench": (vcg_item, "Benchmarking_QA/generic_qa.json", "list"),
    "videomme": (lambda i: videomme_row(f"00{i}-1", "OCR Problems"), "", "parquet"),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 9) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def damage(draw) -> list[tuple[str, Any]]:
    """A few edits: (kind, argument) applied in order to the items or the file bytes."""
    edit = st.one_of(
        st.tuples(st.just("drop"), st.integers(0, 2), st.integers(0, 12)),
        st.tuples(st.just("set"), st.integers(0, 2), st.integers(0, 12), json_values),
        st.tuples(st.just("empty_options"), st.integers(0, 2)),
        st.tuples(st.just("stray_answer"), st.integers(0, 2), st.text(max_size=5)),
        st.tuples(st.just("duplicate"), st.integers(0, 2)),
        st.tuples(st.just("huge"), st.integers(0, 2)),
        st.tuples(st.just("not_utf8"), st.integers(0, 200)),
        st.tuples(st.just("cut"), st.integers(0, 2000)),
        st.tuples(st.just("replace_file"), json_values),
    )
    return draw(st.lists(edit, min_size=1, max_size=3))


def build(root: Path, name: str, edits: list[tuple]) -> str:
    make, where, shape = LOADERS[name]
    items = [make(i) for i in range(3)]
    file_edits = []
    for edit in edits:
        kind, *arg = edit
        if kind in ("not_utf8", "cut", "replace_file"):
            file_edits.append(edit)
            continue
        item = items[arg[0] % len(items)]
        keys = sorted(item)
        if kind == "drop":
            item.pop(keys[arg[1] % len(keys)], None)
        elif kind == "set":
            item[keys[arg[1] % len(keys)]] = arg[2]
        elif kind == "empty_options":
            for key in ("options", "candidates"):
                if key in item:
                    item[key] = []
        elif kind == "stray_answer":
            item["answer"] = arg[1]
        elif kind == "duplicate":
            items.append(dict(item))
        elif kind == "huge":
            item["question"] = "why? " * 200_000  # a 1 MB line
    if shape == "parquet":
        try:
            write_videomme(root, items)
        except Exception:  # pyarrow cannot even store these mixed types: the file is refused
            (root / "videomme").mkdir(parents=True, exist_ok=True)
            (root / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1 broken")
        path = root / "videomme" / "test-00000-of-00001.parquet"
    else:
        path = root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        if shape == "jsonl":
            text = "\n".join(json.dumps(x) for x in items)
        elif shape == "keyed":
            text = json.dumps({f"id{i}": x for i, x in enumerate(items)})
        else:
            text = json.dumps(items)
        path.write_text(text)
    for kind, *arg in file_edits:
        data = path.read_bytes()
        if kind == "not_utf8":
            k = arg[0] % (len(data) + 1)
            data = data[:k] + b"\xff\xfe\xc3" + data[k:]
        elif kind == "cut":
            data = data[: arg[0] % (len(data) + 1)]
        else:
            data = json.dumps(arg[0]).encode()
        path.write_bytes(data)
    return f"{name}:{path if shape == 'jsonl' else root}"


def check(spec: str) -> None:
    try:
        samples = load_dataset(spec)
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        return
    ids = [s.id for s in samples]
    assert samples and len(set(ids)) == len(ids), "duplicate ids must be refused"
    for s in samples:
        assert isinstance(s.question, str) and isinstance(s.task, str) and s.task
        if s.options:
            assert all(isinstance(o, str) for o in s.options)
            assert s.answer is not None and 0 <= s.answer < len(s.options)
        else:
            assert s.answer is None and isinstance(s.answer_text, str)


def make_test(name: str):
    @FAST
    @given(edits=damage())
    def test(tmp_path_factory, edits) -> None:
        root = tmp_path_factory.getbasetemp() / f"ann-{name}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        check(build(root, name, edits))

    test.__name__ = f"test_{name}_annotations_load_or_refuse_with_one_clear_error"
    return test


for _name in LOADERS:
    globals()[f"test_{_name}_annotations_load_or_refuse_with_one_clear_error"] = make_test(_name)


def test_the_undamaged_files_load(tmp_path: Path) -> None:
    """The base files are valid, so the damaged ones test the damage."""
    for name in LOADERS:
        root = tmp_path / name
        root.mkdir()
        assert len(load_dataset(build(root, name, []))) == 3, name
