"""Writes the three user notebooks from the cell texts below, outputs cleared, so they stay reviewable.

    python3 notebooks/build_notebooks.py          # rewrite notebooks/*.ipynb
    python3 notebooks/build_notebooks.py --check  # exit 1 if a committed notebook differs from this file

Each notebook has one code cell tagged `parameters` (the papermill convention): a runner may add a cell
after it that overrides those values, as `tests/test_notebooks.py` does with a tiny configuration.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------- 01 inference
INFERENCE = [
    ("md", """
# Label a video with a pretrained MTV

This notebook labels a video with a Multiview Transformer (MTV). It

1. loads a model: a zoo name (`mtv zoo list` shows them), a preset directory, a `.keras` file or an
   `http(s)://` URL of a preset tarball;
2. shows the frames the model actually sees (the test *views*: clips x spatial crops);
3. runs `mtv.predict` and plots the top-5 class probabilities.

The default model, `camera-motion`, ships inside the package: a small MTV that tells how the camera moves
(static, pan, tilt, zoom; slow or fast). Nothing is downloaded for it. The same steps on the command line:
`mtv predict VIDEO --model=camera-motion --views=1x1`.
"""),
    ("code", """
# Parameters (a runner such as papermill may override this cell).
model_handle = "camera-motion"  # zoo name, preset directory, .keras file or http(s) URL
video = None  # a video file or a directory of frames; None: a real clip from shared/data/videos
views = None  # test views "CLIPSxCROPS", e.g. "4x3"; None: the model's own
top = 5  # how many labels to show
shared_dir = None  # the project's shared folder; None: $MTV_SHARED_DIR, else ../shared beside the repository
""", ["parameters"]),
    ("md", """
## Setup

Everything runs on the CPU if there is no GPU. `shared_dir` holds the real example clips (see
`shared/data/videos/SOURCES.md` for where they come from and their licences).
"""),
    ("code", """
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mtv
from mtv.data.transforms import video_to_eval_views
from mtv.data.video import load_video
from mtv.eval.evaluate import eval_dataset_configs
from mtv.eval.prediction import parse_views, predict

REPO = Path(mtv.__file__).resolve().parents[1]
shared = Path(shared_dir or os.environ.get("MTV_SHARED_DIR") or REPO.parent / "shared")
if video is None:
    video = sorted((shared / "data" / "videos").glob("*.mp4"))[0]
video = Path(video)
print("video:", video)
"""),
    ("md", """
## 1. Load the model

`mtv.load` accepts every kind of handle. A preset carries its metadata: the class names and the
preprocessing it was trained with (frames, stride, resize, crop, test views).
"""),
    ("code", """
model = mtv.load(model_handle)
meta = getattr(model, "metadata", None) or {}
frames, height, width, _ = model.input_shapes["rgb"]
print(f"model {meta.get('name') or model_handle}: input {frames} frames of {height}x{width}, "
      f"{model.spec['num_classes']} classes")
print("preprocessing:", meta.get("preprocessing"))
"""),
    ("md", """
## 2. The frames the model sees

A video is decoded, its smaller side resized to `min_resize`, and cut into test *views*: `clips`
evenly spaced clips of `num_frames` frames taken every `stride` frames, each with 1 or 3 square crops.
These are exactly the inputs `predict` feeds the model (values in [-1, 1]; shown here back in [0, 1]).
"""),
    ("code", """
clips_crops = parse_views(views) if views else (None, None)
dc = eval_dataset_configs(model=model, clips=clips_crops[0], crops=clips_crops[1])
decoded = load_video(video, min_resize=2 * dc["min_resize"])
inputs = video_to_eval_views(decoded, num_frames=dc["num_frames"], stride=dc["stride"],
                             num_clips=dc["num_test_clips"], crop_size=dc["crop_size"],
                             min_resize=dc["min_resize"], three_crops=dc["do_three_spatial_crops"],
                             zero_centering=dc["zero_centering"])
print(f"decoded {decoded.num_frames} frames at {decoded.fps:.1f} fps -> views {inputs.shape}")

