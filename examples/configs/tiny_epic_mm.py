"""A tiny M&M for examples/epic_entry.py: the EPIC-Kitchens M&M config of two streams, shrunk to seconds of CPU.

`--config=examples/configs/tiny_epic_mm.py:rgb_audio` (or `:rgb_flow`) starts from
`configs/epic_kitchens/epic_mm_b2_<streams>.py`, keeps its recipe (Scenic's names, optimizer, label smoothing,
stochastic depth, the 300-noun / 97-verb heads) and overrides only the sizes: 8 frames of 32x32, one-layer
views 16 wide, a 32x16 log-mel, a few steps, no pretrained initialisation. `dataset_configs.base_dir` must be
set on the command line (`--config.dataset_configs.base_dir=RECORDS`). Such a model learns next to nothing;
it exists so that every command of an entry runs, end to end, in a minute.
"""

import ml_collections

from mtv.io.configs import load_config

BASES = {"rgb_audio": "epic_mm_b2_rgb_audio", "rgb_flow": "epic_mm_b2_rgb_flow"}
FRAMES, SIZE, MEL_FRAMES, MEL_BINS = 8, 32, 32, 16


def _view(patch: tuple[int, ...]) -> dict:
    """One MTV view: width 16, 2 heads, one layer, tubelets (or spectrogram patches) of `patch`."""
    return {"hidden_size": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 1, "patches": {"size": list(patch)}}


def get_config(streams: str = "rgb_audio") -> ml_collections.ConfigDict:
    """The tiny config of `streams` ('rgb_audio' or 'rgb_flow')."""
    if streams not in BASES:
        raise ValueError(f"tiny_epic_mm.py:{streams}: the streams must be one of {', '.join(BASES)}")
    config = load_config(BASES[streams])
    config.experiment_name = f"tiny_epic_mm_{streams}"
    data = config.dataset_configs
    data.base_dir = ""  # --config.dataset_configs.base_dir=RECORDS
    # `mtv data prepare --name=train/validation`; the trainer scores nothing held out: `mtv evaluate` does.
    data.tables = {"train": "train-*.tfrecord", "validation": "", "test": "validation-*.tfrecord"}
    data.examples_per_subset = {"train": 12, "validation": 15, "test": 15}
    data.num_frames, data.min_resize, data.crop_size = FRAMES, SIZE, SIZE
    data.num_test_clips, data.test_batch_size = 2, 4
    data.augmentation_params.do_rand_augment = False
    model = config.model
    model.view_configs = [_view((8, 8, 4)), _view((8, 8, 2))]
    if streams == "rgb_audio":
        data.audio.num_frames, data.audio.num_mel_bins = MEL_FRAMES, MEL_BINS
        model.modalities = {"rgb": {"channels": 3},
                            "audio": {"view_configs": [_view((8, 8))], "channels": 1, "num_frames": MEL_FRAMES,
                                      "mel_bins": MEL_BINS}}
    else:
        data.flow.num_frames = FRAMES
        model.modalities = {"rgb": {"channels": 3}, "flow": {"view_configs": [_view((8, 8, 4))], "channels": 2}}
    model.cross_view_fusion.fusion_layers = (0,)
    model.global_encoder_config = {"num_heads": 2, "mlp_dim": 32, "num_layers": 1, "hidden_size": 16,
                                   "merge_axis": "channel"}
    steps = 30  # 10 passes over the 12 training segments; a step costs ~0.15 s of one CPU core
    config.batch_size, config.num_training_steps, config.num_training_epochs = 4, steps, None
    config.lr_configs.warmup_steps, config.lr_configs.steps_per_cycle = 2, steps
    config.lr_configs.base_learning_rate = 0.1
    config.init_from = None  # a real entry starts every stream from a Kinetics MTV (see the base config)
    config.checkpoint_steps, config.log_eval_steps = steps, steps
    return config
