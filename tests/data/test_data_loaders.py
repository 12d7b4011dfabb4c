"""The JSONL and TVBench loaders and ``load_dataset`` (spec parsing, task selection, sampling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.benchfiles import only_failure
from vlmflow.data import DATASETS, load_dataset
from vlmflow.errors import DataError, VlmflowError


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_fields(tmp_path):
    file = _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {
                "id": "q1",
                "video": "clips/a.mp4",
                "question": "What?",
                "options": ["x", "y"],
                "answer": 1,
                "task": "count",
                "start": 1.5,
                "end": 4,
            },
            "",
            {
                "video": "/abs/b.mp4",
                "question": "Which?",
                "options": ["x", "y", "z"],
                "answer": "z",
                "extra": 3,
            },
            {"video": "frames/c", "question": "Describe it.", "answer": "a red ball rolls"},
        ],
    )
    a, b, c = load_dataset(f"jsonl:{file}")
    assert (a.id, a.task, a.options, a.answer, a.answer_letter) == (
        "q1",
        "count",
        ("x", "y"),
        1,
        "B",
    )
    assert a.video == str(tmp_path / "clips" / "a.mp4") and a.bound == (1.5, 4.0)
    assert a.source == "jsonl" and a.frames is None
    assert (b.id, b.task, b.answer, b.video, b.bound) == ("3", "default", 2, "/abs/b.mp4", None)
    assert b.meta["extra"] == 3
    assert not c.is_multiple_choice and c.answer is None
    assert c.answer_text == "a red ball rolls"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"question": "q", "options": ["a"], "answer": 0}, "missing field 'video'"),
        ({"video": "v.mp4", "options": ["a"], "answer": 0}, "missing field 'question'"),
        ({"video": "v.mp4", "question": "q", "options": ["a", "b"]}, "missing field 'answer'"),
        (
            {"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": "c"},
            "answer 'c' is not among options",
        ),
        ({"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": 5}, "outside"),
        ("{not json", "not valid JSON"),
    ],
)
def test_jsonl_malformed_line_is_a_failed_sample_naming_file_and_line(tmp_path, row, match):
    good = {"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": 0}
    file = _write_jsonl(tmp_path / "qa.jsonl", [good, row])
    samples = load_dataset(f"jsonl:{file}")
    assert [s.id for s in samples] == ["1", "2"]  # the bad line keeps its place and its line-number id
    bad = only_failure(samples, match, f"{file}:2")
    assert bad.id == "2" and bad.task == "default" and samples[0].error is None
    # a file where no line can be read is refused whole, with the first reason
    only_bad = _write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"jsonl:{only_bad}")
    assert f"{only_bad}: none of its 1 items can be read" in str(info.value)


def test_jsonl_line_that_is_not_utf8_is_a_failed_sample(tmp_path):
    good = {"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": 0}
    file = tmp_path / "qa.jsonl"
    line = json.dumps({**good, "question": "caf\u00e9 \u2028 ok"}, ensure_ascii=False).encode()
    file.write_bytes(
        line + b"\n" + b'{"video": "v.mp4", "question": "\xff\xfe"}\n' + json.dumps(good).encode()
    )
    samples = load_dataset(f"jsonl:{file}")
    assert [s.id for s in samples] == ["1", "2", "3"]
    assert samples[0].question == "caf\u00e9 \u2028 ok"  # a line separator inside a string splits nothing
    bad = only_failure(samples, "not UTF-8 text", f"{file}:2")
    assert bad.id == "2"


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"jsonl:{tmp_path / 'nope.jsonl'}")


# ----------------------------------------------------------------------------- TVBench


def _tvbench(root: Path, files: dict[str, list]) -> Path:
    (root / "json").mkdir(parents=True)
    for stem, items in files.items():
        (root / "json" / f"{stem}.json").write_text(json.dumps(items))
    return root


def _item(video="v.mp4", q="q?", cands=("left", "right"), answer="right", **kw):
    return {"video": video, "question": q, "candidates": list(cands), "answer": answer, **kw}


def test_tvbench_layout(tmp_path):
    root = _tvbench(
        tmp_path / "TVBench",
        {
            "action_sequence": [_item("s.mp4", answer="left", start=2.0, end=6.5)],
            "moving_direction": [_item("m1.mp4", start=1, end=2), _item("m2.mp4", answer="left")],
            "my_extra": [_item("e.mp4", start=0.5, end=1.5)],
        },
    )
    samples = load_dataset(f"tvbench:{root}")
    by_task = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s)
    assert list(by_task) == ["Action Sequence", "Moving Direction", "my_extra"]
    seq = by_task["Action Sequence"][0]
    assert seq.video == str(root / "video" / "action_sequence" / "s.mp4")
    assert (seq.options, seq.answer, seq.bound) == (("left", "right"), 0, (2.0, 6.5))
    m1, m2 = by_task["Moving Direction"]
    assert m1.bound is None, "Moving Direction is not a bounded task"
    assert (m1.answer, m2.answer, m1.id, m2.id) == (
        1,
        0,
        "moving_direction-00000",
        "moving_direction-00001",
    )
    extra = by_task["my_extra"][0]
    assert extra.video == str(root / "video" / "my_extra" / "e.mp4")
    assert extra.bound == (0.5, 1.5) and extra.source == "tvbench"
    # the paper's task ids number TVBench's 10 tasks, whichever are on disk; others follow
    assert {s.task for s in load_dataset(f"tvbench:{root}", tasks=["5"])} == {"Moving Direction"}
    assert {s.task for s in load_dataset(f"tvbench:{root}", tasks=["10"])} == {"my_extra"}


def test_tvbench_task_ids_survive_a_partial_download(tmp_path):
    """docs/datasets.md: "3 Action Sequence", "8 Scene Transition", with 2 of 10 tasks on disk."""
    root = _tvbench(
        tmp_path / "tv",
        {"action_sequence": [_item(start=1, end=2)], "scene_transition": [_item(), _item()]},
    )
    assert {s.task for s in load_dataset(f"tvbench:{root}", tasks=["3"])} == {"Action Sequence"}
    assert {s.task for s in load_dataset(f"tvbench:{root}", tasks="8")} == {"Scene Transition"}
    assert {s.task for s in load_dataset(f"tvbench_open_ended:{root}", tasks=["3"])} == {"Action Sequence"}
    with pytest.raises(DataError, match="task id 0 is 'Action Antonym'.* missing from this copy"):
        load_dataset(f"tvbench:{root}", tasks=["0"])
    with pytest.raises(DataError, match="task 'Object Count' \\(id 6\\).* missing from this copy"):
        load_dataset(f"tvbench:{root}", tasks=["Object Count"])
    with pytest.raises(DataError, match="no task '10'; its tasks: 0 Action Antonym \\(missing\\), "):
        load_dataset(f"tvbench:{root}", tasks=["10"])


def test_jsonl_task_ids_number_the_tasks_in_the_file(tmp_path):
    """No published list: ids are the alphabetical order of the tasks present."""
    lines = [
        {"video": "v.mp4", "question": "q?", "answer": "a", "task": t} for t in ["zoom", "count", "zoom"]
    ]
    file = tmp_path / "qa.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [s.task for s in load_dataset(f"jsonl:{file}", tasks=["1"])] == ["zoom", "zoom"]


def test_tvbench_errors(tmp_path):
    with pytest.raises(DataError, match="no json/ folder"):
        load_dataset(f"tvbench:{tmp_path}")
    root = _tvbench(tmp_path / "tv", {"object_count": [_item(), _item(answer="up")]})
    bad = only_failure(
        load_dataset(f"tvbench:{root}"), "answer 'up' is not among", "object_count.json item 1"
    )
    assert (bad.id, bad.task) == ("object_count-00001", "Object Count")
    root = _tvbench(tmp_path / "tv2", {"object_count": [{"video": "a.mp4", "question": "q"}]})
    with pytest.raises(DataError, match="object_count.json item 0: missing field 'candidates'"):
        load_dataset(f"tvbench:{root}")  # its only item is malformed: the file is refused


def test_tvbench_empty_task_file_is_an_error(tmp_path):
    """As MVBench, TOMATO and VCGBench: an empty task file is refused, not silently dropped."""
    root = _tvbench(tmp_path / "tv", {"object_count": [_item()], "scene_transition": []})
    with pytest.raises(DataError, match="scene_transition.json: task 'Scene Transition' has no items"):
        load_dataset(f"tvbench:{root}")


def test_tvbench_null_start_end_is_no_bound(tmp_path):
    root = _tvbench(
        tmp_path / "tv",
        {"action_sequence": [_item(start=None, end=None), _item(start=1, end=None), _item(start=1, end=3)]},
    )
    samples = load_dataset(f"tvbench:{root}")
    assert [s.error for s in samples] == [None] * 3
    assert [s.bound for s in samples] == [None, None, (1.0, 3.0)]


def test_tvbench_open_ended_fails_only_the_items_it_cannot_convert(tmp_path):
    """One malformed item (already failed by the loader, or unconvertible to the open-ended
    form) costs only itself, as in plain ``tvbench:``."""
    root = _tvbench(
        tmp_path / "tv",
        {
            "action_localization": [
                _item(
                    q="When does the action 'jump' happen?",
                    cands=("at the end", "throughout"),
                    answer="at the end",
                ),
                _item(q="When does it happen?", cands=("at the end", "throughout"), answer="throughout"),
            ],
            "object_count": [_item(cands=("2", "3"), answer="3"), _item(cands=("two", "3"), answer="3")],
            "moving_direction": [_item(), {"video": "v.mp4", "question": "q?"}],
        },
    )
    samples = load_dataset(f"tvbench_open_ended:{root}")
    assert len(samples) == 6 and {s.source for s in samples} == {"tvbench_open_ended"}
    failed = {s.id: s.error for s in samples if s.error is not None}
    assert set(failed) == {"action_localization-00001", "object_count-00001", "moving_direction-00001"}
    assert (
        "action_localization.json item 1 (sample 'action_localization-00001'): no action"
        in (failed["action_localization-00001"])
    )
    assert "object_count.json item 1" in failed["object_count-00001"]
    assert "digits 0-9" in failed["object_count-00001"]
    assert "moving_direction.json item 1: missing field 'candidates'" in failed["moving_direction-00001"]
    good = {s.id: s for s in samples if s.error is None}
    assert good["action_localization-00000"].meta["answer_prompt"] == "\nThe action 'jump' occurs at the"
    assert good["object_count-00000"].answer_text == "three"


# ----------------------------------------------------------------------------- load_dataset


def test_registry_lists_builtin_datasets():
    assert {"jsonl", "tvbench", "synthetic"} <= set(DATASETS)
    with pytest.raises(VlmflowError, match="unknown dataset 'nope'; known: jsonl, .*synthetic, .*tvbench"):
        load_dataset("nope:/x")


def test_task_selection_and_seeded_subsampling():
    full = load_dataset("synthetic:8")
    assert len(full) == 8 * 6
    by_name = load_dataset("synthetic:8", tasks=["object_count"])
    by_id = load_dataset("synthetic:8", tasks=["3"])  # alphabetical id 3 = object_count
    assert [s.id for s in by_name] == [s.id for s in by_id] == [f"object_count-{i:05d}" for i in range(8)]

    a = load_dataset("synthetic:8", tasks=["object_count", "static_attribute"], samples=3, seed=1)
    b = load_dataset("synthetic:8", tasks=["object_count", "static_attribute"], samples=3, seed=1)
    c = load_dataset("synthetic:8", tasks=["object_count", "static_attribute"], samples=3, seed=2)
    assert [s.id for s in a] == [s.id for s in b] != [s.id for s in c]
    assert [s.task for s in a] == ["object_count"] * 3 + ["static_attribute"] * 3
    ids = [s.id for s in a]
    assert ids == sorted(ids), "subsampling keeps the original order"
    assert len(load_dataset("synthetic:2", samples=5)) == 12


def test_one_task_given_as_text_is_that_task_not_its_letters():
    one = load_dataset("synthetic:2", tasks="object_count")
    assert [s.task for s in one] == ["object_count"] * 2


def test_unknown_or_empty_selection():
    with pytest.raises(DataError, match="no task 'juggling'"):
        load_dataset("synthetic:4", tasks=["juggling"])
    with pytest.raises(DataError, match="no task '9'"):
        load_dataset("synthetic:4", tasks=["9"])
    for bad in (0, -1, 1.5):  # named as the argument, not "task ... has no samples selected"
        with pytest.raises(DataError, match="samples must be a whole number >= 1"):
            load_dataset("synthetic:4", tasks=["object_count"], samples=bad)
    with pytest.raises(DataError, match="no samples"):
        load_dataset("synthetic:0")
    with pytest.raises(DataError, match="expects a number"):
        load_dataset("synthetic:many")
    for bad in (3, None, ["synthetic:1"]):
        with pytest.raises(DataError, match="a dataset is named by text"):
            load_dataset(bad)


def _two_task_copy(root: Path, bench: str, bad: str) -> tuple[str, str, str]:
    """A copy of ``bench`` with one good task file and one whose text is ``bad`` (a stand-in for
    empty, a git-lfs pointer, or every item malformed): (good task, bad task, bad file name)."""
    from vlmflow.data import mvbench

    good_item = {"video": "a.mp4", "question": "Q?", "candidates": ["x", "y"], "answer": "x"}
    if bench in ("tvbench", "tvbench_open_ended"):
        files = ("json/action_count.json", "json/object_count.json", [good_item])
        tasks = ("Action Count", "Object Count")
    elif bench == "mvbench":
        (good_name, good), (bad_name, bad_spec) = list(mvbench.TASKS.items())[:2]
        files = (f"json/{good[0]}", f"json/{bad_spec[0]}", [good_item])
        tasks = (good_name, bad_name)
    elif bench == "tomato":
        item = {"question": "Q?", "options": ["x", "y"], "answer": 0, "key": "a"}
        item["demonstration_type"] = "human"
        files = ("jsons/count.json", "jsons/direction.json", {"1": item})
        tasks = ("Count", "Direction")
    else:
        item = {"Q": "What?", "A": "this", "video_name": "a"}
        files = ("Benchmarking_QA/temporal_qa.json", "Benchmarking_QA/generic_qa.json", [item])
        tasks = ("temporal_qa", "generic_qa")
    (root / files[0]).parent.mkdir(parents=True, exist_ok=True)
    (root / files[0]).write_text(json.dumps(files[2]))
    (root / files[1]).write_text(bad)
    return tasks[0], tasks[1], Path(files[1]).name


BAD_FILES = {
    "empty": "[]",
    "git-lfs pointer": "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
    "every item malformed": '[{"video": "v.mp4"}]',
}


@pytest.mark.parametrize("bad", list(BAD_FILES), ids=str)
@pytest.mark.parametrize("bench", ["tvbench", "tvbench_open_ended", "mvbench", "tomato", "vcgbench"])
def test_a_bad_annotation_file_stops_only_its_own_task(tmp_path, bench, bad):
    """One unreadable, empty or all-malformed task file used to refuse the whole benchmark,
    even under --task selecting another task; now it fails only a selection holding it."""
    text = BAD_FILES[bad] if bench != "tomato" or bad != "empty" else "{}"
    good, broken, name = _two_task_copy(tmp_path, bench, text)
    samples = load_dataset(f"{bench}:{tmp_path}", tasks=[good])
    assert [(s.task, s.error) for s in samples] == [(good, None)]
    for selection in ([broken], [good, broken], None):
        with pytest.raises(DataError, match=f"task {broken!r}: .*{name}"):
            load_dataset(f"{bench}:{tmp_path}", tasks=selection)


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (6.5, 2.0, r"starts after it ends \(start=6.5s > end=2s\)"),
        ("nan", 3, "must be finite seconds"),
        (1, "inf", "must be finite seconds"),
    ],
)
def test_a_bad_window_fails_its_own_item(tmp_path, start, end, match):
    """An inverted or non-finite start/end used to be accepted (one frame, repeated; or a
    cryptic 'cannot convert float NaN to integer' at decode): the item fails alone, naming
    where it is, in jsonl and in the benchmark loaders (shared bound_of)."""
    good = {"id": "ok", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": 0}
    file = _write_jsonl(tmp_path / "qa.jsonl", [good, {**good, "id": "bad", "start": start, "end": end}])
    samples = load_dataset(f"jsonl:{file}")
    assert samples[0].error is None
    bad = only_failure(samples, match, "qa.jsonl:2")
    assert bad.id == "bad"
    items = [_item(start=1, end=3), _item(start=start, end=end)]
    root = _tvbench(tmp_path / "tv", {"action_sequence": items})
    samples = load_dataset(f"tvbench:{root}")
    assert samples[0].bound == (1.0, 3.0)
    only_failure(samples, match, "action_sequence.json item 1")


@pytest.mark.parametrize("field", ["video", "question", "candidates", "answer"])
def test_tvbench_null_field_is_a_missing_field(tmp_path, field):
    """``"video": null`` used to pass as present: the sample got the video path 'None' (or
    the question 'None'); as in the other loaders, null counts as missing."""
    root = _tvbench(tmp_path / "tv", {"object_count": [_item(), _item(**{field: None})]})
    samples = load_dataset(f"tvbench:{root}")
    bad = only_failure(samples, f"missing field '{field}'", "object_count.json item 1")
    assert bad.task == "Object Count"


def test_more_options_than_letters_is_an_error_naming_the_sample(tmp_path):
    """27 options used to load and then crash with IndexError when lettered (A-Z is 26):
    the item fails alone, naming the sample, and a Sample built directly is refused."""
    from vlmflow.sample import Sample

    ok = {"id": "ok", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": 0}
    many = {**ok, "id": "many", "options": [f"o{i}" for i in range(27)], "answer": 26}
    samples = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'qa.jsonl', [ok, many])}")
    bad = only_failure(samples, r"sample 'many' has 27 options; at most 26 can be lettered", "many")
    assert bad.id == "many"
    with pytest.raises(DataError, match="sample 'q' has 30 options"):
        Sample(id="q", question="?", options=tuple("o" * 30))
    assert Sample(id="q", question="?", options=tuple("o" * 26)).letters[-1] == "Z"


def test_jsonl_options_that_carry_their_letters_lose_them(tmp_path):
    """["A. red", "B. blue"] used to be lettered again ("(A) A. red"); the letters are
    stripped by the Video-MME rule, and the answer may be the lettered text, the plain text,
    the letter or an index. Options lettered out of order, or only some, are kept as given."""
    base = {"video": "a.mp4", "question": "Q?", "options": ["A. red", "B) blue", "C.green"]}
    rows = [
        {**base, "id": "text", "answer": "B) blue"},
        {**base, "id": "plain", "answer": "blue"},
        {**base, "id": "letter", "answer": "B"},
        {**base, "id": "index", "answer": 1},
        {**base, "id": "unordered", "options": ["B. red", "A. blue"], "answer": "A. blue"},
        {**base, "id": "partly", "options": ["A. red", "blue"], "answer": "blue"},
    ]
    samples = {s.id: s for s in load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'qa.jsonl', rows)}")}
    for sid in ("text", "plain", "letter", "index"):
        assert samples[sid].error is None, samples[sid].error
        assert samples[sid].options == ("red", "blue", "green"), sid
        assert samples[sid].answer == 1, sid
    assert samples["unordered"].options == ("B. red", "A. blue") and samples["unordered"].answer == 1
    assert samples["partly"].options == ("A. red", "blue") and samples["partly"].answer == 1


def test_jsonl_a_one_letter_answer_that_is_a_letter_and_another_options_text_is_refused(tmp_path):
    """Options ["A. B", "B. A", "C. C"] with answer "A": the letter of option A and the text
    of option B. It was read as option B (the text), then silently as option A (the letter);
    each reading is plausible, so the item fails, naming the sample and what to write. An
    answer whose readings agree ("C"), or with only one reading ("b.", the lettered text), is
    kept. ["A. b", "B. a"] with answer "a" likewise (it was option B, then option A)."""
    base = {"video": "a.mp4", "question": "Which letter?", "options": ["A. B", "B. A", "C. C"]}
    rows = [
        {**base, "id": "a", "answer": "A"},
        {**base, "id": "b", "answer": "b."},
        {**base, "id": "c", "answer": "C"},
        {**base, "id": "text", "answer": "B. A"},
    ]
    samples = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'qa.jsonl', rows)}")
    only_failure(
        samples,
        r"ambiguous one-letter answer 'A': it is the letter of option A \('B'\) and the text of "
        r"option B \('A'\); give the option text or the letter with its text",
        "qa.jsonl:1 (sample 'a')",
    )
    by_id = {s.id: s for s in samples}
    assert by_id["b"].options == ("B", "A", "C")
    assert by_id["b"].answer == 1
    assert by_id["c"].answer == 2
    assert by_id["text"].answer == 1

    base = {"video": "a.mp4", "question": "Which?", "options": ["A. b", "B. a"]}
    rows = [{**base, "id": "lower", "answer": "a"}, {**base, "id": "full", "answer": "B. a"}]
    samples = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'qa2.jsonl', rows)}")
    only_failure(samples, r"ambiguous one-letter answer 'a'", "qa2.jsonl:1 (sample 'lower')")
    assert {s.id: s for s in samples}["full"].answer == 1
    plain = {"video": "a.mp4", "question": "Which?", "options": ["A. red", "B. blue"], "answer": "b"}
    (sample,) = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'qa3.jsonl', [plain])}")
    assert sample.error is None and sample.answer == 1
