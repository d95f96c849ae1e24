"""A small Epic-Kitchens-100-style split built from two real clips with audio (for examples/epic_entry.py).

EPIC-KITCHENS videos are not available offline, so the split reuses the two example clips that have an
audio track. Each Epic-style video (`P01_101`, ...) is a symlink to one of them, named the way
`mtv data prepare` finds Epic videos (`<root>/<video_id>.<ext>`); its segments are one-second spans of the
clip with verb/noun classes of the real EPIC-100 class lists. Participants `P18`/`P32` (validation) and `P33`
(test) are the official unseen participants, so the unseen-participant metrics have segments to score; the
tail classes are the official ones too. The annotation CSVs have the columns of the official files:

* `EPIC_100_train.csv`, `EPIC_100_validation.csv`: those of EPIC_100_validation.csv (labelled);
* `EPIC_100_test_timestamps.csv`: those of the official test timestamps (no labels).

Several videos show the same clip, so train, validation and test overlap in content: the scores measure
nothing about a model, they only make every step of an entry run on real decoding, audio and flow.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

# The clips (shared/data/videos: 6.56 s at 25 fps, 10.33 s at 30 fps) and the end of their usable part (s).
CLIPS = {"eye": ("eye_makeup_audio__mmaction2_test.avi", 6.45), "pancake": ("flipping_pancake__decord.mkv", 10.25)}
SEGMENT_S, GAP_S, FIRST_S = 1.0, 0.05, 0.1
EPIC_FPS = 50  # EPIC-100's released frames, which start_frame/stop_frame count (prepare reads the timestamps)
# (narration, verb, verb_class, noun, noun_class): ids of EPIC_100_verb_classes.csv / EPIC_100_noun_classes.csv,
# some of them tail classes (apply, flip; brush, pancake).
ACTIONS = {
    "eye": [("take brush", "take", 0, "brush", 103), ("apply cream", "apply", 27, "cream", 143),
            ("rub face", "rub", 55, "face", 292), ("put brush", "put", 1, "brush", 103)],
    "pancake": [("pour oil", "pour", 9, "oil", 31), ("take spatula", "take", 0, "spatula", 20),
                ("flip pancake", "flip", 22, "pancake", 184), ("put pan", "put", 1, "pan", 5)],
}
# split -> {video_id: (clip, segments)}
SPLITS = {
    "train": {"P01_101": ("eye", 6), "P01_102": ("pancake", 6)},
    "validation": {"P03_101": ("eye", 3), "P03_102": ("pancake", 3), "P18_101": ("eye", 3),
                   "P18_102": ("pancake", 3), "P32_101": ("pancake", 3)},
    "test": {"P04_101": ("eye", 3), "P33_101": ("pancake", 3)},
}
LABELLED_COLUMNS = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                    "noun_class", "all_nouns", "all_noun_classes")
TEST_COLUMNS = LABELLED_COLUMNS[:8]
CSV_NAMES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv",
             "test": "EPIC_100_test_timestamps.csv"}


@dataclasses.dataclass(frozen=True)
class Split:
    """Where the split was written: the video folder and one annotation CSV per split name."""

    video_root: Path
    csvs: dict[str, Path]
    segments: dict[str, int]


def timestamp(seconds: float) -> str:
    """Seconds as Epic's `HH:MM:SS.ff`."""
    minutes, secs = divmod(round(seconds * 100) / 100, 60)
    return f"{int(minutes // 60):02d}:{int(minutes % 60):02d}:{secs:05.2f}"


def _spans(clip: str) -> list[tuple[float, float]]:
    """Every one-second span of the clip, in order."""
    usable = CLIPS[clip][1]
    starts = []
    start = FIRST_S
    while start + SEGMENT_S <= usable:
        starts.append(start)
        start += SEGMENT_S + GAP_S
    return [(s, s + SEGMENT_S) for s in starts]


def _rows(split: str) -> list[dict]:
    """The split's segments, in the order of the official files (by video, then time)."""
    rows = []
    for v, (video_id, (clip, count)) in enumerate(SPLITS[split].items()):
        spans = _spans(clip)
        if count > len(spans):
            raise ValueError(f"{video_id}: {count} segments, but clip '{clip}' has {len(spans)} one-second spans")
        first = v % len(spans)  # videos of the same clip start at different spans
        chosen = sorted((first + i) % len(spans) for i in range(count))
        for i, span in enumerate(chosen):
            (t0, t1), actions = spans[span], ACTIONS[clip]
            # The same moment of a clip has the same action in every video that shows it.
            narration, verb, verb_class, noun, noun_class = actions[span % len(actions)]
            rows.append({
                "narration_id": f"{video_id}_{i}", "participant_id": video_id.split("_")[0], "video_id": video_id,
                "narration_timestamp": timestamp(t0), "start_timestamp": timestamp(t0),
                "stop_timestamp": timestamp(t1), "start_frame": round(t0 * EPIC_FPS) + 1,
                "stop_frame": round(t1 * EPIC_FPS), "narration": narration, "verb": verb, "verb_class": verb_class,
                "noun": noun, "noun_class": noun_class, "all_nouns": f"['{noun}']",
                "all_noun_classes": f"[{noun_class}]",
            })
    return rows


def write_split(videos_dir: str | Path, out_dir: str | Path) -> Split:
    """Writes `out_dir/videos/<video_id>.<ext>` symlinks and `out_dir/annotations/*.csv`; returns their paths."""
    videos_dir, out_dir = Path(videos_dir).resolve(), Path(out_dir)
    missing = [name for name, _ in CLIPS.values() if not (videos_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--videos {videos_dir}: no {', '.join(missing)} (the real clips with audio of "
                                "shared/data/videos)")
    video_root, annotations = out_dir / "videos", out_dir / "annotations"
    video_root.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    csvs, segments = {}, {}
    for split, videos in SPLITS.items():
        for video_id, (clip, _) in videos.items():
            source = videos_dir / CLIPS[clip][0]
            link = video_root / f"{video_id}{source.suffix}"
            if not link.is_symlink():
                link.symlink_to(source)
        rows = _rows(split)
        columns = TEST_COLUMNS if split == "test" else LABELLED_COLUMNS
        path = annotations / CSV_NAMES[split]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        csvs[split], segments[split] = path, len(rows)
    return Split(video_root, csvs, segments)
