"""The synthetic benchmark: determinism, balance, vocabulary, and that time is needed.

The single-frame argument: for a temporal item, a second valid item of the same task
exists whose *set of single frames* is identical but whose answer differs (the same video
played backwards), so no model that looks at one frame at a time can beat chance on both.
For object counting, every frame shows at most one object whatever the count.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vlmflow.data import load_dataset, load_sample_frames
from vlmflow.data.synthetic import (
    COLOURS,
    TASKS,
    TEMPORAL_TASKS,
    answer_of,
    generate,
    render,
    tokenize,
    vocabulary,
    write_tvbench,
)


@pytest.fixture(scope="module")
def items():
    return generate(8, seed=3)


def _by_task(samples, task):
    return [s for s in samples if s.task == task]


def _reversed(scene):
    return {"background": scene["background"][::-1], "objects": scene["objects"][::-1]}


def _frame_multiset(frames):
    return Counter(f.tobytes() for f in frames)


def test_shapes_ids_and_consistency(items):
    assert TASKS == tuple(sorted(TASKS)) and "static_attribute" not in TEMPORAL_TASKS
    assert [s.task for s in items] == [t for t in TASKS for _ in range(8)]
    for s in items:
        assert s.frames.shape == (8, 64, 64, 3) and s.frames.dtype == np.uint8
        assert s.id == f"{s.task}-{s.meta['index']:05d}" and s.source == "synthetic"
        assert len(s.options) == 4 == len(set(s.options))
        assert s.options[s.answer] == answer_of(s.task, s.meta["scene"])
        np.testing.assert_array_equal(render(s.meta["scene"], 64), s.frames)
    small = generate(1, num_frames=6, size=32)
    assert all(s.frames.shape == (6, 32, 32, 3) for s in small)


def test_deterministic_per_seed_and_task(items):
    again = generate(8, seed=3)
    other = generate(8, seed=4)
    for a, b in zip(items, again, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert (a.question, a.options, a.answer) == (b.question, b.options, b.answer)
    assert any(
        not np.array_equal(a.frames, c.frames) or a.options != c.options
        for a, c in zip(items, other, strict=True)
    )
    # a task's items do not depend on which other tasks are generated
    alone = generate(8, seed=3, tasks=["scene_transition"])
    assert [(s.id, s.options) for s in alone] == [
        (s.id, s.options) for s in _by_task(items, "scene_transition")
    ]


def test_answers_balanced(items):
    for task in TASKS:
        letters = Counter(s.answer_letter for s in _by_task(items, task))
        assert letters == {"A": 2, "B": 2, "C": 2, "D": 2}, task
    for task in ("moving_direction", "object_count", "action_antonym"):
        answers = Counter(s.options[s.answer] for s in _by_task(items, task))
        assert sorted(answers.values()) == [2, 2, 2, 2], (task, answers)


def test_vocabulary_covers_every_text(items):
    vocab = set(vocabulary())
    for s in items:
        for text in (s.question, *s.options):
            assert set(tokenize(text)) <= vocab, text
    assert {"red", "square", "circle", "triangle", "left", "From", "?"} <= vocab


@pytest.mark.parametrize(
    ("task", "flip"),
    [
        ("moving_direction", {"left": "right", "right": "left", "up": "down", "down": "up"}),
        ("scene_transition", None),
        ("action_sequence", None),
        (
            "action_antonym",
            {
                "It grows": "It shrinks",
                "It shrinks": "It grows",
                "It appears": "It disappears",
                "It disappears": "It appears",
            },
        ),
    ],
)
def test_temporal_task_not_decided_by_single_frames(items, task, flip):
    for s in _by_task(items, task):
        scene = s.meta["scene"]
        back = _reversed(scene)
        frames_back = render(back, 64)
        np.testing.assert_array_equal(frames_back, s.frames[::-1])
        assert _frame_multiset(frames_back) == _frame_multiset(s.frames)
        answer, answer_back = s.options[s.answer], answer_of(task, back)
        assert answer_back != answer and answer_back in s.options, s.id
        if flip is not None:
            assert answer_back == flip[answer]
        if task == "scene_transition":
            a, b = s.meta["params"]["from"], s.meta["params"]["to"]
            assert answer_back == f"From {b} to {a}"
        if task == "action_sequence":
            assert answer_back == s.meta["params"]["second"]


def _colours_in(frame) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(frame.reshape(-1, 3), axis=0)} - {(0, 0, 0)}


def test_action_sequence_never_shows_both_objects(items):
    for s in _by_task(items, "action_sequence"):
        assert all(len(_colours_in(f)) <= 1 for f in s.frames), s.id


def test_object_count_frames_show_at_most_one_object(items):
    max_per_frame = {}
    for s in _by_task(items, "object_count"):
        k = s.meta["params"]["count"]
        per_frame = [len(_colours_in(f)) for f in s.frames]
        assert max(per_frame) == 1 and all(len(o) <= 1 for o in s.meta["scene"]["objects"])
        distinct = set().union(*(_colours_in(f) for f in s.frames))
        assert len(distinct) == k == int(s.options[s.answer])
        max_per_frame.setdefault(k, set()).add(max(per_frame))
    # every count looks the same frame by frame: the most objects in one frame is always 1
    assert max_per_frame == {1: {1}, 2: {1}, 3: {1}, 4: {1}}


def test_static_control_is_answered_by_any_single_frame(items):
    for s in _by_task(items, "static_attribute"):
        answer = s.options[s.answer]
        option_rgb = {o: COLOURS[o] for o in s.options}
        for t, frame in enumerate(s.frames):
            seen = {o for o, rgb in option_rgb.items() if rgb in _colours_in(frame)}
            assert seen == {answer}, (s.id, t)
            one = {
                "background": [s.meta["scene"]["background"][t]],
                "objects": [s.meta["scene"]["objects"][t]],
            }
            assert answer_of("static_attribute", one) == answer


def test_write_tvbench_round_trip(tmp_path):
    samples = generate(2, seed=5)
    root = write_tvbench(samples, tmp_path / "synthetic-tvbench", fps=8)
    assert (root / "json" / "moving_direction.json").is_file()
    assert (root / "video" / "moving_direction" / "moving_direction-00000.mp4").is_file()
    back = load_dataset(f"tvbench:{root}")
    assert [(s.id, s.task, s.question, s.options, s.answer) for s in back] == [
        (s.id, s.task, s.question, s.options, s.answer) for s in samples
    ]
    for orig, read in zip(samples, back, strict=True):
        assert read.source == "tvbench" and read.frames is None
        frames = load_sample_frames(read, 8, policy="linspace")
        assert frames.shape == orig.frames.shape
        diff = np.abs(frames.astype(int) - orig.frames.astype(int)).mean()
        assert diff < 6, f"{read.id}: decoded frames differ by {diff:.1f} levels on average"
    assert load_dataset(f"tvbench:{root}", tasks=["2"])[0].task == "moving_direction"


@pytest.mark.parametrize("spec", ["synthetic:2:fixed", "synthetic:3", "synthetic:1:shuffled"])
def test_the_manifests_generator_parameters_regenerate_the_samples(spec: str) -> None:
    """The provenance of a synthetic run names the generator's arguments; calling the
    generator with them gives exactly the run's samples (``synthetic:2:fixed`` was recorded
    as 20 shuffled items per task)."""
    from vlmflow.provenance import data_fingerprint, samples_hash

    samples = load_dataset(spec)
    recorded = data_fingerprint(spec, samples, 0)
    generator = {k: v for k, v in recorded["generator"].items() if k != "function"}
    assert samples_hash(generate(**generator)) == recorded["samples_sha256"] == samples_hash(samples)
