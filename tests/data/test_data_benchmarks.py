"""The TOMATO, MVBench, Video-MME, LongVideoBench and VCGBench loaders on tiny copies written
in each benchmark's published layout: fields, paths, bounds, decoded frames, task ids, errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.benchfiles import (
    flat_frames,
    frame_folder,
    lvb_item,
    mvbench_item,
    only_failure,
    tomato_item,
    video,
    videomme_row,
    which_frames,
    write_json,
    write_videomme,
)
from vlmflow.data import DATASETS, load_dataset, load_sample_frames, sample_indices, write_video
from vlmflow.data.videomme import TASKS as VIDEOMME_TASKS
from vlmflow.data.videomme import youtube_id
from vlmflow.errors import DataError

av = pytest.importorskip("av")


def _has_encoder(*names: str) -> bool:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return True
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing encoder
            continue
    return False


def by_task(samples) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in samples:
        out.setdefault(s.task, []).append(s)
    return out


def test_all_loaders_are_registered_with_a_description():
    described = DATASETS.describe()
    for name in ("tvbench", "tomato", "mvbench", "videomme", "longvideobench", "vcgbench"):
        assert name in described and described[name], name


# ----------------------------------------------------------------------------- TOMATO

TOMATO_FILES = {
    "count": "Count",
    "direction": "Direction",
    "rotation": "Rotation",
    "shape&trend": "ShapeTrend",
    "velocity&frequency": "VelocityFrequency",
    "visual_cues": "VisualCues",
}


def tomato(root: Path, with_videos: bool = True) -> Path:
    for stem in TOMATO_FILES:
        write_json(root / "jsons" / f"{stem}.json", {f"{stem}-1": tomato_item(f"{stem}_k1", "object")})
    write_json(
        root / "jsons" / "count.json",
        {"c-1": tomato_item("k1", "human", 0), "c-2": tomato_item("k2", "simulated", 3, reason_type="Count")},
    )
    if with_videos:
        video(root / "videos" / "human" / "k1.mp4", 16)
        video(root / "videos" / "simulated" / "k2.mp4", 3)  # shorter than 8 frames
    return root


def test_tomato_layout_and_frames(tmp_path):
    root = tomato(tmp_path / "TOMATO")
    samples = by_task(load_dataset(f"tomato:{root}"))
    assert list(samples) == sorted(TOMATO_FILES.values())
    c1, c2 = samples["Count"]
    assert (c1.id, c1.options, c1.answer, c1.source) == ("c-1", ("up", "down", "left", "right"), 0, "tomato")
    assert c1.video == str(root / "videos" / "human" / "k1.mp4")
    assert (c2.answer, c2.meta["reason_type"], c2.meta["demonstration_type"]) == (3, "Count", "simulated")
    assert c1.bound is None and c1.answer_text is None
    assert which_frames(load_sample_frames(c1, 8), 16) == sample_indices(16, 8)
    # a video shorter than the frames asked for is fine: frames repeat
    assert which_frames(load_sample_frames(c2, 8), 3) == [0, 0, 0, 1, 1, 1, 2, 2]


def test_tomato_task_ids(tmp_path):
    root = tomato(tmp_path / "TOMATO", with_videos=False)
    for task_id, name in enumerate(sorted(TOMATO_FILES.values())):
        assert {s.task for s in load_dataset(f"tomato:{root}", tasks=[str(task_id)])} == {name}
    picked = load_dataset(f"tomato:{root}", tasks=["ShapeTrend", "1"])
    assert [s.task for s in picked] == ["Direction", "ShapeTrend"]


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (
            {"x": {"question": "q", "options": ["a"], "answer": 0, "key": "k"}},
            "item 'x': missing field 'demo",
        ),
        ({"x": tomato_item("k", answer=4)}, "item 'x': answer 4 is not among candidates"),
        ({"x": tomato_item("k", answer="B")}, "item 'x': answer 'B' must be an integer"),
    ],
)
def test_tomato_bad_item_is_a_failed_sample(tmp_path, items, match):
    file = write_json(tmp_path / "T" / "jsons" / "count.json", {"good": tomato_item("g"), **items})
    bad = only_failure(load_dataset(f"tomato:{tmp_path / 'T'}"), match, str(file))
    assert (bad.id, bad.task) == ("x", "Count")
    write_json(file, items)  # nothing readable: the file is refused
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"tomato:{tmp_path / 'T'}")
    assert f"{file}: none of its 1 items can be read" in str(info.value)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ({}, "task 'Count' has no items"),
        ([tomato_item("k")], "expected a JSON object keyed by id"),
    ],
)
def test_tomato_unreadable_file_is_refused(tmp_path, items, match):
    file = write_json(tmp_path / "T" / "jsons" / "count.json", items)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"tomato:{tmp_path / 'T'}")
    assert str(file) in str(info.value)


def test_tomato_missing_folders(tmp_path):
    with pytest.raises(DataError, match="needs its root folder"):
        load_dataset("tomato:")
    with pytest.raises(DataError, match="root folder not found"):
        load_dataset(f"tomato:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no jsons/ folder"):
        load_dataset(f"tomato:{tmp_path}")


# ----------------------------------------------------------------------------- broken videos


def test_broken_videos_name_the_sample_and_file(tmp_path):
    """Missing, corrupt, truncated and zero-frame videos fail at decoding, naming both."""
    root = tmp_path / "TOMATO"
    items = {f"id-{k}": tomato_item(k, "human") for k in ("gone", "noise", "half", "empty")}
    write_json(root / "jsons" / "count.json", items)
    vids = root / "videos" / "human"
    vids.mkdir(parents=True)
    (vids / "noise.mp4").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    )
    data = write_video(tmp_path / "full.mp4", flat_frames(40), fps=8).read_bytes()
    (vids / "half.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(vids / "empty.mp4"), "w") as out:  # a valid container with no frames
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    samples = {s.id: s for s in load_dataset(f"tomato:{root}")}  # loading does not open videos
    for key, match in [
        ("gone", "not found"),
        ("noise", "cannot decode"),
        ("half", "cannot decode|truncated"),
        ("empty", "empty|no decodable frames|cannot decode"),
    ]:
        with pytest.raises(DataError, match=match) as info:
            load_sample_frames(samples[f"id-{key}"], 8, cache=False)
        message = str(info.value)
        assert f"id-{key}" in message and str(vids / f"{key}.mp4") in message, message


# ----------------------------------------------------------------------------- MVBench


MVBENCH_PREFIXES = {
    "action_sequence.json": "star/Charades_v1_480/",
    "action_antonym.json": "ssv2_video/",
    "fine_grained_pose.json": "nturgbd/",
    "moving_count.json": "clevrer/video_validation/",
    "episodic_reasoning.json": "tvqa/frames_fps3_hq/",
}


def mvbench(root: Path) -> Path:
    j, v = root / "json", root / "video"
    write_json(j / "action_sequence.json", [mvbench_item("s.mp4", start=1.0, end=2.5, answer="left")])
    write_json(j / "action_antonym.json", [mvbench_item("a.webm", start=1.0, end=2.0)])  # not a bounded task
    write_json(j / "fine_grained_pose.json", [mvbench_item("p.avi")])
    write_json(j / "moving_count.json", [mvbench_item("m.gif", answer=" up ")])
    write_json(j / "episodic_reasoning.json", [mvbench_item("clip_00", start=2.0, end=8.0)])
    video(v / "star/Charades_v1_480/s.mp4", 24, fps=8)
    if _has_encoder("libvpx-vp9", "libvpx", "vp9", "vp8"):
        video(v / "ssv2_video/a.webm", 16)
    video(v / "nturgbd/p.avi", 16)
    video(v / "clevrer/video_validation/m.gif", 12, fps=10)
    frame_folder(v / "tvqa/frames_fps3_hq/clip_00", 30)
    return root


def test_mvbench_layout_bounds_and_containers(tmp_path):
    root = mvbench(tmp_path / "MVBench")
    samples = {s.task: s for s in load_dataset(f"mvbench:{root}")}
    assert sorted(samples) == [
        "Action Antonym",
        "Action Sequence",
        "Episodic Reasoning",
        "Fine-grained Pose",
        "Moving Count",
    ]
    for task, s in samples.items():
        name = s.meta["video_name"]
        prefix = MVBENCH_PREFIXES[Path(s.meta["json"]).name]
        assert s.video == str(root / "video" / prefix / name), task
        assert s.source == "mvbench" and s.options == ("left", "right", "up")
    seq, ant, er = samples["Action Sequence"], samples["Action Antonym"], samples["Episodic Reasoning"]
    assert (seq.bound, seq.answer) == ((1.0, 2.5), 0)
    assert ant.bound is None, "Action Antonym is not a bounded task"
    assert (er.bound, er.meta["data_type"], er.meta["folder_fps"]) == ((2.0, 8.0), "frame", 3.0)
    assert samples["Moving Count"].meta["data_type"] == "gif" and samples["Moving Count"].answer == 2

    # bounded mp4: the segment midpoints of (1.0 s, 2.5 s) at 8 fps
    assert which_frames(load_sample_frames(seq, 4), 24) == sample_indices(24, 4, fps=8, bound=(1.0, 2.5))
    assert which_frames(load_sample_frames(samples["Fine-grained Pose"], 4), 16) == sample_indices(16, 4)
    assert which_frames(load_sample_frames(samples["Moving Count"], 4), 12) == sample_indices(12, 4)
    if Path(ant.video).exists():
        assert which_frames(load_sample_frames(ant, 4), 16) == sample_indices(16, 4)
    # frame folder 00001.jpg.. at 3 fps, bounded: positions counted from 0 over the sorted files
    got = which_frames(load_sample_frames(er, 8), 30)
    assert got == sample_indices(30, 8, fps=3, bound=(2.0, 8.0)) == [7, 9, 11, 14, 16, 18, 21, 23]


def test_mvbench_twenty_tasks_and_ids(tmp_path):
    from vlmflow.data.mvbench import TASKS

    assert len(TASKS) == 20
    for file, *_ in TASKS.values():
        write_json(tmp_path / "json" / file, [mvbench_item("x.mp4")])
    names = sorted(TASKS)
    assert sorted({s.task for s in load_dataset(f"mvbench:{tmp_path}")}) == names
    assert names[:3] == ["Action Antonym", "Action Count", "Action Localization"]
    assert {s.task for s in load_dataset(f"mvbench:{tmp_path}", tasks=["7"])} == {names[7]}
    assert {s.task for s in load_dataset(f"mvbench:{tmp_path}", tasks=["Episodic Reasoning"])} == {
        "Episodic Reasoning"
    }
    loc = load_dataset(f"mvbench:{tmp_path}", tasks=["Action Localization"])[0]
    assert loc.video == str(tmp_path / "video" / "sta" / "sta_video" / "x.mp4")


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"video": "b.mp4", "question": "q"}, "missing field 'candidates'"),
        (mvbench_item("b.mp4", answer="down"), "answer 'down' is not among candidates"),
        (mvbench_item("b.mp4", start="soon", end=2), "'start'/'end' must be numbers"),
    ],
)
def test_mvbench_bad_item_is_a_failed_sample(tmp_path, item, match):
    file = write_json(tmp_path / "json" / "action_sequence.json", [mvbench_item("a.mp4"), item])
    bad = only_failure(load_dataset(f"mvbench:{tmp_path}"), match, f"{file} item 1")
    assert (bad.id, bad.task) == ("action_sequence-00001", "Action Sequence")
    write_json(file, [item])  # nothing readable: the file is refused
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"mvbench:{tmp_path}")
    assert f"{file}: none of its 1 items can be read" in str(info.value)


def test_mvbench_empty_task_is_refused(tmp_path):
    file = write_json(tmp_path / "json" / "action_sequence.json", [])
    with pytest.raises(DataError, match="task 'Action Sequence' has no items") as info:
        load_dataset(f"mvbench:{tmp_path}")
    assert str(file) in str(info.value)


# ----------------------------------------------------------------------------- Video-MME


def test_videomme_layout_and_containers(tmp_path):
    root = tmp_path / "Video-MME"
    exts = ["mp4", "avi", "mov", "mkv"]
    rows = [
        videomme_row(f"00{i}-1", "Spatial Perception", f"yt{ext}", "ABCD"[i]) for i, ext in enumerate(exts)
    ]
    rows.append(videomme_row("005-1", "Action Recognition", "ytmissing"))
    write_videomme(root, rows)
    for ext in exts:
        video(root / "data" / f"yt{ext}.{ext}", 12)
    samples = load_dataset(f"videomme:{root}")
    assert [s.id for s in samples] == ["000-1", "001-1", "002-1", "003-1", "005-1"]
    for i, (s, ext) in enumerate(zip(samples, exts, strict=False)):
        assert s.options == ("a cat.", "a dog.", "a bird.", "a fish.")
        assert s.answer == i and s.task == "Spatial Perception" and s.source == "videomme"
        assert s.video == str(root / "data" / f"yt{ext}.{ext}")
        assert s.meta["paper_options"][0] == "A. a cat." and s.meta["youtube_id"] == f"yt{ext}"
        assert which_frames(load_sample_frames(s, 4), 12) == sample_indices(12, 4), ext
    missing = samples[-1]
    assert missing.video == str(root / "data" / "ytmissing.mp4")
    with pytest.raises(DataError, match="005-1.*ytmissing.mp4.*not found|005-1.*not found.*ytmissing"):
        load_sample_frames(missing)


def test_videomme_task_ids(tmp_path):
    rows = [videomme_row(f"{i:03d}-1", task) for i, task in enumerate(reversed(VIDEOMME_TASKS))]
    write_videomme(tmp_path, rows)
    assert {s.task for s in load_dataset(f"videomme:{tmp_path}", tasks=["1"])} == {"Action Recognition"}
    assert {s.task for s in load_dataset(f"videomme:{tmp_path}", tasks=["8"])} == {"Spatial Perception"}
    picked = load_dataset(f"videomme:{tmp_path}", tasks=["11", "OCR Problems"])
    assert sorted(s.task for s in picked) == ["OCR Problems", "Temporal Reasoning"]


def test_youtube_ids():
    assert youtube_id("https://www.youtube.com/watch?v=fFjv93ACGo8") == "fFjv93ACGo8"
    assert youtube_id("https://youtu.be/fFjv93ACGo8") == "fFjv93ACGo8"
    assert youtube_id("https://www.youtube.com/shorts/abc_-1") == "abc_-1"
    assert youtube_id("fFjv93ACGo8") == "fFjv93ACGo8"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"answer": "E"}, "answer 'E' is not among candidates"),
        ({"answer": None}, "missing field 'answer'"),
        ({"task_type": None}, "missing field 'task_type'"),
        ({"options": ["a cat", "B. a dog"]}, "option 0 'a cat' does not start with the letter 'A. '"),
        ({"url": None, "videoID": None}, "missing field 'url'"),
    ],
)
def test_videomme_bad_row_is_a_failed_sample(tmp_path, change, match):
    write_videomme(
        tmp_path, [videomme_row("001-1", "OCR Problems"), videomme_row("001-2", "OCR Problems", **change)]
    )
    file = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    bad = only_failure(load_dataset(f"videomme:{tmp_path}"), match, f"{file} row 1")
    assert bad.id == "001-2"
    write_videomme(tmp_path, [videomme_row("001-2", "OCR Problems", **change)])
    with pytest.raises(DataError, match=match) as info:
        load_dataset(f"videomme:{tmp_path}")
    assert f"{file}: none of its 1 items can be read" in str(info.value)


def test_videomme_missing_or_corrupt_parquet(tmp_path):
    with pytest.raises(DataError, match="has no videomme/test-00000-of-00001.parquet"):
        load_dataset(f"videomme:{tmp_path}")
    bad = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match="cannot read Video-MME annotations .*test-00000-of-00001.parquet"):
        load_dataset(f"videomme:{tmp_path}")


# ----------------------------------------------------------------------------- LongVideoBench

LVB_CATEGORIES = "E2O E3E O2E O3O S2A S2E S2O SAA SOS SSS T2A T2E T2O T3E T3O TAA TOS".split()


def test_longvideobench_layout_and_start_aligned_frames(tmp_path):
    root = tmp_path / "LongVideoBench"
    write_json(root / "lvb_val.json", [lvb_item(0, video_path="abc.mp4", duration=3.0)])
    video(root / "videos" / "abc.mp4", 24, fps=8)
    (s,) = load_dataset(f"longvideobench:{root}")
    assert (s.id, s.task, s.options, s.answer, s.source) == (
        "q0",
        "O2E",
        ("a", "b", "c", "d", "e"),
        2,
        "longvideobench",
    )
    assert s.video == str(root / "videos" / "abc.mp4")
    assert s.meta["frame_policy"] == "lvb" and s.meta["subtitle_path"] == "vid0_en.json"
    assert s.bound == (0.0, 3.0), "the annotation's duration is what the reference samples from"
    # int(3.0) = 3 frames, int(24 / 3) = 8 apart, from the start; padded with the last one
    got = which_frames(load_sample_frames(s, 8, policy=s.meta["frame_policy"]), 24)
    assert got == [0, 8, 16, 16, 16, 16, 16, 16]
    # the other policies are unchanged by a bound that covers the whole video
    assert which_frames(load_sample_frames(s, 8), 24) == sample_indices(24, 8)


def test_longvideobench_task_ids(tmp_path):
    write_json(tmp_path / "lvb_val.json", [lvb_item(i, c) for i, c in enumerate(reversed(LVB_CATEGORIES))])
    for task_id, name in [("2", "O2E"), ("3", "O3O"), ("8", "SOS")]:  # the paper's plots
        assert {s.task for s in load_dataset(f"longvideobench:{tmp_path}", tasks=[task_id])} == {name}


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (lvb_item(1, correct_choice=5), "item 1 \\(id q1\\): answer 5 is not among candidates"),
        (lvb_item(1, candidates="abc"), "item 1 \\(id q1\\): 'candidates' must be a non-empty list"),
        ({**lvb_item(1), "video_path": None}, "item 1 \\(id q1\\): missing field 'video_path'"),
        (
            {k: v for k, v in lvb_item(1).items() if k != "question_category"},
            "missing field 'question_category'",
        ),
        (lvb_item(1, duration=0), "'duration' must be positive"),
    ],
)
def test_longvideobench_bad_item_is_a_failed_sample(tmp_path, item, match):
    file = write_json(tmp_path / "lvb_val.json", [lvb_item(0), item])
    bad = only_failure(load_dataset(f"longvideobench:{tmp_path}"), match, f"{file} item 1")
    assert bad.id == "q1"
    # ids number the 17 published categories: 2 is O2E, the one on disk; 1 (E3E) is missing
    assert {s.task for s in load_dataset(f"longvideobench:{tmp_path}", tasks=["2"])} == {
        lvb_item(0)["question_category"]
    }
    with pytest.raises(DataError, match="task id 1 is 'E3E'.* missing from this copy"):
        load_dataset(f"longvideobench:{tmp_path}", tasks=["1"])
    write_json(file, [lvb_item(0), item][1:])  # the bad item alone (now item 0): refused
    with pytest.raises(DataError, match=match.replace("item 1", "item 0")) as info:
        load_dataset(f"longvideobench:{tmp_path}")
    assert f"{file}: none of its 1 items can be read" in str(info.value)


def test_longvideobench_empty_or_missing(tmp_path):
    with pytest.raises(DataError, match="annotation file not found: .*lvb_val.json"):
        load_dataset(f"longvideobench:{tmp_path}")
    write_json(tmp_path / "lvb_val.json", [])
    with pytest.raises(DataError, match="lvb_val.json: the annotation list has no items"):
        load_dataset(f"longvideobench:{tmp_path}")


# ----------------------------------------------------------------------------- VCGBench


def vcgbench(root: Path) -> Path:
    qa = root / "Benchmarking_QA"
    write_json(qa / "generic_qa.json", [{"Q": "What is shown?", "A": "A dog.", "video_name": "v_mp4"}])
    write_json(
        qa / "temporal_qa.json",
        [
            {"Q": "What happens first?", "A": "It runs.", "video_name": "v_mkv"},
            {"Q": "And then?", "A": "It sits.", "video_name": "v_mp4"},
        ],
    )
    write_json(
        qa / "consistency_qa.json",
        [{"Q1": "What animal?", "Q2": "Which animal is it?", "A": "A dog.", "video_name": "v_mp4"}],
    )
    video(root / "Test_Videos" / "v_mp4.mp4", 12)
    video(root / "Test_Videos" / "v_mkv.mkv", 12)
    return root


def test_vcgbench_open_ended_layout(tmp_path):
    root = vcgbench(tmp_path / "VCGBench")
    samples = by_task(load_dataset(f"vcgbench:{root}"))
    assert list(samples) == ["consistency_qa", "generic_qa", "temporal_qa"]
    first, second = samples["temporal_qa"]
    assert (first.id, first.question, first.answer_text) == (
        "temporal_qa-00000",
        "What happens first?",
        "It runs.",
    )
    assert not first.is_multiple_choice and first.answer is None and first.source == "vcgbench"
    assert first.video == str(root / "Test_Videos" / "v_mkv.mkv")
    assert second.video == str(root / "Test_Videos" / "v_mp4.mp4")
    (cons,) = samples["consistency_qa"]
    assert (cons.question, cons.meta["question_2"], cons.answer_text) == (
        "What animal?",
        "Which animal is it?",
        "A dog.",
    )
    assert which_frames(load_sample_frames(first, 4), 12) == sample_indices(12, 4)
    # the paper's ids: 0 consistency_qa, 1 generic_qa, 2 temporal_qa (its open-ended analysis)
    assert {s.task for s in load_dataset(f"vcgbench:{root}", tasks=["2"])} == {"temporal_qa"}


@pytest.mark.parametrize(
    ("file", "items", "match"),
    [
        ("consistency_qa", [{"Q1": "q", "A": "a", "video_name": "v"}], "item 0: missing field 'Q2'"),
        ("generic_qa", [{"Q": "q", "video_name": "v"}], "item 0: missing field 'A'"),
        ("temporal_qa", [], "task 'temporal_qa' has no items"),
        ("temporal_qa", {"Q": "q"}, "expected a JSON list"),
    ],
)
def test_vcgbench_bad_annotations(tmp_path, file, items, match):
    path = write_json(tmp_path / "Benchmarking_QA" / f"{file}.json", items)
    with pytest.raises(DataError, match=match) as info:  # nothing readable: refused
        load_dataset(f"vcgbench:{tmp_path}")
    assert str(path) in str(info.value)
    if isinstance(items, list) and items:  # beside a good item, a failed sample of its task
        good = {"Q1": "q", "Q2": "q2", "Q": "q", "A": "a", "video_name": "v"}
        write_json(path, [good, *items])
        bad = only_failure(load_dataset(f"vcgbench:{tmp_path}"), match.replace("item 0", "item 1"), str(path))
        assert (bad.id, bad.task) == (f"{file}-00001", file)
