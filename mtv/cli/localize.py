"""`mtv localize VIDEO --model=WORKDIR`: temporal localization of a video with a trained localizer.

The video is decoded window by window by seeking (memory does not grow with its length); the localizer
(`mtv train` on a config with `model.localization`) predicts segments, which are printed one per line as
`start end label score`, and written as `<out>.json` and a timeline plot `<out>.png` (default `<out>`:
the video's name + `.segments` in the current directory). Both files are made in memory first and
written atomically, so a failure leaves neither half-written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

HELP = "temporal localization: print the segments (start, end, label, score) of a video, write JSON and a plot"
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "a localizer run's workdir (mtv train --config=configs/localization/...)",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "output prefix: writes OUT.json and OUT.png (default: ./VIDEO_NAME.segments)",
                    flag_values=FLAGS)
flags.DEFINE_integer("top", 0, "print only the best N segments (0: all)", flag_values=FLAGS)
flags.DEFINE_float("score_threshold", None, "drop segments scored below this (default: the config's)",
                   flag_values=FLAGS)
flags.DEFINE_integer("chunk_windows", 16, "windows decoded and encoded at a time", flag_values=FLAGS)
flags.DEFINE_bool("plot", True, "also write OUT.png", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    from mtv.errors import ConfigError, DataError
    from mtv.long.inference import load_localizer, plot_segments, segments_json
    from mtv.utils.fileio import atomic_write_text, writing

    if len(argv) != 2:
        raise ConfigError("usage: mtv localize VIDEO --model=WORKDIR [--out=PREFIX] [--top=N]")
    if not FLAGS.model:
        raise ConfigError("--model=WORKDIR (a localizer run) is required")
    if FLAGS.chunk_windows < 1:
        raise ConfigError(f"--chunk_windows must be >= 1, got {FLAGS.chunk_windows}")
    video = Path(argv[1])
    if not video.is_file():
        raise DataError(f"video file '{video}' does not exist")
    localizer = load_localizer(FLAGS.model)
    if FLAGS.score_threshold is not None:
        localizer.postprocess["score_threshold"] = float(FLAGS.score_threshold)
    result = localizer.localize_video(video, chunk_windows=FLAGS.chunk_windows)
    if FLAGS.top:
        result["segments"] = result["segments"][:FLAGS.top]
    prefix = Path(FLAGS.out) if FLAGS.out else Path(f"{video.name}.segments")
    text = segments_json(result, str(FLAGS.model))
    image = plot_segments(result, localizer.class_names) if FLAGS.plot else None
    print(f"{video}: {result['duration']:.2f} s, {result['windows']} windows of {localizer.window_seconds:g} s, "
          f"{len(result['segments'])} segments")
    print(f"{'start':>8} {'end':>8}  {'label':<20} score")
    for start, end, label, score in result["segments"]:
        print(f"{start:8.2f} {end:8.2f}  {label:<20} {score:.4f}")
    json_path = prefix.with_name(prefix.name + ".json")
    with writing(json_path):
        atomic_write_text(json_path, text)
    written = [json_path]
    if image is not None:
        from mtv.utils.fileio import atomic_path

        png_path = prefix.with_name(prefix.name + ".png")
        with writing(png_path), atomic_path(png_path) as tmp:
            tmp.write_bytes(image)
        written.append(png_path)
    print("wrote " + " and ".join(str(p) for p in written), file=sys.stderr)
    return 0
