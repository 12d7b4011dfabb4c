"""vlmflow in a notebook: load -> probe -> knockout -> sweep -> lens -> attention.

Runs on the embedded demo model in well under a minute on a CPU; put a checkpoint folder or
a hub id in ``vlmflow.load`` (and ``device="cuda", dtype="bfloat16"``) for a real model.
Each ``# %%`` cell is one step; run the file as a script or cell by cell.
"""

# %% Load a model once; every probe below reuses it. Layers are 0-based throughout (0 .. L-1).
import vlmflow

model = vlmflow.load("demo")
L = model.num_layers
print(model)

# %% Probe one input: a held-out synthetic clip whose answer needs the frames' order.
sample = vlmflow.load_dataset("synthetic:1:fixed", tasks=["moving_direction"])[0]
probe = model.probe(sample)  # prompt="paper", num_frames=8 are probe settings
print(probe, "|", sample.question, sample.options, "answer:", sample.answer_letter)
print(
    "the model answers", probe.answer.letter, {k: round(v, 3) for k, v in probe.answer.probabilities.items()}
)
print(
    "token groups:",
    {name: spans[0] for name, spans in probe.groups.items() if name in ("video", "question", "last")},
)

# %% Knockout: forbid the last token to read the video in the middle layers, exactly.
cut = probe.knockout("video->last", layers=range(L // 4, 3 * L // 4))
print(
    "video -/-> last in the middle layers:", cut.letter, round(cut.p_gt, 3), "vs", round(probe.answer.p_gt, 3)
)
cuts = probe.knockout(["question->last", "video->question"])  # several plans in one batch
print("question -/-> last:", cuts[0].letter, "| video -/-> question:", cuts[1].letter)

# %% Sweep: cross-frame attention cut in a window of 3 layers around each layer.
df = probe.sweep("cross-frame", window=3)
print(df[["condition", "layer", "blocked_layers", "rel_pred"]].to_string(index=False))
worst = df.loc[df["rel_pred"].idxmin()]
print(f"cutting cross-frame attention hurts most around layer {int(worst.layer)}: {worst.rel_pred:+.1f}%")

# %% Logit lens: what the last position would answer after each layer.
lens = probe.lens(layers=range(-1, L), positions="last", k=1)
print("top-1 token at the last position, embeddings then layer by layer:", [t[0][0] for t in lens.tokens])
video = probe.lens(layers=[L // 2], positions="video", k=1).to_frame()
print(
    "most common lens words on the video tokens at layer",
    L // 2,
    ":",
    video["token"].value_counts().head(5).to_dict(),
)

# %% Attention: how much the last token attends to each frame, with and without a cut.
layout = probe.layout
no_question = probe.plan("question->last", layers=range(L - 1))  # a Plan, blocked below the last layer
for name, plan in (("baseline", None), ("question -/-> last", no_question)):
    weights = probe.attention(layers=[L - 1], queries="last", plan=plan)[L - 1]["last"]
    per_frame = [round(float(weights[s.start : s.end].sum()), 3) for s in layout.frames]
    print(f"{name:18s} last token -> frames at layer {L - 1}:", per_frame)

# %% The residual stream itself, for your own reads: (tokens, hidden) per layer.
print("residual stream after the last layer:", tuple(probe.resid[L - 1].shape))
