#!/usr/bin/env python
"""Train vlmflow's embedded demo model on the synthetic benchmark (CPU) and save it.

    python scripts/train_demo_model.py                      # the shipped model
    python scripts/train_demo_model.py --steps 300 --out /tmp/demo   # a quick try

The model (``vlmflow.models.demo.build_demo_model``) is a tiny LLaVA-NeXT-Video. It is
trained with the paper's prompt (``vlmflow.prompt.paper_prompt``) to answer the option
letter as the next token after ``Best option:(``; the loss is the cross-entropy of the
correct letter over the whole vocabulary at the last position. Training items come from
``synthetic.generate(..., seed=1000 + k)``; the held-out items are
``synthetic.generate(n, seed=0)`` (what ``vlmflow demo`` runs on), and training items
identical to any held-out item are dropped. The final accuracy is measured the way vlmflow
reads answers: the saved folder is loaded with ``vlmflow.models.load_model``, each sample
goes through ``adapter.prepare`` and ``Engine.baseline_logits``, and an answer is correct
when the argmax over the vocabulary is the correct letter's token id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlmflow.data import synthetic
from vlmflow.models.demo import CLIP_MEAN, CLIP_STD, DEMO_DIR, build_demo_model
from vlmflow.prompt import paper_prompt

TRAIN_SEED0 = 1000  # training items: seeds 1000, 1001, ...; held-out: seed 0
CHUNK = 250  # items per task per generate() call


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batch order")
    p.add_argument("--out", type=Path, default=DEMO_DIR, help="where to save the model and processor")
    p.add_argument("--per-task", type=int, default=3000, help="training items per task")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-per-task", type=int, default=40, help="held-out items per task (seed 0)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--option-order", choices=("fixed", "shuffled"), default="fixed",
                   help="synthetic option order of the training and held-out items (`vlmflow demo` "
                   "uses fixed)")
    p.add_argument("--aux", type=float, default=0.5,
                   help="weight of the auxiliary per-option probe losses (0 disables them)")
    p.add_argument("--content-layer", type=int, default=None,
                   help="residual stream (input of this decoder layer) read by the answer-content probe "
                   "(default num_layers // 2 - 1)")
    p.add_argument("--attention-layer", type=int, default=-1,
                   help="supervise head 0 of this decoder layer to attend from the last token to "
                   "the correct option (-1: off)")
    p.add_argument("--option-layer", type=int, default=None,
                   help="residual stream read by the option probes (default num_layers - 2)")
    p.add_argument("--no-tie", action="store_true", help="do not tie the output head to the embeddings")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def _key(s) -> str:
    h = hashlib.sha1(s.frames.tobytes())
    h.update(json.dumps([s.task, s.question, list(s.options), s.answer]).encode())
    return h.hexdigest()


# The answer's content as classes of a few heads: (offset, size) of each head's logits.
_COLOUR_NAMES = list(synthetic.COLOURS)
HEADS = {
    "direction": (0, 4),
    "count": (4, 4),
    "action": (8, 4),
    "colour": (12, 8),  # the colour the answer names (static colour, first object, scene start)
    "to": (20, 8),  # the scene colour at the end (scene_transition)
}
CONTENT_SIZE = 28


def answer_content(s) -> list[tuple[int, int, int]]:
    """``(offset, size, class)`` of each content head for the correct answer of ``s``."""
    words = s.options[s.answer].split()

    def head(name: str, cls: int) -> tuple[int, int, int]:
        return (*HEADS[name], cls)

    if s.task == "moving_direction":
        return [head("direction", synthetic.DIRECTIONS.index(words[0]))]
    if s.task == "object_count":
        return [head("count", synthetic.COUNTS.index(words[0]))]
    if s.task == "action_antonym":  # "It grows"
        return [head("action", synthetic.ACTIONS.index(words[1]))]
    if s.task == "static_attribute":  # "red"
        return [head("colour", _COLOUR_NAMES.index(words[0]))]
    if s.task == "action_sequence":  # "the red square"
        return [head("colour", _COLOUR_NAMES.index(words[1]))]
    if s.task == "scene_transition":  # "From red to blue"
        return [head("colour", _COLOUR_NAMES.index(words[1])), head("to", _COLOUR_NAMES.index(words[3]))]
    raise ValueError(s.task)


class Encoded:
    """Samples reduced to what a training step needs: token ids, scene, answer id."""

    def __init__(self, tokenizer, num_video_tokens: int, placeholder: str) -> None:
        self.tok = tokenizer
        self.n_video = num_video_tokens
        self.placeholder = placeholder
        self.ids: list[list[int]] = []
        self.scenes: list[dict] = []
        self.targets: list[int] = []
        self.tasks: list[str] = []
        self.option_ends: list[list[int]] = []  # last token of each option's text
        self.answers: list[int] = []
        self.answer_spans: list[tuple[int, int]] = []  # tokens of "(X) text" of the correct option
        self.content: list[list[tuple[int, int, int]]] = []

    def add(self, s) -> None:
        prompt = paper_prompt(s, self.placeholder)
        at = prompt.placeholder_at
        text = prompt.text[:at] + self.placeholder * self.n_video + prompt.text[at + len(self.placeholder):]
        enc = self.tok(text, return_offsets_mapping=True)
        ids = enc["input_ids"]
        shift = (self.n_video - 1) * len(self.placeholder)
        ends, spans = [], []
        for a, b in prompt.options:
            a, b = a + shift, b + shift
            inside = [i for i, (x, y) in enumerate(enc["offset_mapping"]) if y > x and y > a and x < b]
            ends.append(inside[-1])
            spans.append((inside[0], inside[-1] + 1))
        letter = self.tok(text + s.letters[s.answer])["input_ids"]
        assert len(letter) == len(ids) + 1, "option letter is not one token"
        self.ids.append(ids)
        self.scenes.append(s.meta["scene"])
        self.targets.append(letter[-1])
        self.tasks.append(s.task)
        self.option_ends.append(ends)
        self.answers.append(s.answer)
        self.answer_spans.append(spans[s.answer])
        self.content.append(answer_content(s))

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: list[int], size: int, pad_id: int):
        ids = [self.ids[i] for i in idx]
        n = max(map(len, ids))
        input_ids = torch.full((len(ids), n), pad_id, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row)
        last = torch.tensor([len(row) - 1 for row in ids])
        frames = np.stack([synthetic.render(self.scenes[i], size) for i in idx])
        target = torch.tensor([self.targets[i] for i in idx])
        self.last_frames = frames
        return input_ids, pixels(frames), last, target

    def content_targets(self, idx: list[int]) -> list[tuple[int, int, int, int]]:
        """``(row, offset, size, class)`` of every content target of the rows ``idx``."""
        return [(r, *t) for r, i in enumerate(idx) for t in self.content[i]]

    def option_targets(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ends = torch.tensor([self.option_ends[i] for i in idx])
        correct = torch.zeros(ends.shape)
        correct[torch.arange(len(idx)), torch.tensor([self.answers[i] for i in idx])] = 1.0
        return ends, correct


PALETTE = np.array([synthetic.BACKGROUND, *synthetic.COLOURS.values()], dtype=np.uint8)  # (9, 3)


def cell_colours(frames: np.ndarray, grid: int) -> torch.Tensor:
    """Fraction of each palette colour in each cell of a ``grid x grid`` split of every
    frame, in the order of the video tokens (frame, row, column): ``(B, T*grid*grid, 9)``."""
    b, t, h, w, _ = frames.shape
    hit = (frames[..., None, :] == PALETTE).all(-1)  # (B, T, H, W, 9); flat colours: one hit
    cells = hit.reshape(b, t, grid, h // grid, grid, w // grid, len(PALETTE)).mean(axis=(3, 5))
    return torch.from_numpy(cells.reshape(b, t * grid * grid, len(PALETTE))).float()


_MEAN = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)


def pixels(frames: np.ndarray) -> torch.Tensor:
    """``(B, T, H, W, 3)`` uint8 -> the processor's ``pixel_values_videos`` (frames already
    at the processor's size, so resize and crop are identities; checked at start-up)."""
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0
    return (x - _MEAN) / _STD


