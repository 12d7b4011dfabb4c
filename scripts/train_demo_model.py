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
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def _key(s) -> str:
    h = hashlib.sha1(s.frames.tobytes())
    h.update(json.dumps([s.task, s.question, list(s.options), s.answer]).encode())
    return h.hexdigest()


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

    def add(self, s) -> None:
        prompt = paper_prompt(s, self.placeholder)
        at = prompt.placeholder_at
        text = prompt.text[:at] + self.placeholder * self.n_video + prompt.text[at + len(self.placeholder):]
        ids = self.tok(text)["input_ids"]
        letter = self.tok(text + s.letters[s.answer])["input_ids"]
        assert len(letter) == len(ids) + 1, "option letter is not one token"
        self.ids.append(ids)
        self.scenes.append(s.meta["scene"])
        self.targets.append(letter[-1])
        self.tasks.append(s.task)

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
        return input_ids, pixels(frames), last, target


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


def training_items(per_task: int, held_out: set[str], enc: Encoded) -> int:
    dropped = 0
    k = 0
    while len(enc) < per_task * len(synthetic.TASKS):
        n = min(CHUNK, per_task - len(enc) // len(synthetic.TASKS))
        for s in synthetic.generate(n, seed=TRAIN_SEED0 + k):
            if _key(s) in held_out:
                dropped += 1
                continue
            enc.add(s)
        k += 1
        if k > 10_000:
            raise RuntimeError("could not generate enough distinct training items")
    return dropped


# --------------------------------------------------------------------------- model


def last_logits(model, input_ids: torch.Tensor, pv: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits at each row's own last token (right padding, causal mask: the
    padding after a row's last token cannot change it)."""
    hidden = model.model(input_ids=input_ids, pixel_values_videos=pv, use_cache=False).last_hidden_state
    h = hidden[torch.arange(len(last)), last]
    return model.lm_head(h)


@torch.no_grad()
def quick_eval(model, enc: Encoded, pad_id: int, size: int, batch: int = 48) -> dict[str, float]:
    model.eval()
    correct = {t: [] for t in synthetic.TASKS}
    for i in range(0, len(enc), batch):
        idx = list(range(i, min(i + batch, len(enc))))
        ids, pv, last, target = enc.batch(idx, size, pad_id)
        pred = last_logits(model, ids, pv, last).argmax(-1)
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

    model, processor = build_demo_model(seed=args.seed)
    tok = processor.tokenizer
    pad_id = tok.pad_token_id
    size = 64

    # the processor's own video-token count for one synthetic video
    probe = synthetic.generate(1, seed=0)
    n_video = int(
        (processor(text=processor.video_token, videos=[list(probe[0].frames)], return_tensors="pt")
         ["input_ids"] == processor.video_token_id).sum()
    )

    held_out_samples = synthetic.generate(args.eval_per_task, seed=0)
    held_out_keys = {_key(s) for n in {8, 20, 40, args.eval_per_task} for s in synthetic.generate(n, seed=0)}
    held_out = Encoded(tok, n_video, processor.video_token)
    for s in held_out_samples:
        held_out.add(s)
    check_against_processor(processor, held_out, held_out_samples, max(1, args.eval_per_task // 2))

    train = Encoded(tok, n_video, processor.video_token)
    dropped = training_items(args.per_task, held_out_keys, train)
    lengths = [len(x) for x in train.ids]
    print(
        f"{len(train)} training items ({dropped} identical to held-out items dropped), "
        f"{len(held_out)} held-out; sequence length {min(lengths)}-{max(lengths)} "
        f"({n_video} video tokens); {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"setup {time.time() - t_start:.1f}s",
        flush=True,
    )

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

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
    running, run_acc = 0.0, 0.0
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = rng.permutation(len(train)), 0
        idx = order[pos : pos + args.batch].tolist()
        pos += args.batch
        ids, pv, last, target = train.batch(idx, size, pad_id)
        logits = last_logits(model, ids, pv, last)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        run_acc += (logits.argmax(-1) == target).float().mean().item()
        if (step + 1) % args.log_every == 0:
            k = args.log_every
            print(
                f"step {step + 1:5d}  loss {running / k:.4f}  train acc {run_acc / k:.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t_train:.0f}s",
                flush=True,
            )
            running, run_acc = 0.0, 0.0
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
    print(f"\nheld-out accuracy (synthetic.generate({args.eval_per_task}, seed=0), through "
          f"load_model + prepare + Engine; {time.time() - t_eval:.0f}s)")
    print_table(table)
    print(f"{'overall':<18} {sum(r['n'] for r in table.values()):>4} {overall:>9.3f}")
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    report = {
        "held_out": {"generator": "vlmflow.data.synthetic.generate", "num_per_task": args.eval_per_task, "seed": 0},
        "per_task": table,
        "overall": overall,
        "training": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "per_task": args.per_task,
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
