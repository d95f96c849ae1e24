"""A tiny UnLoc-style localizer on untrimmed camera-motion videos: the test suite's localization model.

The backbone is camera_motion_tiny's two-view MTV (8 frames of 32x32, about 0.1 M parameters); each
8-frame window at 8 fps is one second and gives 4 time steps (the finer view's temporal tokens), so a
sequence of 16 windows is 64 steps of 0.25 s. The head (`mtv.long.localization.UnLocHead`) builds a
3-level temporal pyramid (steps of 0.25, 0.5 and 1 s) with shared conv towers of width 32.

The localization fields live in `model.localization` (head, target ranges, post-processing); the
untrimmed-video generator's in `dataset_configs.synthetic.untrimmed` (`mtv.data.untrimmed`):

  mtv train --config=configs/localization/camera_motion_localization_tiny.py --workdir=/tmp/loc \
      --videos=../shared/data/videos
  mtv evaluate --checkpoint=/tmp/loc          # mAP@0.3/0.5/0.7 and their mean on the held-out videos
  mtv localize VIDEO --model=/tmp/loc         # segments, JSON and a plot

For your own videos set `config.dataset_name = 'untrimmed_csv'` and `dataset_configs.untrimmed_csv`
(docs/long_videos.md, "Localization end to end").
"""

from pathlib import Path

import ml_collections

from mtv.io.configs import load_config

# The sibling file by path: configs ship as package data (mtv.configs), not as an importable `configs`.
TINY = Path(__file__).resolve().parents[1] / "camera_motion" / "camera_motion_tiny.py"


def get_config() -> ml_collections.ConfigDict:
    """The tiny two-view camera-motion MTV with an UnLoc head."""
    config = load_config(str(TINY))
    config.experiment_name = "camera-motion-localization-tiny"
    config.dataset_name = "camera_motion_untrimmed"
    data = config.dataset_configs
    data.synthetic.untrimmed = ml_collections.ConfigDict({
        "fps": 8.0, "video_seconds": 32.0, "min_segment_seconds": 2.0, "max_segment_seconds": 8.0,
        "num_train_videos": 64, "num_eval_videos": 8, "size": 32})

    config.model.localization = ml_collections.ConfigDict({
        "width": 32, "num_levels": 3, "num_conv_layers": 2, "kernel_size": 3,
        "focal_alpha": 0.25, "focal_gamma": 2.0, "regression_weight": 1.0,
        "regression_ranges": None,  # None: level 0 [0, 4), middle [2, 4), last [2, inf) level steps
        "windows_per_sequence": 16,
        "postprocess": {"score_threshold": 0.05, "pre_nms_top_k": 1000, "method": "soft_nms",
                        "iou_threshold": 0.5, "sigma": 0.5, "top_k": 100},
    })
    config.batch_size = 4
    return config