def check_against_processor(processor, enc: Encoded, samples, every: int) -> None:
    """The training inputs must be what the real processor produces (``enc`` holds
    ``samples`` in order; every ``every``-th one is checked)."""
    for k in range(0, len(samples), every):
        s = samples[k]
        prompt = paper_prompt(s, processor.video_token)
        ref = processor(text=prompt.text, videos=[list(s.frames)], return_tensors="pt")
        ids, pv, _, _ = enc.batch([k], s.frames.shape[1], processor.tokenizer.pad_token_id)
        assert ref["input_ids"][0].tolist() == ids[0].tolist(), f"{s.id}: token ids differ"
        err = (ref["pixel_values_videos"] - pv).abs().max().item()
        assert err < 1e-5, f"{s.id}: pixel values differ by {err}"


def training_items(per_task: int, enc: Encoded, order: str) -> set[str]:
    """Add ``per_task`` items of every task (seeds 1000, 1001, ...) to ``enc``; return
    their keys (to count held-out items that also occur in training)."""
    keys = set()
    k = 0
    while len(enc) < per_task * len(synthetic.TASKS):
        n = min(CHUNK, per_task - k * CHUNK)
        for s in synthetic.generate(n, seed=TRAIN_SEED0 + k, option_order=order):
            enc.add(s)
            keys.add(_key(s))
        k += 1
    return keys


