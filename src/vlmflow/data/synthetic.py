"""The built-in synthetic temporal VideoQA benchmark (``synthetic`` / ``synthetic:N``).

Small rendered videos (default 8 frames of 64x64 RGB) of coloured shapes on a plain
background, with four-option questions in the style of TVBench's temporal tasks. It
exists so that every analysis can run end to end without downloading a benchmark, and
so that a tiny model can be trained on a closed vocabulary (:func:`vocabulary`).

Design rules:

* **Deterministic.** Each task draws from its own generator seeded by ``(seed, task)``,
  so a task's items do not change when other tasks are requested.
* **Balanced.** The correct letter cycles over A-D (shuffled), and so does the answer
  class where a task has one (direction, count, action); with a multiple of 4 items per
  task both are exactly balanced.
* **Temporal tasks need time.** Every temporal item is built so that no single frame
  decides its answer: reversing the frames of a moving-direction, action-sequence,
  scene-transition or action-antonym video gives a video of the same kind whose answer
  is another of its options, while the set of single frames is unchanged; an
  object-count video shows each object in a single frame, one object per frame whatever
  the count (and, with 7 or more frames, an empty frame between consecutive objects).
  ``static_attribute`` is the control: its answer is visible in every frame.

Each Sample's ``meta["scene"]`` describes what is drawn in every frame (background colour,
and per object its colour, shape, centre and radius in units of the frame side), so
:func:`render` can redraw it at any size and :func:`answer_of` can read the answer off it.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, VlmflowError
from ..sample import Sample
from .registry import DATASETS, published_tasks

TASKS = (
    "action_antonym",
    "action_sequence",
    "moving_direction",
    "object_count",
    "scene_transition",
    "static_attribute",
)
"""Task names, in alphabetical order (so the paper's task-id convention applies)."""

TEMPORAL_TASKS = tuple(t for t in TASKS if t != "static_attribute")
"""Tasks whose answer no single frame determines."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "cyan": (40, 215, 225),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (0, 0, 0)  # black: not a colour word, so never an answer
DIRECTIONS = ("left", "right", "up", "down")
ACTIONS = ("grows", "shrinks", "appears", "disappears")
COUNTS = ("1", "2", "3", "4")
NUM_OPTIONS = 4
DEFAULT_PER_TASK = 20

_Q_DIRECTION = "Which direction does the {obj} move?"
_Q_SEQUENCE = "Which object appears first?"
_Q_COUNT = "How many objects appear in the video?"
_Q_SCENE = "How does the scene change?"
_Q_ANTONYM = "What happens to the {obj}?"
_Q_STATIC = "What colour is the object?"
_O_OBJECT = "the {colour} {shape}"
_O_SCENE = "From {a} to {b}"
_O_ACTION = "It {action}"
# The canonical options of option_order="fixed": each task's four classes.
FIXED_COLOURS = ("red", "green", "blue", "yellow")
FIXED_OBJECTS = (("red", "square"), ("green", "circle"), ("blue", "triangle"), ("yellow", "square"))
FIXED_SCENES = (("red", "blue"), ("blue", "red"), ("green", "yellow"), ("yellow", "green"))
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}

_TOKEN = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- public API


def generate(
    num_per_task: int,
    seed: int = 0,
    tasks: list[str] | None = None,
    num_frames: int = 8,
    size: int = 64,
    option_order: str = "shuffled",
) -> list[Sample]:
    """``num_per_task`` rendered items for each of ``tasks`` (default: all of :data:`TASKS`).

    ``option_order="shuffled"`` places the answer at a balanced letter among shuffled
    distractors. ``"fixed"`` lists every task's four options in one canonical order (the
    four classes of the task), so the letter follows from the answer alone and is balanced
    because the classes are; a model then needs the video but not to bind option texts to
    letters (the embedded demo model is trained this way).

    Samples carry ``frames`` ``(num_frames, size, size, 3)`` uint8, ``source="synthetic"``,
    ids like ``moving_direction-00012`` and ``meta`` with the scene and generating
    parameters. The same arguments always give the same samples.
    """
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise DataError(f"unknown synthetic task(s) {unknown}; known: {', '.join(TASKS)}")
    if num_frames < 4:
        raise VlmflowError(f"the synthetic benchmark needs at least 4 frames, got {num_frames}")
    if size < 16:
        raise VlmflowError(f"the synthetic benchmark needs frames of at least 16 px, got {size}")
    if num_per_task < 0:
        raise VlmflowError(f"num_per_task must be >= 0, got {num_per_task}")
    if option_order not in ("shuffled", "fixed"):
        raise VlmflowError(f"option_order must be 'shuffled' or 'fixed', got {option_order!r}")
    fixed = option_order == "fixed"
    out: list[Sample] = []
    for task in names:
        rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
        positions = rng.permutation(np.resize(np.arange(NUM_OPTIONS), num_per_task))
        classes = rng.permutation(np.resize(np.arange(4), num_per_task))
        make = _MAKERS[task]
        for i in range(num_per_task):
            scene, question, answer, distractors, params = make(rng, num_frames, int(classes[i]), fixed)
            if answer_of(task, scene) != answer:  # the oracle and the generator must agree
                raise AssertionError(f"synthetic {task} item {i}: scene does not match answer")
            if fixed:
                options = FIXED_OPTIONS[task]
                if answer not in options or set(distractors) - set(options):
                    raise AssertionError(f"synthetic {task} item {i}: options outside the fixed set")
            else:
                options = _place(answer, distractors, int(positions[i]), rng)
            out.append(
                Sample(
                    id=f"{task}-{i:05d}",
                    question=question,
                    options=options,
                    answer=options.index(answer),
                    task=task,
                    source="synthetic",
                    frames=render(scene, size),
                    meta={
                        "seed": seed,
                        "index": i,
                        "num_frames": num_frames,
                        "size": size,
                        "params": params,
                        "scene": scene,
                        "option_order": option_order,
                    },
                )
            )
    return out


def render(scene: dict[str, Any], size: int = 64) -> np.ndarray:
    """Draw a scene: ``(T, size, size, 3)`` uint8 RGB, hard-edged, one flat colour per object."""
    grid = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    yy, xx = grid[0], grid[1]
    frames = np.empty((len(scene["background"]), size, size, 3), dtype=np.uint8)
    for t, (bg, objects) in enumerate(zip(scene["background"], scene["objects"], strict=True)):
        frames[t] = COLOURS.get(bg, BACKGROUND)
        for obj in objects:
            frames[t][_mask(obj, xx, yy)] = COLOURS[obj["colour"]]
    return frames


def answer_of(task: str, scene: dict[str, Any]) -> str:
    """The answer text a scene implies, read off the scene alone (the task's oracle).

    Used by the generator as a consistency check and by tests to show that reversed
    videos have other answers.
    """
    objects = scene["objects"]
    if task == "moving_direction":
        track = [o for frame in objects for o in frame]
        dx = track[-1]["x"] - track[0]["x"]
        dy = track[-1]["y"] - track[0]["y"]
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"
    if task == "action_sequence":
        first: dict[tuple[str, str], int] = {}
        for t, frame in enumerate(objects):
            for o in frame:
                first.setdefault((o["colour"], o["shape"]), t)
        colour, shape = min(first, key=first.__getitem__)
        return _O_OBJECT.format(colour=colour, shape=shape)
    if task == "object_count":
        return str(len({(o["colour"], o["shape"]) for frame in objects for o in frame}))
    if task == "scene_transition":
        return _O_SCENE.format(a=scene["background"][0], b=scene["background"][-1])
    if task == "action_antonym":
        begin, end = objects[0], objects[-1]
        if not begin:
            return _O_ACTION.format(action="appears")
        if not end:
            return _O_ACTION.format(action="disappears")
        grows = end[0]["r"] > begin[0]["r"]
        return _O_ACTION.format(action="grows" if grows else "shrinks")
    if task == "static_attribute":
        return next(o["colour"] for frame in objects for o in frame)
    raise DataError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")


def vocabulary() -> list[str]:
    """Every token of every question and option the generator can produce, sorted.

    Tokens are words and single punctuation marks, split by :func:`tokenize`; case is
    kept ("From" and "It" start options). A word-level tokenizer built on this covers the
    whole synthetic benchmark.
    """
    texts = [_Q_SEQUENCE, _Q_COUNT, _Q_SCENE, _Q_STATIC, *DIRECTIONS, *COUNTS, *COLOURS]
    for colour in COLOURS:
        for shape in SHAPES:
            obj = _O_OBJECT.format(colour=colour, shape=shape)
            texts += [obj, _Q_DIRECTION.format(obj=obj), _Q_ANTONYM.format(obj=obj)]
        for other in COLOURS:
            texts.append(_O_SCENE.format(a=colour, b=other))
    texts += [_O_ACTION.format(action=a) for a in ACTIONS]
    return sorted({tok for text in texts for tok in tokenize(text)})


def tokenize(text: str) -> list[str]:
    """Split text into the word and punctuation tokens :func:`vocabulary` lists."""
    return _TOKEN.findall(text)


def write_tvbench(samples: list[Sample], root: str | Path, fps: float = 8) -> Path:
    """Write samples in TVBench's layout so ``load_dataset("tvbench:<root>")`` reads them back.

    Writes ``json/<task>.json`` (``video``, ``question``, ``candidates``, ``answer`` text,
    plus ``id``) and ``video/<task>/<id>.mp4`` (PyAV, via ``write_video``), and a
    ``vlmflow.json`` naming each file's task, so the tasks keep their own names instead of
    TVBench's ("moving_direction", not "Moving Direction").
    """
    from .video import load_sample_frames, write_video

    root = Path(root)
    by_task: dict[str, list[Sample]] = {}
    for s in samples:
        if not s.is_multiple_choice or s.answer is None:
            raise DataError(f"sample {s.id!r}: write_tvbench needs multiple-choice samples")
        by_task.setdefault(s.task, []).append(s)
    (root / "json").mkdir(parents=True, exist_ok=True)
    stems: dict[str, str] = {}
    for task, group in by_task.items():
        stem = _safe(task)
        stems[stem] = task
        items = []
        for s in group:
            name = f"{_safe(s.id)}.mp4"
            write_video(root / "video" / stem / name, load_sample_frames(s), fps=fps)
            item = {
                "id": s.id,
                "video": name,
                "question": s.question,
                "candidates": list(s.options),
                "answer": s.options[s.answer],
            }
            if s.bound is not None:
                item["start"], item["end"] = s.bound
            items.append(item)
        (root / "json" / f"{stem}.json").write_text(json.dumps(items, indent=1) + "\n")
    manifest = {"format": "tvbench", "written_by": "vlmflow.data.synthetic", "tasks": stems}
    (root / "vlmflow.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return root


published_tasks("synthetic", TASKS)


@DATASETS.register("synthetic", help="built-in synthetic temporal VideoQA (synthetic:N per task)")
def load_synthetic(arg: str) -> list[Sample]:
    """Built-in synthetic temporal VideoQA; ``synthetic:N`` gives N items per task (seed 0),
    ``synthetic:N:fixed`` lists each task's options in one canonical order."""
    return generate(**parse_spec(arg))


def parse_spec(arg: str) -> dict[str, Any]:
    """The :func:`generate` arguments of a ``synthetic[:N[:ORDER]]`` spec's argument (the part
    after ``synthetic:``): ``num_per_task`` and ``option_order``. The loader and the run's
    provenance both read the spec here, so the manifest records what was generated.

    >>> parse_spec("2:fixed")
    {'num_per_task': 2, 'option_order': 'fixed'}
    >>> parse_spec("")
    {'num_per_task': 20, 'option_order': 'shuffled'}
    """
    arg = arg.strip()
    count, _, order = arg.partition(":")
    if count and not (count.isascii() and count.isdigit()):
        raise DataError(f"synthetic:N[:fixed] expects a number of items per task, got {arg!r}")
    if order not in ("", "fixed", "shuffled"):
        raise DataError(f"synthetic:N:ORDER expects fixed or shuffled, got {order!r}")
    return {"num_per_task": int(count) if count else DEFAULT_PER_TASK, "option_order": order or "shuffled"}


def _safe(name: str) -> str:
    """A file-name-safe version of a task name or sample id."""
    return re.sub(r"[^\w.-]+", "_", name)


# --------------------------------------------------------------------------- drawing


def _mask(obj: dict[str, Any], xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    dx, dy, r = xx - obj["x"], yy - obj["y"], obj["r"]
    shape = obj["shape"]
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise DataError(f"unknown shape {shape!r}")


def _obj(colour: str, shape: str, x: float, y: float, r: float) -> dict[str, Any]:
    return {"colour": colour, "shape": shape, "x": round(x, 4), "y": round(y, 4), "r": round(r, 4)}


def _scene(num_frames: int, background: str = "black") -> dict[str, Any]:
    return {"background": [background] * num_frames, "objects": [[] for _ in range(num_frames)]}


def _place(answer: str, distractors: list[str], position: int, rng) -> tuple[str, ...]:
    """Options with the answer at ``position`` and the distractors shuffled around it."""
    others = [distractors[i] for i in rng.permutation(len(distractors))]
    options = others[:position] + [answer] + others[position:]
    if len(set(options)) != NUM_OPTIONS:
        raise AssertionError(f"synthetic options are not {NUM_OPTIONS} distinct: {options}")
    return tuple(options)


def _colours(rng, k: int) -> list[str]:
    return [str(c) for c in rng.choice(list(COLOURS), size=k, replace=False)]


def _shape(rng) -> str:
    return str(rng.choice(SHAPES))


def _spot(rng, r: float) -> tuple[float, float]:
    """A centre that keeps an object of radius ``r`` inside the frame."""
    lo, hi = r + 0.02, 1 - r - 0.02
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------- tasks
# Each maker returns (scene, question, answer text, 3 distractor texts, params).


def _moving_direction(rng, num_frames: int, cls: int, fixed: bool = False):
    direction = DIRECTIONS[cls]
    colour, shape = _colours(rng, 1)[0], _shape(rng)
    r = float(rng.uniform(0.07, 0.10))
    length = float(rng.uniform(0.5, 0.65))  # 2-2.6 cells of a 4 x 4 pooled grid
    # The start is uniform over the positions that keep the whole path inside the frame,
    # so the object's position in any one frame is equally likely under either direction.
    lo = r + 0.02
    start = float(rng.uniform(lo, 1 - lo - length))
    across = float(rng.uniform(lo, 1 - lo))
    scene = _scene(num_frames)
    forward = direction in ("right", "down")
    for t in range(num_frames):
        step = length * t / (num_frames - 1)
        along = start + step if forward else start + length - step
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        scene["objects"][t].append(_obj(colour, shape, x, y, r))
    obj = _O_OBJECT.format(colour=colour, shape=shape)[len("the ") :]
    question = _Q_DIRECTION.format(obj=obj)
    params = {"direction": direction, "colour": colour, "shape": shape, "length": length}
    return scene, question, direction, [d for d in DIRECTIONS if d != direction], params


def _action_sequence(rng, num_frames: int, cls: int, fixed: bool = False):
    if fixed:  # the first object is class cls, the second another of the fixed four
        order = [cls, *(int(j) for j in rng.permutation([j for j in range(4) if j != cls]))]
        colours = [FIXED_OBJECTS[j][0] for j in order]
        shapes = [FIXED_OBJECTS[j][1] for j in order]
    else:
        colours = _colours(rng, 4)  # distinct colours make the four descriptions distinct
        shapes = [_shape(rng) for _ in colours]
    texts = [_O_OBJECT.format(colour=c, shape=s) for c, s in zip(colours, shapes, strict=True)]
    # First object somewhere in [0, cut), second in [cut, T): never in the same frame.
    cut = int(rng.integers(1, num_frames))
    a0 = int(rng.integers(0, cut))
    a1 = int(rng.integers(a0, cut))
    b0 = int(rng.integers(cut, num_frames))
    b1 = int(rng.integers(b0, num_frames))
    scene = _scene(num_frames)
    for k, (lo, hi) in enumerate(((a0, a1), (b0, b1))):
        r = float(rng.uniform(0.08, 0.13))
        x, y = _spot(rng, r)
        for t in range(lo, hi + 1):
            scene["objects"][t].append(_obj(colours[k], shapes[k], x, y, r))
    params = {"first": texts[0], "second": texts[1], "frames": [[a0, a1], [b0, b1]]}
    # Distractors: the later object (the answer of the reversed video) and two absent ones.
    return scene, _Q_SEQUENCE, texts[0], texts[1:], params


def _object_count(rng, num_frames: int, cls: int, fixed: bool = False):
    k = cls + 1
    colours = _colours(rng, k)
    # Each object shows in a single frame, and consecutive objects are separated by at least
    # one empty frame where the video is long enough: the count is the number of frames
    # that hold an object, which no single frame tells.
    sep = 1 if 2 * k - 1 <= num_frames else 0
    gaps = rng.multinomial(num_frames - k - sep * (k - 1), np.full(k + 1, 1 / (k + 1)))
    gaps[1:k] += sep
    scene = _scene(num_frames)
    t = int(gaps[0])
    spans = []
    for j in range(k):
        r = float(rng.uniform(0.08, 0.14))
        x, y = _spot(rng, r)
        scene["objects"][t].append(_obj(colours[j], _shape(rng), x, y, r))
        spans.append([t, t])
        t += 1 + int(gaps[j + 1])
    answer = str(k)
    params = {"count": k, "frames": spans}
    return scene, _Q_COUNT, answer, [c for c in COUNTS if c != answer], params


def _scene_transition(rng, num_frames: int, cls: int, fixed: bool = False):
    a, b, z1, z2 = _colours(rng, 4)
    if fixed:
        a, b = FIXED_SCENES[cls]
    quarter = max(1, num_frames // 4)
    change = int(rng.integers(quarter, num_frames - quarter + 1))
    change = min(max(change, 1), num_frames - 1)
    scene = _scene(num_frames)
    scene["background"] = [a] * change + [b] * (num_frames - change)
    answer = _O_SCENE.format(a=a, b=b)
    distractors = [
        _O_SCENE.format(a=b, b=a),
        _O_SCENE.format(a=a, b=z1),
        _O_SCENE.format(a=z2, b=b),
    ]
    if fixed:  # the reverse (the reversed video's answer) is among the fixed options
        distractors = [_O_SCENE.format(a=x, b=y) for x, y in FIXED_SCENES if (x, y) != (a, b)]
    params = {"from": a, "to": b, "change_frame": change}
    return scene, _Q_SCENE, answer, distractors, params


def _action_antonym(rng, num_frames: int, cls: int, fixed: bool = False):
    action = ACTIONS[cls]
    colour, shape = _colours(rng, 1)[0], _shape(rng)
    small, large = float(rng.uniform(0.05, 0.08)), float(rng.uniform(0.16, 0.22))
    x, y = _spot(rng, large)
    scene = _scene(num_frames)
    change = int(rng.integers(1, num_frames))
    steady = float(rng.uniform(small, large))  # appear/disappear at a size growth also passes
    for t in range(num_frames):
        frac = t / (num_frames - 1)
        if action == "grows":
            r = small + (large - small) * frac
        elif action == "shrinks":
            r = large - (large - small) * frac
        elif (action == "appears") == (t >= change):
            r = steady
        else:
            continue
        scene["objects"][t].append(_obj(colour, shape, x, y, r))
    obj = _O_OBJECT.format(colour=colour, shape=shape)[len("the ") :]
    answer = _O_ACTION.format(action=action)
    distractors = [_O_ACTION.format(action=a) for a in ACTIONS if a != action]
    params = {"action": action, "colour": colour, "shape": shape, "change_frame": change}
    return scene, _Q_ANTONYM.format(obj=obj), answer, distractors, params


def _static_attribute(rng, num_frames: int, cls: int, fixed: bool = False):
    colour, *others = _colours(rng, 4)
    if fixed:
        colour, others = FIXED_COLOURS[cls], [c for c in FIXED_COLOURS if c != FIXED_COLOURS[cls]]
    shape = _shape(rng)
    r = float(rng.uniform(0.08, 0.14))
    x, y = _spot(rng, r + 0.03)
    scene = _scene(num_frames)
    for t in range(num_frames):
        jx, jy = (float(v) for v in rng.uniform(-0.03, 0.03, size=2))
        scene["objects"][t].append(_obj(colour, shape, x + jx, y + jy, r))
    params = {"colour": colour, "shape": shape}
    return scene, _Q_STATIC, colour, others, params


FIXED_OPTIONS: dict[str, tuple[str, ...]] = {
    "action_antonym": tuple(_O_ACTION.format(action=a) for a in ACTIONS),
    "action_sequence": tuple(_O_OBJECT.format(colour=c, shape=sh) for c, sh in FIXED_OBJECTS),
    "moving_direction": DIRECTIONS,
    "object_count": COUNTS,
    "scene_transition": tuple(_O_SCENE.format(a=a, b=b) for a, b in FIXED_SCENES),
    "static_attribute": FIXED_COLOURS,
}

_MAKERS = {
    "action_antonym": _action_antonym,
    "action_sequence": _action_sequence,
    "moving_direction": _moving_direction,
    "object_count": _object_count,
    "scene_transition": _scene_transition,
    "static_attribute": _static_attribute,
}
