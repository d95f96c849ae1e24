"""The UnLoc-style localizer on the embedded, pretrained camera-motion MTV (UnLoc's setup: a pretrained backbone).

The backbone is configs/camera_motion/camera_motion_mtv.py (the package's embedded 'camera-motion' model:
16 frames of 64x64, two views, 0.37 M parameters), initialised from it through `init_from` (the head keeps
its random initialisation). Each 16-frame window at 8 fps is two seconds and gives 8 time steps (the finer
view's temporal tokens), so a sequence of 8 windows is 64 steps of 0.25 s, as in the tiny config.

  mtv train --config=configs/localization/camera_motion_localization_pretrained.py --workdir=/tmp/loc_pt \
      --videos=../shared/data/videos
  python benchmarks/localization.py --videos=../shared/data/videos --init_from=camera-motion
"""

from pathlib import Path

import ml_collections

from mtv.io.configs import load_config

BACKBONE = Path(__file__).resolve().parents[1] / "camera_motion" / "camera_motion_mtv.py"
TINY = Path(__file__).resolve().parent / "camera_motion_localization_tiny.py"


def get_config() -> ml_collections.ConfigDict:
    """The embedded camera-motion MTV, initialised from its preset, with the tiny config's UnLoc head."""
    config = load_config(str(BACKBONE))
    head = load_config(str(TINY))
    config.experiment_name = "camera-motion-localization-pretrained"
    config.dataset_name = "camera_motion_untrimmed"
    config.dataset_configs.synthetic.untrimmed = head.dataset_configs.synthetic.untrimmed
    config.dataset_configs.synthetic.untrimmed.size = config.dataset_configs.crop_size
    config.model.localization = head.model.localization
    config.model.localization.windows_per_sequence = 8
    # Name or path of an MTV of this architecture: the embedded zoo model, a preset folder or a run.
    config.init_from = ml_collections.ConfigDict({"model_type": "mtv", "checkpoint_path": "camera-motion"})
    config.batch_size = 4
    config.num_training_steps = 500
    config.checkpoint_steps = 250
    config.lr_configs.base_learning_rate = 0.02
    config.lr_configs.warmup_steps = 50
    config.lr_configs.steps_per_cycle = 500
    return config