shown_views = inputs[:4]  # at most 4 views x 8 frames, to keep the figure readable
frame_ids = np.linspace(0, inputs.shape[1] - 1, min(8, inputs.shape[1])).round().astype(int)
fig, axes = plt.subplots(len(shown_views), len(frame_ids), squeeze=False,
                         figsize=(1.6 * len(frame_ids), 1.7 * len(shown_views)))
for row, view in enumerate(shown_views):
    for col, t in enumerate(frame_ids):
        image = (view[t] + 1) / 2 if dc["zero_centering"] else view[t]
        axes[row, col].imshow(np.clip(image, 0, 1))
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
        if row == 0:
            axes[row, col].set_title(f"frame {t}", fontsize=8)
    axes[row, 0].set_ylabel(f"view {row}", fontsize=8)
fig.suptitle(video.name, fontsize=9)
fig.tight_layout()
fig.savefig("sampled_frames.png", dpi=80)
plt.show()
"""),
    ("md", """
## 3. Predict

`mtv.predict` averages the logits of all views (Scenic's `logits_mean` rule) and returns the top-k
labels per head (one head, `logits`, for most models; `verb` and `noun` for Epic-Kitchens models).
The result is a plain dict; it is saved as `prediction.json`.
"""),
    ("code", """
result = predict(video, model=model, views=views, top=top)
print(f"{Path(result['video']).name}: {result['views']} views, rule {result['rule']}")
for head, labels in result["heads"].items():
    if len(result["heads"]) > 1:  # multi-head models (e.g. Epic-Kitchens verb / noun); one head is 'logits'
        print(f"[{head}]")
    for entry in labels:
        print(f"  {entry['probability']:6.1%}  {entry['label']}")
Path("prediction.json").write_text(json.dumps(result, indent=1))
"""),
    ("code", """
heads = result["heads"]
fig, axes = plt.subplots(1, len(heads), squeeze=False, figsize=(5 * len(heads), 0.5 * top + 1.2))
for ax, (head, labels) in zip(axes[0], heads.items(), strict=True):
    ax.barh([entry["label"] for entry in labels], [entry["probability"] for entry in labels], color="tab:blue")
    ax.invert_yaxis()  # best label on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(f"top-{top}" + ("" if head == "logits" else f" {head}"))  # 'logits': the single head
fig.tight_layout()
fig.savefig("top5.png", dpi=80)
plt.show()
"""),
    ("md", """
## Next

* Try another clip (`video = ...`) or more views (`views = "4x3"`): more views cost more compute and
  usually help a little.
* `02_finetune.ipynb` adapts a pretrained model to your own labels.
"""),
]

# -------------------------------------------------------------------------------------- 02 fine-tune
FINETUNE = [
    ("md", """
# Fine-tune an MTV on your own labelled videos

Starting from a pretrained MTV, this notebook

1. makes a small set of *labelled videos* (stand-ins for your own: video files plus a CSV of
   `path,label`);
2. converts them to TFRecords, the format the `mtv` training and evaluation pipelines read;
3. trains in two phases: first only the new classification head (`output_projection`) with the
   backbone frozen, then the whole model at a lower learning rate;
4. plots the learning curves, evaluates on held-out videos, and exports a TF SavedModel, checking
   that the exported model gives the same outputs as the Keras model.

**The data.** Your labels need not be the model's. Here the pretrained `camera-motion` model knows 13
classes (pan left slow, zoom in fast, ...); the new task has 4 coarser ones: `static`, `pan`, `tilt`,
`zoom`. The videos are rendered by `mtv.data.synthetic`, which moves a virtual camera over the real clips in
`shared/data/videos`, so every label is known. To use your own videos, write a CSV with the columns
`path,label` (label = class index) and skip step 1.
"""),
    ("code", """
# Parameters (a runner such as papermill may override this cell).
model_handle = "camera-motion"  # the pretrained model: zoo name, preset directory, .keras file or URL
shared_dir = None  # the project's shared folder; None: $MTV_SHARED_DIR, else ../shared beside the repository
num_train_videos = 160
num_val_videos = 48
batch_size = 16
epochs_frozen = 4  # phase 1: only the head trains
epochs_full = 4  # phase 2: every weight trains
learning_rate_frozen = 0.05
learning_rate_full = 0.005
seed = 0
""", ["parameters"]),
    ("code", """
import csv
import json
import math
import os
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np

import mtv
from mtv.data import synthetic
from mtv.data import prepare, tfrecord
from mtv.eval.evaluate import eval_dataset_configs, evaluate_data, format_metrics
from mtv.io.hub import load_serving
from mtv.eval.prediction import predict

REPO = Path(mtv.__file__).resolve().parents[1]
shared = Path(shared_dir or os.environ.get("MTV_SHARED_DIR") or REPO.parent / "shared")
keras.utils.set_random_seed(seed)
CLASSES = ["static", "pan", "tilt", "zoom"]  # your label set
"""),
    ("md", """
## 1. Load the pretrained model with a new head

`num_classes` different from the model's replaces the classification head with a new, zero-initialised
one (as Scenic does) and keeps every other weight. The preprocessing of the pretrained model (frames,
stride, resize, crop) is kept for the new task.
"""),
    ("code", """
model = mtv.load(model_handle, num_classes=len(CLASSES))
model.metadata = {**(getattr(model, "metadata", None) or {}), "name": "my-camera-motion", "class_names": CLASSES}
dc = eval_dataset_configs(model=model)
num_frames = dc["num_frames"]
print(f"new head: {model.spec['num_classes']} classes {CLASSES}")
print("preprocessing:", {k: dc[k] for k in ("num_frames", "stride", "min_resize", "crop_size")})
"""),
    ("md", """
## 2. Your labelled videos

Each clip is written as a small video file under `my_videos/` and listed in `train.csv` / `val.csv`
(`path,label,label_name`). The validation clips come from a video never used for training
(`flipping_pancake`), so the held-out accuracy measures generalisation to new footage.
"""),
    ("code", """
def make_videos(split: str, count: int, split_seed: int) -> Path:
    \"\"\"Renders `count` clips with balanced coarse labels, writes them as .avi files and a CSV.\"\"\"
    sources = synthetic.video_sources(shared / "data" / "videos", split="heldout" if split == "val" else "train",
                                      min_resize=3 * dc["min_resize"])
    rng = np.random.default_rng(split_seed)
    coarse = np.arange(count) % len(CLASSES)
    by_kind = {k: [i for i, name in enumerate(synthetic.CLASSES) if synthetic.Motion.of(name).kind == k]
               for k in CLASSES}
    fine = np.array([rng.choice(by_kind[CLASSES[c]]) for c in coarse])
    clips, _ = synthetic.generate(count, sources=sources, labels=fine, seed=split_seed,
                                  num_frames=num_frames * dc["stride"], size=dc["min_resize"])
    folder = Path("my_videos") / split
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = Path(f"{split}.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "label_name"])
        for i, (clip, label) in enumerate(zip(clips, coarse, strict=True)):
            path = synthetic.write_video(folder / f"{split}_{i:04d}.avi", clip)
            writer.writerow([path.as_posix(), int(label), CLASSES[label]])  # relative to the CSV
    return csv_path


train_csv = make_videos("train", num_train_videos, seed)
val_csv = make_videos("val", num_val_videos, seed + 1)
print(open(train_csv).read().splitlines()[:4])
"""),
    ("md", """
## 3. TFRecords

`mtv.data.prepare.prepare` (the `mtv data prepare` command) checks every CSV row, decodes each video
and writes `tf.train.SequenceExample`s in the DMVR / MediaSequence layout: JPEG frames plus the label
(for clips already in memory, `mtv.data.tfrecord.write_tfrecords` with `ClipExample`s does the same).
`mtv.data.tfrecord.make_dataset` then samples clips, crops, flips and normalises them to [-1, 1].
Horizontal flips are fine for these labels; turn `random_flip` off if yours have left/right classes.
"""),
    ("code", """
train_shards = prepare.prepare(train_csv, "tfrecords", name="train", num_classes=len(CLASSES),
                               progress=False).shards
val_shards = prepare.prepare(val_csv, "tfrecords", name="val", num_classes=len(CLASSES), progress=False).shards
print([p.name for p in train_shards + val_shards])

train_configs = {**dc, "random_flip": True}
train_ds = tfrecord.make_dataset(train_shards, dataset_configs=train_configs, is_train=True,
                                 batch_size=batch_size, num_classes=len(CLASSES), seed=seed)
one_view = {**dc, "num_test_clips": 1, "do_three_spatial_crops": False}  # one centre view per video
val_ds = tfrecord.make_dataset(val_shards, dataset_configs=one_view, is_train=False, batch_size=batch_size,
                               num_classes=len(CLASSES)).map(lambda x, y: (x[:, 0], y))
steps_per_epoch = max(num_train_videos // batch_size, 1)
validation_steps = math.ceil(num_val_videos / batch_size)  # every held-out video once
x, y = next(iter(train_ds))
print("a training batch:", x.shape, "labels", y.shape)
"""),
    ("md", """
## 4. Phase 1: train the head, backbone frozen

Only the weights of `output_projection` are trainable; the pretrained features stay fixed, so a few
epochs fit the new head without disturbing them. (Freezing is done per weight, not per layer, because
the CLS tokens belong to the model itself.) Training uses SGD with momentum, gradient clipping and
softmax cross-entropy, as Scenic does. XLA (`jit_compile`) is off: on a CPU and a short run, compiling
costs more than it saves.
"""),
    ("code", """
def compile_model(learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9, global_clipnorm=1.0),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=False)


for weight in model.weights:
    weight.trainable = weight.path.split("/")[-2] == "output_projection"
backbone_before = [w.numpy().copy() for w in model.non_trainable_weights]
print(f"trainable: {sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} weights "
      f"({[w.path for w in model.trainable_weights]}); frozen: "
      f"{sum(int(np.prod(w.shape)) for w in model.non_trainable_weights):,}")
compile_model(learning_rate_frozen)
# The datasets shuffle and repeat themselves, hence shuffle=False and the explicit step counts.
frozen = model.fit(train_ds, epochs=epochs_frozen, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
                   validation_steps=validation_steps, shuffle=False, verbose=2)
frozen_now = model.non_trainable_weights
unchanged = all(np.array_equal(a, w.numpy()) for a, w in zip(backbone_before, frozen_now, strict=True))
print("backbone unchanged by phase 1:", unchanged)
assert unchanged
"""),
    ("md", """
## 5. Phase 2: fine-tune everything

Every weight is unfrozen and the model is recompiled (Keras needs that after changing `trainable`)
with a lower learning rate, so the pretrained features adapt gently.
"""),
    ("code", """
for weight in model.weights:
    weight.trainable = True
compile_model(learning_rate_full)
full = model.fit(train_ds, epochs=epochs_frozen + epochs_full, initial_epoch=epochs_frozen,
                 steps_per_epoch=steps_per_epoch, validation_data=val_ds, validation_steps=validation_steps,
                 shuffle=False, verbose=2)
"""),
    ("md", """
## 6. Learning curves

Loss and accuracy per epoch, on the training batches and on the held-out videos, for both phases.
"""),
    ("code", """
history = {key: frozen.history[key] + full.history[key] for key in frozen.history}
epochs = np.arange(1, len(history["loss"]) + 1)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
    ax.plot(epochs, history[metric], "o-", label="train")
    ax.plot(epochs, history[f"val_{metric}"], "s--", label="held-out")
    ax.axvspan(0.5, epochs_frozen + 0.5, color="0.9", label="head only (frozen backbone)")
    ax.set_xlabel("epoch")
    ax.set_title(metric)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("learning_curves.png", dpi=80)
plt.show()
Path("history.json").write_text(json.dumps({"epochs_frozen": epochs_frozen, "epochs_full": epochs_full,
                                            **{k: [float(v) for v in vs] for k, vs in history.items()}}))
"""),
    ("md", """
## 7. Evaluate

`mtv.eval.evaluate.evaluate_data` scores every held-out video with the model's test views and reports
top-1 accuracy (the `mtv evaluate` command does the same). With 4 classes, chance is 25 %.
"""),
    ("code", """
evaluation = evaluate_data(model, "tfrecords/val-*.tfrecord", dataset_configs=dc)
print(format_metrics(evaluation))
predicted = evaluation.outputs["logits"].argmax(1)
confusion = np.zeros((len(CLASSES), len(CLASSES)), int)
np.add.at(confusion, (evaluation.labels["logits"], predicted), 1)
print("confusion (rows: true, columns: predicted):", CLASSES)
print(confusion)
"""),
    ("md", """
## 8. Save and export

* A **preset** directory (weights, spec and metadata with the class names) reloads with
  `mtv.load("my_camera_motion")` and works with `mtv predict --model=my_camera_motion`.
* A **SavedModel** (`mtv.export`, the `mtv export` command) serves without the `mtv` package: signature
  `serving_default` takes float frames in [-1, 1], `serving_uint8` raw uint8 frames of any size. It loads
  with `tf.saved_model.load` or `tensorflow_hub`.

The reloaded SavedModel must give the Keras model's outputs on the same inputs.
"""),
    ("code", """
preset_dir = mtv.save_preset(model, "my_camera_motion", metadata=model.metadata)
export_dir = mtv.export(model, "exported_model")
print("preset:", preset_dir, "| SavedModel:", sorted(p.name for p in export_dir.iterdir()))

serving = load_serving(export_dir)
x, _ = next(iter(val_ds))
expected = model(x, training=False).numpy()
served = serving.serving_default(x)
np.testing.assert_allclose(served["logits"].numpy(), expected, atol=1e-4, rtol=1e-4)
print("SavedModel logits match the Keras model: max |diff| =",
      float(np.abs(served["logits"].numpy() - expected).max()))
"""),
    ("code", """
example = sorted(Path("my_videos/val").glob("*.avi"))[0]
prediction = predict(example, model=mtv.load(preset_dir), top=2)
print(example.name, "->", [(e["label"], round(e["probability"], 3)) for e in prediction["heads"]["logits"]])
"""),
    ("md", """
## Next

* Longer runs, mixup, learning-rate schedules, checkpoints and resuming: `mtv train --config=...` with
  `config.init_from` pointing at a pretrained model (see `configs/` and `mtv/training/trainer.py`).
* `01_inference.ipynb` labels any video with the preset saved here (`model_handle = "my_camera_motion"`).
"""),
]

# ------------------------------------------------------------------------------------ 03 Epic ensemble
EPIC = [
    ("md", """
# Evaluate and ensemble several models on Epic-Kitchens-100

The Epic-Kitchens-100 action-recognition recipe: score each model on the validation split, search the
weights of a score-level ensemble on validation, then fuse the test-set scores with those weights and
write the challenge submission.

> **The model scores in this notebook are simulated.** The Epic-Kitchens videos (about 700 GB) are not
> available here, so no model can actually be run on them. Each "model" below is a set of verb and noun
> scores generated from the real validation ground truth plus noise of different strengths; the
> narration ids, labels, tail classes and unseen participants are the real ones (read at run time from
> the official CSVs in `shared/data/epic_kitchens`, CC BY-NC 4.0). The numbers therefore show how the
> tools work, **not** how well any model does. With real models you would get each results file from
> `mtv evaluate --out=model_a.npz` and everything from step 2 on stays the same.
"""),
    ("code", """
# Parameters (a runner such as papermill may override this cell).
shared_dir = None  # the project's shared folder; None: $MTV_SHARED_DIR, else ../shared beside the repository
seed = 0
search_grid = 10  # the search tries each model's share of a head's weights at k / search_grid
test_segments = None  # None: all test segments; a number keeps the first ones (a quick run, not submittable)
sls_pt, sls_tl, sls_td = 0, 0, 0  # supervision levels of your models (github.com/epic-kitchens/sls): placeholders
""", ["parameters"]),
    ("code", """
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mtv
from mtv.epic import ensemble, search
from mtv.epic import scoring as epic
from mtv.epic.results import read_results, write_results

REPO = Path(mtv.__file__).resolve().parents[1]
shared = Path(shared_dir or os.environ.get("MTV_SHARED_DIR") or REPO.parent / "shared")
EPIC_DIR = shared / "data" / "epic_kitchens"
CSVS = {"tail_verb_classes_csv": EPIC_DIR / "EPIC_100_tail_verbs.csv",
        "tail_noun_classes_csv": EPIC_DIR / "EPIC_100_tail_nouns.csv",
        "unseen_participant_ids_csv": EPIC_DIR / "EPIC_100_unseen_participant_ids_validation.csv"}
VALIDATION_CSV = EPIC_DIR / "EPIC_100_validation.csv"
annotations = epic.read_annotations(VALIDATION_CSV)
test_ids = epic.read_narration_ids(EPIC_DIR / "EPIC_100_test_timestamps.csv")
if test_segments is not None:
    test_ids = test_ids[:test_segments]
print(f"validation: {len(annotations.narration_id)} segments; test: {len(test_ids)} segments")
"""),
    ("md", """
## 1. Simulated model scores (validation and test)

Three pretend models: `model_a` is better at verbs, `model_b` at nouns, and `model_c`, weaker at both,
stands for a model of another modality (say audio) whose mistakes overlap less with the other two.
A score matrix is a class-frequency prior, plus noise, plus a bonus on the true class whose size
depends on the model, the head and how hard the segment is. Part of the noise and the hardness are
shared by all models, so their mistakes are correlated, as real models' are (`model_a` and `model_b`
share more of it than `model_c` does).

For the **test** segments there are no public labels, so the "true" classes used to generate the test
scores are drawn at random from the validation class frequencies: the test scores, and the submission
made from them, are simulated too and meaningless for the leaderboard.
"""),
    ("code", """
rng = np.random.default_rng(seed)
# model -> (bonus on the true class per head, fraction of the noise shared with the other models)
MODELS = {"model_a": ({"verb": 3.4, "noun": 3.0}, 0.8), "model_b": ({"verb": 3.0, "noun": 3.4}, 0.8),
          "model_c": ({"verb": 2.8, "noun": 2.4}, 0.5)}
truth = {"verb": annotations.verb_class, "noun": annotations.noun_class}
prior = {head: np.bincount(truth[head], minlength=n) + 1.0
         for head, n in (("verb", epic.VERB_CLASSES), ("noun", epic.NOUN_CLASSES))}
test_truth = {head: rng.choice(len(p), size=len(test_ids), p=p / p.sum()) for head, p in prior.items()}
SPLITS = {"validation": (annotations.narration_id, truth), "test": (test_ids, test_truth)}
hardness = {split: rng.uniform(0.0, 0.8, len(ids)) for split, (ids, _) in SPLITS.items()}
shared_noise = {split: {head: rng.normal(size=(len(ids), len(prior[head]))) for head in prior}
                for split, (ids, _) in SPLITS.items()}


def simulate(split: str, bonus: dict, shared: float) -> dict:
    \"\"\"Raw scores [N, C] per head: log prior + (shared and own) noise + a bonus on the true class.\"\"\"
    _, labels = SPLITS[split]
    out = {}
    for head, y in labels.items():
        own_noise = rng.normal(size=(len(y), len(prior[head])))
        noise = shared * shared_noise[split][head] + np.sqrt(1 - shared**2) * own_noise
        scores = 0.5 * np.log(prior[head] / prior[head].sum()) + noise
        scores[np.arange(len(y)), y] += bonus[head] * (1.0 - hardness[split])
        out[head] = scores.astype(np.float32)
    return out


Path("results").mkdir(exist_ok=True)
for name, (bonus, shared) in MODELS.items():
    for split, (ids, _) in SPLITS.items():
        write_results(f"results/{name}_{split}.npz", ids, simulate(split, bonus, shared))
print(sorted(p.name for p in Path("results").iterdir()))
"""),
    ("md", """
## 2. Score each model

`mtv.epic.scoring.compute_metrics` computes the official metrics (as `evaluate.py` of
epic-kitchens/C1-Action-Recognition): top-1 / top-5 accuracy for verb, noun and action (a (verb, noun)
pair ranked by the product of the softmaxed verb and noun scores), and top-1 on the tail classes and on
the unseen participants. The `mtv epic-score` command prints the same table.
"""),
    ("code", """
NAMES = list(MODELS)
validation = [read_results(f"results/{name}_validation.npz") for name in NAMES]
metrics = {name: epic.compute_metrics(results, VALIDATION_CSV, **CSVS)
           for name, results in zip(NAMES, validation, strict=True)}
SHOWN = ["all_verb_accuracy_at_1", "all_noun_accuracy_at_1", "all_action_accuracy_at_1",
         "all_action_accuracy_at_5", "tail_action_accuracy_at_1", "unseen_action_accuracy_at_1"]
print(f"{'':10}" + "".join(f"{key.replace('_accuracy_at_', '@'):>16}" for key in SHOWN))
for name, values in metrics.items():
    print(f"{name:10}" + "".join(f"{values[key]:16.2f}" for key in SHOWN))
"""),
    ("md", """
## 3. Search the ensemble weights on validation

`mtv.epic.search.search_weights` finds separate verb and noun weights by coordinate ascent on the
validation action top-1 accuracy (each model's share of a head's weights tried at `k / search_grid`);
`fuse` averages the raw scores with those weights. Each single model is one of the candidates, so the
ensemble is never worse than the best model on validation. Searching and reporting on the same split
flatters the ensemble: `search.cross_validate` (and the `mtv ensemble --search` command) reports the
numbers of weights searched on other parts of the validation set instead.
"""),
    ("code", """
found = search.search_weights(validation, VALIDATION_CSV, grid=search_grid,
                              metric="all_action_accuracy_at_1", **CSVS)
weights, best = found.weights, found.score
print("weights:", {head: {name: round(float(x), 3) for name, x in zip(NAMES, w, strict=True)}
                   for head, w in weights.items()}, f"-> validation action top-1 {best:.2f}")
fused = ensemble.fuse(validation, weights)
metrics["ensemble"] = epic.compute_metrics(fused, VALIDATION_CSV, **CSVS)
print(epic.metrics_table(metrics["ensemble"]))
report = {"simulated": True, "metrics": metrics,
          "weights": {head: dict(zip(NAMES, w.tolist(), strict=True)) for head, w in weights.items()}}
Path("epic_metrics.json").write_text(json.dumps(report, indent=1))
"""),
    ("code", """
tasks = ["all_verb_accuracy_at_1", "all_noun_accuracy_at_1", "all_action_accuracy_at_1"]
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / len(metrics)
for i, (name, values) in enumerate(metrics.items()):
    bars = ax.bar(np.arange(len(tasks)) + i * width, [values[t] for t in tasks], width, label=name,
                  color="tab:red" if name == "ensemble" else None)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
ax.set_xticks(np.arange(len(tasks)) + width * (len(metrics) - 1) / 2, ["verb top-1", "noun top-1", "action top-1"])
ax.set_ylabel("accuracy (%)")
ax.set_title("Epic-Kitchens-100 validation, SIMULATED model scores")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("epic_accuracies.png", dpi=80)
plt.show()
"""),
    ("md", """
## 4. Fuse the test scores and write the submission

The test results are fused with the validation weights, and `mtv.epic.scoring.make_submission` (the
`mtv submission` command) writes `submission.zip` holding `test.json`: version 0.2, the challenge name,
the supervision levels, and per segment the 97 verb and 300 noun scores (byte for byte what the official
`create_submission.py` writes), plus here the optional top-100 actions (`include_actions=True`).
`expected_ids` checks that every test segment has scores. Remember: these scores are simulated, so this
file only shows the format; do not upload it.
"""),
    ("code", """
test = [read_results(f"results/{name}_test.npz") for name in NAMES]
fused_test = ensemble.fuse(test, weights)
submission = epic.make_submission(fused_test, "submission.zip", sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td,
                                  include_actions=True, expected_ids=test_ids)
content = epic.read_submission(submission)
first = next(iter(content["results"]))
print(submission, f"{submission.stat().st_size / 1e6:.1f} MB:",
      {k: v for k, v in content.items() if k != "results"}, f"{len(content['results'])} segments")
print(first, {head: len(scores) for head, scores in content["results"][first].items()})
"""),
]

NOTEBOOKS = {"01_inference.ipynb": INFERENCE, "02_finetune.ipynb": FINETUNE, "03_epic_ensemble.ipynb": EPIC}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` (a key of NOTEBOOKS) with cleared outputs and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, (kind, text, *tags) in enumerate(NOTEBOOKS[name]):
        source = textwrap.dedent(text).strip("\n")
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"cell-{i:02d}"
        if tags:
            cell.metadata["tags"] = list(tags[0])
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    """Writes every notebook, or with --check reports the ones that differ from this file."""
    stale = []
    for name in NOTEBOOKS:
        text = nbformat.writes(build(name)) + "\n"
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python3 notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
