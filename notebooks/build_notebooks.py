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
The rows are shuffled with a seed and dealt into several shards (one per video, at most 64), so a
label-sorted CSV still gives mixed files. `mtv.data.tfrecord.make_dataset` then reads them in-graph,
in a new global order every epoch, and samples clips, crops, flips and normalises them to [-1, 1].
Horizontal flips are fine for these labels; turn `random_flip` off if yours have left/right classes.
"""),
    ("code", """
train_shards = prepare.prepare(train_csv, "tfrecords", name="train", num_classes=len(CLASSES),
                               progress=False).shards
val_shards = prepare.prepare(val_csv, "tfrecords", name="val", num_classes=len(CLASSES), progress=False).shards
print(f"{len(train_shards)} training shards, e.g. {train_shards[0].name}; {len(val_shards)} validation shards")

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
# Evaluate and ensemble M&M models on Epic-Kitchens-100

The Epic-Kitchens-100 action-recognition recipe, from the models' results files to the challenge zip:
score each model on the validation split with the official metrics, search the weights of a score-level
ensemble on validation (and measure its gain on held-out videos), then fuse the test scores with those
weights and write the submission.

**Where the results come from.** A results file holds one model's verb and noun scores per segment, keyed by
`narration_id`. `mtv evaluate` writes it for a trained model, once on the validation records and once on the
test records:

```
mtv evaluate --checkpoint=runs/rgb_audio --data='records/validation-*.tfrecord' --out=results/rgb_audio_validation.npz
mtv evaluate --checkpoint=runs/rgb_audio --data='records/test-*.tfrecord' --out=results/rgb_audio_test.npz
```

* **Your own models:** set `results_dir` to the folder of your `NAME_validation.npz` / `NAME_test.npz` files;
  the labels and test segments are then the official `EPIC_100_validation.csv` and
  `EPIC_100_test_timestamps.csv` (in `shared/data/epic_kitchens`, CC BY-NC 4.0).
* **Without them** (the default) the notebook reads what `examples/epic_entry.py` writes, and runs it first
  into `example_dir` if it has not been run there (about a minute on 2 CPU cores). That script makes a
  small Epic-style split from two real clips with audio, prepares records with RGB, flow and audio, trains two
  tiny M&M models (RGB + audio, RGB + flow) with `mtv train` and evaluates them with `mtv evaluate`. The
  models are real but tiny and trained for seconds on a dozen segments: their accuracies are near chance
  and say nothing about M&M. The metrics, the weight search and the submission are exactly those of a
  real entry.
"""),
    ("code", """
# Parameters (a runner such as papermill may override this cell).
shared_dir = None  # the project's shared folder; None: $MTV_SHARED_DIR, else ../shared beside the repository
results_dir = None  # folder of NAME_validation.npz + NAME_test.npz (mtv evaluate); None: the example's
validation_csv = None  # validation labels; None: the example's, or EPIC_100_validation.csv with results_dir
test_timestamps_csv = None  # test segments; None: the example's, or EPIC_100_test_timestamps.csv with results_dir
example_dir = "epic_entry"  # where examples/epic_entry.py writes (run there first if it holds no results)
folds = 3  # held-out parts of whole videos for the ensemble's reported gain
search_grid = 10  # the search tries each model's share of a head's weights at k / search_grid
sls_pt, sls_tl, sls_td = 0, 0, 0  # supervision levels of your models (github.com/epic-kitchens/sls): placeholders
""", ["parameters"]),
    ("code", """
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mtv
from mtv.epic import ensemble, search
from mtv.epic import scoring as epic
from mtv.epic.results import read_results

REPO = Path(mtv.__file__).resolve().parents[1]
shared = Path(shared_dir or os.environ.get("MTV_SHARED_DIR") or REPO.parent / "shared")
EPIC_DIR = shared / "data" / "epic_kitchens"
CSVS = {"tail_verb_classes_csv": EPIC_DIR / "EPIC_100_tail_verbs.csv",
        "tail_noun_classes_csv": EPIC_DIR / "EPIC_100_tail_nouns.csv",
        "unseen_participant_ids_csv": EPIC_DIR / "EPIC_100_unseen_participant_ids_validation.csv"}
