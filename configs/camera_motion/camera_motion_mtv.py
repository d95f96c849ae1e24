"""A tiny two-view MTV trained on the generated camera-motion data: the package's embedded default model.

16 frames of 64x64; view 0 = tubelet 16x16x4 (width 48), view 1 = 16x16x2 (width 32, finer in time);
cross-view attention at layer 1; a 2-layer global encoder. 0.37 M parameters (a 1.7 MB preset).
2400 steps of 32 clips; retrain (about 35 minutes on 2 busy CPU cores) and refresh the shipped preset with:

  mtv train --config=configs/camera_motion/camera_motion_mtv.py --workdir=/tmp/camera_motion \
      --export_preset=mtv/embedded/camera-motion --videos=../shared/data/videos

The data are rendered on the fly from the videos given by --videos (every video but the held-out
'flipping_pancake', which is used for the held-out accuracy), or from procedural textures without it.
Re-running the command on a finished workdir only re-evaluates and re-exports the preset.
"""

import ml_collections

NUM_FRAMES = 16
CROP = 64


def get_config(runlocal: str = "") -> ml_collections.ConfigDict:
    """The experiment config; `runlocal` is accepted for config_flags' ':arg' and not used."""
    del runlocal
    config = ml_collections.ConfigDict()
    config.experiment_name = "camera-motion"
    config.dataset_name = "camera_motion"
    config.dataset_configs = ml_collections.ConfigDict()
    data = config.dataset_configs
    data.num_classes = 13
    data.num_frames = NUM_FRAMES
    data.stride = 1
    data.min_resize = CROP
    data.crop_size = CROP
    data.num_test_clips = 1
    data.do_three_spatial_crops = False
    data.zero_centering = True
    data.synthetic = ml_collections.ConfigDict()
    data.synthetic.videos = ""  # a directory of source videos; empty = procedural textures
    data.synthetic.source_min_resize = 128
    data.synthetic.num_train = 6400  # an "epoch" of freshly generated clips, for the schedule
    data.synthetic.num_eval = 390
    data.synthetic.eval_seed = 12345
    data.synthetic.still_fraction = 0.3

    config.model_name = "mtv_multiclass_classification"
    config.model = ml_collections.ConfigDict()
    config.model.classifier = "token"
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.model.stochastic_depth = 0.1
    config.model.view_configs = [
        ml_collections.ConfigDict({"hidden_size": 48, "num_heads": 3, "mlp_dim": 96, "num_layers": 2,
                                   "patches": {"size": (16, 16, 4)}}),
        ml_collections.ConfigDict({"hidden_size": 32, "num_heads": 2, "mlp_dim": 64, "num_layers": 2,
                                   "patches": {"size": (16, 16, 2)}}),
    ]
    config.model.cross_view_fusion = ml_collections.ConfigDict({
        "type": "cross_view_attention", "fuse_in_descending_order": True, "use_query_config": True,
        "fusion_layers": (1,)})
    config.model.global_encoder_config = ml_collections.ConfigDict({
        "num_heads": 4, "mlp_dim": 160, "num_layers": 2, "hidden_size": 80, "merge_axis": "channel"})
    config.model.temporal_encoding_config = ml_collections.ConfigDict({
        "kernel_init_method": "central_frame_initializer", "method": "3d_conv"})

    config.trainer_name = "mtv_trainer"
    config.optimizer = "momentum"
    config.optimizer_configs = ml_collections.ConfigDict({"momentum": 0.9})
    config.l2_decay_factor = 0.0
    config.max_grad_norm = 1.0
    config.label_smoothing = 0.1
    config.num_training_steps = 2400
    config.batch_size = 32
    config.rng_seed = 0
    config.lr_configs = ml_collections.ConfigDict()
    config.lr_configs.learning_rate_schedule = "compound"
    config.lr_configs.factors = "constant * cosine_decay * linear_warmup"
    config.lr_configs.warmup_steps = 150
    config.lr_configs.steps_per_cycle = 2400
    config.lr_configs.base_learning_rate = 0.1
    config.checkpoint_steps = 250
    config.log_eval_steps = 1000
    config.mixed_precision = "float32"
    config.write_summary = True
    config.checkpoint = True
    return config