# --------------------------------------------------------------------------- model


def forward(model, input_ids: torch.Tensor, pv: torch.Tensor, last: torch.Tensor, hidden: bool = False):
    """Vocabulary logits at each row's own last token (right padding, causal mask: the
    padding after a row's last token cannot change it) and the residual stream entering
    each decoder layer (if ``hidden``)."""
    out = model.model(
        input_ids=input_ids, pixel_values_videos=pv, use_cache=False, output_hidden_states=hidden
    )
    h = out.last_hidden_state[torch.arange(len(last)), last]
    return model.lm_head(h), (out.hidden_states if hidden else None)


class OptionProbes(torch.nn.Module):
    """Training-only probes on the residual stream at the last token of each option's text:
    is this option the correct one, which letter does it have, and both at once (its letter
    if it is correct, else "none"). They give every option a direct learning signal
    (video -> option tokens, letter -> option tokens), so that the last position only has
    to gather the "answer letter" the options carry; they are not saved."""

    def __init__(self, hidden: int, options: int = 4) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.correct = torch.nn.Linear(hidden, 1)
        self.letter = torch.nn.Linear(hidden, options)
        self.answer = torch.nn.Linear(hidden, options + 1)

    def forward(self, h: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)  # (B, options, d)
        b, n, _ = h.shape
        bce = F.binary_cross_entropy_with_logits(self.correct(h).squeeze(-1), correct)
        letters = torch.arange(n).expand(b, -1)
        ce = F.cross_entropy(self.letter(h).flatten(0, 1), letters.flatten())
        answer = torch.where(correct > 0, letters, torch.full_like(letters, n))
        ce2 = F.cross_entropy(self.answer(h).flatten(0, 1), answer.flatten())
        return bce + ce + ce2


