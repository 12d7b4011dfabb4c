"""Train the tiny test model (the earlier demo model, `load_model("tiny")`) on CPU.

    python scripts/train_tiny_model.py            # ~65 min on a busy 2-core CPU

The shipped weights took four runs of it (see docs/tiny_model.md).

The model is a real ``LlavaNextVideoForConditionalGeneration`` (tiny CLIP tower, 8-layer
Llama, word-level tokenizer; see ``vlmflow.models.demo``). The vision tower stays at its
seeded random initialisation and is frozen: random patch embeddings already separate the
flat colours and positions the synthetic videos are made of, so its pooled features are
computed once and only the projector and the language model are trained, on the answer
letter after the paper's prompt (``... ASSISTANT:Best option:(``). The training items use
``option_order="fixed"`` (each task's four options in one canonical order): the letter
then follows from the answer, and the model must read the answer from the video, across
frames for the temporal tasks. Held-out accuracy is measured the way vlmflow reads answers
(``load_model`` -> ``prepare`` -> engine baseline) on the items ``vlmflow demo`` uses, and
written to ``accuracy.json`` beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from vlmflow.data import synthetic
from vlmflow.models.tiny import TINY_DIR, build_demo_model
from vlmflow.prompt import paper_prompt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--per-task", type=int, default=1200, help="training items per task")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    p.add_argument("--data-seed", type=int, default=1000, help="training items (held-out uses seed 0)")
    p.add_argument("--held-out", type=int, default=40, help="held-out items per task")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=TINY_DIR)
    p.add_argument(
        "--init-state", type=Path, help="start from this state dict (with --steps 0: only package it)"
    )
    p.add_argument("--checkpoints", type=Path, help="also save the state dict here at every evaluation")
    return p.parse_args(argv)


class Features:
    """Prompts as token ids, with the frozen tower's pooled features of their videos."""

    def __init__(self, model, processor, samples) -> None:
        tok = processor.tokenizer
        self.ids, self.targets, self.tasks, feats = [], [], [], []
        with torch.no_grad():
            for k in range(0, len(samples), 64):
                chunk = samples[k : k + 64]
                pv = processor.video_processor([list(s.frames) for s in chunk], return_tensors="pt")
                pv = pv["pixel_values_videos"]
                out = model.model.vision_tower(pv.flatten(0, 1), output_hidden_states=True)
                pooled = model.model.vision_resampler(out.hidden_states[-1][:, 1:])
                feats.append(pooled.reshape(len(chunk), -1, pooled.shape[-1]))
        self.features = torch.cat(feats)  # (items, video tokens, vision hidden)
        n_video = self.features.shape[1]
        for s in samples:
            text = paper_prompt(s, "<video>").text.replace("<video>", "<video>" * n_video)
            ids = tok(text)["input_ids"]
            with_letter = tok(text + s.letters[s.answer])["input_ids"]
            assert len(with_letter) == len(ids) + 1, "an option letter must be one token"
            self.ids.append(ids)
            self.targets.append(with_letter[-1])
            self.tasks.append(s.task)
        self.targets_t = torch.tensor(self.targets)


def last_logits(model, processor, data: Features, idx: list[int]) -> torch.Tensor:
    """Next-token logits at each item's last position, ``(len(idx), vocab)``."""
    tok = processor.tokenizer
    lm = model.model.language_model
    n = max(len(data.ids[i]) for i in idx)
    ids = torch.full((len(idx), n), tok.pad_token_id)
    for r, i in enumerate(idx):
        ids[r, : len(data.ids[i])] = torch.tensor(data.ids[i])
    last = torch.tensor([len(data.ids[i]) - 1 for i in idx])
    emb = lm.embed_tokens(ids)
    video = model.model.multi_modal_projector(data.features[idx])
    mask = (ids == model.config.video_token_id)[..., None]
    emb = emb.masked_scatter(mask, video.reshape(-1, video.shape[-1]).to(emb.dtype))
    hidden = lm(inputs_embeds=emb).last_hidden_state  # right padding: causal rows ignore it
    return model.lm_head(hidden[torch.arange(len(idx)), last])


def accuracy(model, processor, data: Features) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for k in range(0, len(data.ids), 64):
            idx = list(range(k, min(k + 64, len(data.ids))))
            pred = last_logits(model, processor, data, idx).argmax(-1).tolist()
            for i, p in zip(idx, pred, strict=True):
                hits.setdefault(data.tasks[i], []).append(p == data.targets[i])
    model.train()
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


def vlmflow_accuracy(path: Path, samples) -> dict[str, float]:
    """Accuracy read exactly as vlmflow reads answers, from the saved checkpoint."""
    from vlmflow.analyses.base import read_answer
    from vlmflow.engine import Engine
    from vlmflow.models import load_model

    adapter = load_model(str(path))
    hits: dict[str, list[bool]] = {}
    for s in samples:
        p = adapter.prepare(s)
        logits = Engine(adapter.language_model(), p.inputs, p.layout).baseline_logits()
        hits.setdefault(s.task, []).append(bool(read_answer(adapter, p, logits).correct))
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model, processor = build_demo_model(args.seed)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    train = Features(
        model, processor, synthetic.generate(args.per_task, seed=args.data_seed, option_order="fixed")
    )
    held_samples = synthetic.generate(args.held_out, seed=0, option_order="fixed")
    held = Features(model, processor, held_samples)
    print(
        f"{len(train.ids)} training items, {len(held.ids)} held out ({time.time() - start:.0f}s)", flush=True
    )

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = 50

    def lr_at(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        return args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cosine)

    if args.init_state:
        model.load_state_dict(torch.load(args.init_state, weights_only=True))
    rng = random.Random(0)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(train.tasks):
        by_task.setdefault(task, []).append(i)
    # Batches draw tasks in proportion to their held-out error (+0.1), re-weighted at every
    # evaluation, so steps go where the model is still wrong.
    weights = {task: 1.0 for task in by_task}
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        tasks = rng.choices(list(weights), weights=list(weights.values()), k=args.batch)
        idx = [rng.choice(by_task[task]) for task in tasks]
        loss = torch.nn.functional.cross_entropy(
            last_logits(model, processor, train, idx), train.targets_t[idx]
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step:5d} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            acc = accuracy(model, processor, held)
            weights = {task: 1.1 - acc[task] for task in by_task}
            print(f"held-out @ {step + 1}: " + "  ".join(f"{t} {a:.2f}" for t, a in acc.items()), flush=True)
            if args.checkpoints:
                args.checkpoints.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), args.checkpoints / f"step-{step + 1}.pt")
    train_seconds = time.time() - t0

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    table = vlmflow_accuracy(args.out, held_samples)
    size_mb = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()) / 2**20
    summary = {
        "held_out_accuracy": table,
        "held_out_items_per_task": args.held_out,
        "held_out": "synthetic.generate(n, seed=0, option_order='fixed')",
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "training_seconds": round(train_seconds),
        "folder_mb": round(size_mb, 2),
    }
    (args.out / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'task':18s} accuracy")
    for task, a in table.items():
        print(f"{task:18s} {a:.3f}")
    print(f"saved to {args.out} ({size_mb:.1f} MB); training {train_seconds:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