METRIC = "all_action_accuracy_at_1"  # what the weight search maximises (the challenge's main number)

if results_dir is None:  # the tiny models of examples/epic_entry.py
    example = Path(example_dir)
    if not (example / "results").is_dir():
        print(f"running examples/epic_entry.py into {example} ...")
        done = subprocess.run([sys.executable, str(REPO / "examples" / "epic_entry.py"), f"--workdir={example}",
                               f"--videos={shared / 'data' / 'videos'}", f"--epic_dir={EPIC_DIR}"],
                              capture_output=True, text=True)
        print(done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"examples/epic_entry.py failed (exit status {done.returncode}); see above")
    results_dir = example / "results"
    validation_csv = validation_csv or example / "annotations" / "EPIC_100_validation.csv"
    test_timestamps_csv = test_timestamps_csv or example / "annotations" / "EPIC_100_test_timestamps.csv"
results_dir = Path(results_dir)
validation_csv = Path(validation_csv or EPIC_DIR / "EPIC_100_validation.csv")
test_timestamps_csv = Path(test_timestamps_csv or EPIC_DIR / "EPIC_100_test_timestamps.csv")
annotations = epic.read_annotations(validation_csv)
test_ids = epic.read_narration_ids(test_timestamps_csv)
print(f"results: {results_dir}\\nvalidation: {len(annotations.narration_id)} segments ({validation_csv.name}); "
      f"test: {len(test_ids)} segments ({test_timestamps_csv.name})")
"""),
    ("md", """
## 1. The models' results files

Every model with both a `NAME_validation.npz` and a `NAME_test.npz` in `results_dir` takes part. A file holds
the segment ids and, per head, the raw scores (`verb` [N, 97], `noun` [N, 300]), averaged over the test
views (clips x crops) by `mtv evaluate`.
"""),
    ("code", """
NAMES = sorted(p.name.removesuffix("_validation.npz") for p in results_dir.glob("*_validation.npz")
               if (results_dir / p.name.replace("_validation.npz", "_test.npz")).is_file())
if len(NAMES) < 2:
    raise ValueError(f"{results_dir}: an ensemble needs two or more models with NAME_validation.npz and "
                     f"NAME_test.npz files, found {NAMES}")
validation = {name: read_results(results_dir / f"{name}_validation.npz") for name in NAMES}
test = {name: read_results(results_dir / f"{name}_test.npz") for name in NAMES}
for name in NAMES:
    shapes = {head: scores.shape for head, scores in validation[name].outputs.items()}
    print(f"{name}: validation {len(validation[name])} segments {shapes}; test {len(test[name])} segments")
"""),
    ("md", """
## 2. Score each model

`mtv.epic.scoring.compute_metrics` computes the official metrics (as `evaluate.py` of
epic-kitchens/C1-Action-Recognition): top-1 / top-5 accuracy for verb, noun and action (a (verb, noun)
pair ranked by the product of the softmaxed verb and noun scores), and top-1 on the tail classes and on
the unseen participants. The `mtv epic-score` command prints the same numbers.
"""),
    ("code", """
metrics = {name: epic.compute_metrics(validation[name], validation_csv, **CSVS) for name in NAMES}
SHOWN = ["all_verb_accuracy_at_1", "all_noun_accuracy_at_1", "all_action_accuracy_at_1",
         "all_action_accuracy_at_5", "tail_action_accuracy_at_1", "unseen_action_accuracy_at_1"]


def show(table: dict) -> None:
    \"\"\"One row per model, one column per metric of SHOWN.\"\"\"
    width = max(len(name) for name in table) + 2
    print(" " * width + "".join(f"{key.replace('_accuracy_at_', '@'):>16}" for key in SHOWN))
    for name, values in table.items():
        print(f"{name:{width}}" + "".join(f"{values.get(key, float('nan')):16.2f}" for key in SHOWN))