class AttentionCapture:
    """Recomputes one decoder layer's attention pattern for each row's last query (training
    only): the layer's input and rotary embeddings are captured by a forward pre-hook."""

    def __init__(self, layer) -> None:
        self.attn = layer.self_attn
        self.handle = self.attn.register_forward_pre_hook(self._keep, with_kwargs=True)
        self.inputs = None

    def _keep(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.inputs = (hidden, kwargs["position_embeddings"])

    def last_query(self, last: torch.Tensor, head: int) -> torch.Tensor:
        """``(B, N)`` attention probabilities of head ``head`` from each row's last token."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        hidden, (cos, sin) = self.inputs
        b, n, _ = hidden.shape
        a = self.attn
        d = a.head_dim
        q = a.q_proj(hidden).view(b, n, -1, d).transpose(1, 2)
        k = a.k_proj(hidden).view(b, n, -1, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        rows = torch.arange(b)
        q_last = q[rows, head, last]  # (B, d)
        k_head = k[:, head // a.num_key_value_groups]  # (B, N, d)
        scores = torch.einsum("bd,bnd->bn", q_last, k_head) * a.scaling
        future = torch.arange(n)[None, :] > last[:, None]
        return scores.masked_fill(future, float("-inf")).softmax(-1)


class ContentProbe(torch.nn.Module):
    """Training-only probe on the residual stream at the last position: the content of the
    correct answer (direction, count, action, colours), which the last position then
    matches against the options. Not saved."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, CONTENT_SIZE)

    def forward(self, h: torch.Tensor, targets: list[tuple[int, int, int, int]]) -> torch.Tensor:
        logits = self.head(self.norm(h))  # (B, CONTENT_SIZE)
        total = logits.new_zeros(())
        for o, n in HEADS.values():
            mine = [(r, c) for r, o2, _, c in targets if o2 == o]
            if mine:
                rows, cls = torch.tensor(mine).T
                total = total + F.cross_entropy(logits[rows, o : o + n], cls, reduction="sum")
        return total / len(h)


class VideoProbe(torch.nn.Module):
    """Training-only probe on the video tokens entering the language model: the colours
    in the frame cell each token covers (KL to the true fractions). A dense signal for the
    vision tower and projector; not saved."""

    def __init__(self, hidden: int, colours: int = len(PALETTE)) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, colours)

    def forward(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(self.head(self.norm(h)), -1)
        return F.kl_div(logp, target, reduction="none").sum(-1).mean()


@torch.no_grad()
def quick_eval(model, enc: Encoded, pad_id: int, size: int, batch: int = 48) -> dict[str, float]:
    model.eval()
    correct = {t: [] for t in synthetic.TASKS}
    for i in range(0, len(enc), batch):
        idx = list(range(i, min(i + batch, len(enc))))
        ids, pv, last, target = enc.batch(idx, size, pad_id)
        pred = forward(model, ids, pv, last)[0].argmax(-1)
        for j, ok in zip(idx, (pred == target).tolist(), strict=True):
            correct[enc.tasks[j]].append(ok)
    model.train()
    return {t: float(np.mean(v)) for t, v in correct.items() if v}


def adapter_eval(path: Path, samples) -> dict[str, dict[str, float]]:
    """Accuracy through vlmflow's own path: load_model + prepare + Engine baseline."""
    from vlmflow.engine import Engine
    from vlmflow.models import load_model

    adapter = load_model(str(path))
    hits: dict[str, list[bool]] = {}
    for s in samples:
        prepared = adapter.prepare(s)
        engine = Engine(adapter.language_model(), prepared.inputs, prepared.layout)
        pred = int(engine.baseline_logits().argmax())
        hits.setdefault(s.task, []).append(pred == prepared.answer_id)
    table = {t: {"accuracy": float(np.mean(v)), "n": len(v)} for t, v in hits.items()}
    return table


def print_table(table: dict[str, dict[str, float]]) -> None:
    print(f"{'task':<18} {'n':>4} {'accuracy':>9}")
    for task, row in table.items():
        print(f"{task:<18} {row['n']:>4} {row['accuracy']:>9.3f}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()

    model, processor = build_demo_model(seed=args.seed, tie=not args.no_tie)
    n_layers = model.config.text_config.num_hidden_layers
    content_layer = n_layers // 2 - 1 if args.content_layer is None else args.content_layer
    option_layer = n_layers - 2 if args.option_layer is None else args.option_layer
    capture = None
    if args.aux > 0 and args.attention_layer >= 0:
        capture = AttentionCapture(model.model.language_model.layers[args.attention_layer])
    probes = torch.nn.ModuleDict(
        {"options": OptionProbes(model.config.text_config.hidden_size),
         "video": VideoProbe(model.config.text_config.hidden_size),
         "content": ContentProbe(model.config.text_config.hidden_size)}
    )
    grid = (64 // model.config.vision_config.patch_size) // model.config.spatial_pool_stride
    video_id = model.config.video_token_id
    tok = processor.tokenizer
    pad_id = tok.pad_token_id
    size = 64

    # the processor's own video-token count for one synthetic video
    probe = synthetic.generate(1, seed=0)
    n_video = int(
        (processor(text=processor.video_token, videos=[list(probe[0].frames)], return_tensors="pt")
         ["input_ids"] == processor.video_token_id).sum()
    )

    held_out_samples = synthetic.generate(args.eval_per_task, seed=0, option_order=args.option_order)
    held_out = Encoded(tok, n_video, processor.video_token)
    for s in held_out_samples:
        held_out.add(s)
    check_against_processor(processor, held_out, held_out_samples, max(1, args.eval_per_task // 2))

    train = Encoded(tok, n_video, processor.video_token)
    train_keys = training_items(args.per_task, train, args.option_order)
    seen = {t: 0 for t in synthetic.TASKS}
    for s in held_out_samples:
        seen[s.task] += _key(s) in train_keys
    lengths = [len(x) for x in train.ids]
    print(
        f"{len(train)} training items ({len(train_keys)} distinct); held-out items that also occur in "
        f"training: {seen}\n"
        f"{len(held_out)} held-out; sequence length {min(lengths)}-{max(lengths)} "
        f"({n_video} video tokens); {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"setup {time.time() - t_start:.1f}s",
        flush=True,
    )

    params = list(model.parameters()) + (list(probes.parameters()) if args.aux > 0 else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train))
    pos = 0
    model.train()
    t_train = time.time()
    running: dict[str, float] = {}
    run_acc = 0.0
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = rng.permutation(len(train)), 0
        idx = order[pos : pos + args.batch].tolist()
        pos += args.batch
        ids, pv, last, target = train.batch(idx, size, pad_id)
        logits, hidden = forward(model, ids, pv, last, args.aux > 0)
        parts = {"answer": F.cross_entropy(logits, target)}
        if args.aux > 0:
            rows = torch.arange(len(idx))
            ends, correct = train.option_targets(idx)
            parts["options"] = probes["options"](hidden[option_layer][rows[:, None], ends], correct)
            # the answer's content, at the last position and at the end of every option
            where = torch.cat([last[:, None], ends], 1)  # (B, 1 + options)
            h = hidden[content_layer][rows[:, None], where].flatten(0, 1)
            content = [(r * where.shape[1] + j, *t) for r, *t in train.content_targets(idx)
                       for j in range(where.shape[1])]
            parts["content"] = probes["content"](h, content)
            video = hidden[0][ids == video_id].view(len(idx), -1, hidden[0].shape[-1])
            parts["video"] = probes["video"](video, cell_colours(train.last_frames, grid))
            if capture is not None:  # one head of one late layer reads the correct option
                p = capture.last_query(last, head=0)
                span = torch.zeros_like(p, dtype=torch.bool)
                for r, i in enumerate(idx):
                    a, b = train.answer_spans[i]
                    span[r, a:b] = True
                parts["attention"] = -torch.log((p * span).sum(-1) + 1e-6).mean()
        loss = parts["answer"] + args.aux * sum(v for k, v in parts.items() if k != "answer")
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run_acc += (logits.argmax(-1) == target).float().mean().item()
        if (step + 1) % args.log_every == 0:
            n = args.log_every
            losses = "  ".join(f"{k} {v / n:.3f}" for k, v in running.items())
            print(
                f"step {step + 1:5d}  train acc {run_acc / n:.3f}  losses: {losses}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t_train:.0f}s",
                flush=True,
            )
            running, run_acc = {}, 0.0
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = quick_eval(model, held_out, pad_id, size)
            cells = "  ".join(f"{t[:10]} {a:.2f}" for t, a in acc.items())
            print(f"  held-out @ {step + 1}: {cells}  | min {min(acc.values()):.3f}", flush=True)
    train_seconds = time.time() - t_train

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)

    t_eval = time.time()
    table = adapter_eval(out, held_out_samples)
    overall = float(np.mean([row["accuracy"] for row in table.values()]))
    print(f"\nheld-out accuracy (synthetic.generate({args.eval_per_task}, seed=0, "
          f"option_order={args.option_order!r}), through load_model + prepare + Engine; "
          f"{time.time() - t_eval:.0f}s)")
    print_table(table)
    print(f"{'overall':<18} {sum(r['n'] for r in table.values()):>4} {overall:>9.3f}")
    other_order = "shuffled" if args.option_order == "fixed" else "fixed"
    other = adapter_eval(out, synthetic.generate(args.eval_per_task, seed=0, option_order=other_order))
    print(f"\nfor reference, option_order={other_order!r} (not trained on):")
    print_table(other)
    report = {
        "held_out": {
            "generator": "vlmflow.data.synthetic.generate",
            "num_per_task": args.eval_per_task,
            "seed": 0,
            "option_order": args.option_order,
        },
        "per_task": table,
        "overall": overall,
        "other_option_order": {"option_order": other_order, "per_task": other},
        "held_out_items_seen_in_training": seen,
        "training": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "per_task": args.per_task,
            "option_order": args.option_order,
            "aux_weight": args.aux,
            "items": len(train),
            "seed": args.seed,
            "train_seeds_from": TRAIN_SEED0,
            "threads": args.threads,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "torch": torch.__version__,
        },
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=1) + "\n")
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    print(f"\nsaved to {out} ({size_mb:.1f} MB); training {train_seconds:.0f}s, "
          f"total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
