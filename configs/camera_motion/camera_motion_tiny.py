"""A very small MTV on the generated camera-motion data: the test suite's proof that training works.

8 frames of 32x32. Default: two views (tubelets 8x8x4 and 8x8x2, width 32 each) with cross-view
attention at layer 1, about 0.1 M parameters. `get_config("single")` is the single-view baseline of
similar size (one 8x8x2 view of width 56), for comparing multi-view with single-view training:

  mtv train --config=configs/camera_motion/camera_motion_tiny.py --workdir=/tmp/cm_tiny --videos=../shared/data/videos
  mtv train --config=configs/camera_motion/camera_motion_tiny.py:single --workdir=/tmp/cm_single \
      --videos=../shared/data/videos
"""

import ml_collections


def _view(width: int, heads: int, tubelet: tuple) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"hidden_size": width, "num_heads": heads, "mlp_dim": 2 * width,
                                      "num_layers": 2, "patches": {"size": tubelet}})


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """`variant` is '' (two views) or 'single' (one view)."""
    config = ml_collections.ConfigDict()
    config.experiment_name = f"camera-motion-tiny{'-single' if variant == 'single' else ''}"
    config.dataset_name = "camera_motion"
    config.dataset_configs = ml_collections.ConfigDict()
    data = config.dataset_configs
    data.num_classes = 13
    data.num_frames = 8
    data.stride = 1
    data.min_resize = 32
    data.crop_size = 32
    data.num_test_clips = 1
    data.do_three_spatial_crops = False
    data.zero_centering = True
    data.synthetic = ml_collections.ConfigDict()
    data.synthetic.videos = ""
    data.synthetic.source_min_resize = 96
    data.synthetic.num_train = 12800
    data.synthetic.num_eval = 260
    data.synthetic.eval_seed = 12345
    data.synthetic.still_fraction = 0.3

    config.model_name = "mtv_multiclass_classification"
    config.model = ml_collections.ConfigDict()
    config.model.classifier = "token"
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.model.stochastic_depth = 0.0
    if variant == "single":
        config.model.view_configs = [_view(56, 4, (8, 8, 2))]
        config.model.cross_view_fusion = None
    elif variant == "":
        config.model.view_configs = [_view(32, 2, (8, 8, 4)), _view(32, 2, (8, 8, 2))]
        config.model.cross_view_fusion = ml_collections.ConfigDict({
            "type": "cross_view_attention", "fuse_in_descending_order": True, "use_query_config": True,
            "fusion_layers": (1,)})
    else:
        raise ValueError(f"variant must be '' or 'single', got {variant!r}")
    config.model.global_encoder_config = ml_collections.ConfigDict({
        "num_heads": 4, "mlp_dim": 64, "num_layers": 1, "hidden_size": 40, "merge_axis": "channel"})
    config.model.temporal_encoding_config = ml_collections.ConfigDict({
        "kernel_init_method": "central_frame_initializer", "method": "3d_conv"})

    config.optimizer = "momentum"
    config.optimizer_configs = ml_collections.ConfigDict({"momentum": 0.9})
    config.l2_decay_factor = 0.0
    config.max_grad_norm = 1.0
    config.label_smoothing = None
    config.num_training_steps = 400
    config.batch_size = 32
    config.rng_seed = 0
    config.lr_configs = ml_collections.ConfigDict()
    config.lr_configs.learning_rate_schedule = "compound"
    config.lr_configs.factors = "constant * cosine_decay * linear_warmup"
    config.lr_configs.warmup_steps = 50
    config.lr_configs.steps_per_cycle = 400
    config.lr_configs.base_learning_rate = 0.02
    config.checkpoint_steps = 100
    config.log_eval_steps = 400
    config.mixed_precision = "float32"
    return config