show(metrics)
"""),
    ("md", """
## 3. Search the ensemble weights on validation, report them held out

`mtv.epic.search` finds separate verb and noun weights by coordinate ascent on the validation action top-1
(each model's share of a head's weights tried at `k / search_grid`). A search flatters the ensemble on the
segments it was fitted to, so `cross_validate` splits validation into `folds` parts of whole videos, fuses
each part with weights searched on the other parts, and reports those out-of-fold numbers next to equal
weights: that gain is the one to believe. The weights applied to the test set are then searched on all
validation segments (their in-sample score, shown too, is never worse than the best single model, since
each single model is one of the candidates). `mtv ensemble --search` does the same from the command line.
"""),
    ("code", """
cv = search.cross_validate([validation[name] for name in NAMES], validation_csv, folds=folds, grid=search_grid,
                           metric=METRIC, **CSVS)
weights = cv.final.weights
print(f"held-out {METRIC}: {cv.held_out_metrics[METRIC]:.2f} (equal weights {cv.equal_metrics[METRIC]:.2f}, "
      f"gain {cv.gain:+.2f}) over {folds} parts of whole videos")
print("weights for the test set:", {head: {name: round(float(x), 3) for name, x in zip(NAMES, w, strict=True)}
                                    for head, w in weights.items()})
metrics["ensemble (held out)"] = epic.compute_metrics(cv.held_out, validation_csv, **CSVS)
fused = ensemble.fuse([validation[name] for name in NAMES], weights)
metrics["ensemble (in-sample)"] = epic.compute_metrics(fused, validation_csv, **CSVS)
report = {"results_dir": str(results_dir), "models": NAMES, "metric": METRIC, "folds": folds,
          "held_out": cv.held_out_metrics[METRIC], "equal_weights": cv.equal_metrics[METRIC], "gain": cv.gain,
          "metrics": metrics,
          "weights": {head: dict(zip(NAMES, w.tolist(), strict=True)) for head, w in weights.items()}}
Path("epic_metrics.json").write_text(json.dumps(report, indent=1))
show(metrics)
"""),
    ("code", """
tasks = ["all_verb_accuracy_at_1", "all_noun_accuracy_at_1", "all_action_accuracy_at_1"]
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / len(metrics)
for i, (name, values) in enumerate(metrics.items()):
    bars = ax.bar(np.arange(len(tasks)) + i * width, [values[t] for t in tasks], width, label=name,
                  color={"ensemble (held out)": "tab:red", "ensemble (in-sample)": "mistyrose"}.get(name))
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
ax.set_xticks(np.arange(len(tasks)) + width * (len(metrics) - 1) / 2, ["verb top-1", "noun top-1", "action top-1"])
ax.set_ylabel("accuracy (%)")
ax.set_title(f"validation ({len(annotations.narration_id)} segments): {results_dir}", fontsize=8)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("epic_accuracies.png", dpi=80)
plt.show()
"""),
    ("md", """
## 4. Fuse the test scores and write the submission

The test results are fused with the weights searched on all validation segments, and
`mtv.epic.scoring.make_submission` (the `mtv submission` command) writes `submission.zip` holding `test.json`:
version 0.2, the challenge name, the supervision levels, and per segment the 97 verb and 300 noun scores
(byte for byte what the official `create_submission.py` writes; `include_actions=True` adds the top-100
actions). `expected_ids` checks that the scores cover exactly the test segments: with the official CSV, all
13,092 of them. The example's zip covers only its own test segments, so it shows the format and is not
for upload.
"""),
    ("code", """
fused_test = ensemble.fuse([test[name] for name in NAMES], weights)
submission = epic.make_submission(fused_test, "submission.zip", sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td,
                                  expected_ids=test_ids)
content = epic.read_submission(submission)
first = next(iter(content["results"]))
print(submission, f"{submission.stat().st_size / 1e3:.1f} kB:",
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
