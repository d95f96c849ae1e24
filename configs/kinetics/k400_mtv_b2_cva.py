"""MTV-B (views Ti/8, S/4, B/2) with cross-view attention, trained on Kinetics-400.

Field names and values follow Scenic's `scenic/projects/mtv/configs/kinetics/k400_mtv_b2_cva.py`
(google-research/scenic, read at commit a6c4438309527730cde7c9c59d15c74e6113ea0a).
"""

import ml_collections

from mtv import variants

# Scenic ships these as 0 ("replace with the actual dataset size"); the schedule below scales with them.
KINETICS_400_TRAIN_SIZE = 0
KINETICS_400_VAL_SIZE = 0
KINETICS_400_TEST_SIZE = 0
MODEL_VARIANT = "Ti/8+S/4+B/2"


def get_config(runlocal: str = "") -> ml_collections.ConfigDict:
    """The experiment config; `runlocal` is accepted for config_flags' ':arg' and not used."""
    del runlocal
    config = ml_collections.ConfigDict()
    config.experiment_name = f"k400_mtv_{MODEL_VARIANT}"

    # Data: 32 frames taken every 2nd frame, shorter side 256, 224 crops, values in [-1, 1].
    config.dataset_name = "video_tfrecord_dataset"
    config.dataset_configs = ml_collections.ConfigDict()
    data = config.dataset_configs
    data.base_dir = "/path/to/dataset"
    data.tables = {
        "train": "train.tfrecord@1024",
        "validation": "validation.tfrecord@1024",
        "test": "test.tfrecord@1024",
    }
    data.examples_per_subset = {
        "train": KINETICS_400_TRAIN_SIZE,
        "validation": KINETICS_400_VAL_SIZE,
        "test": KINETICS_400_TEST_SIZE,
    }
    data.num_classes = 400
    config.data_dtype_str = "float32"
    data.num_frames = 32
    data.stride = 2
    data.min_resize = 256
    data.crop_size = 224
    data.one_hot_labels = True
    data.zero_centering = True

    # Test-time views: 4 temporal clips x 3 spatial crops.
    data.do_multicrop_test = True
    data.do_three_spatial_crops = True
    data.log_test_epochs = 10
    data.num_test_clips = 4
    data.test_batch_size = 4  # per host; Scenic wants the local device count here
    config.multicrop_clips_per_device = 2

    data.augmentation_params = ml_collections.ConfigDict()
    aug = data.augmentation_params
    aug.do_jitter_scale = True
    aug.scale_min_factor = 0.9
    aug.scale_max_factor = 1.33
    aug.prob_scale_jitter = 1.0
    aug.do_color_augment = True
    aug.prob_color_augment = 0.8
    aug.prob_color_drop = 0.1
    data.prefetch_to_device = 2

    # Model.
    config.model_name = "mtv_multiclass_classification"
    config.model = ml_collections.ConfigDict()
    config.model.classifier = "token"
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.model.stochastic_depth = 0.1
    config.model.view_configs = variants.parse_view_configs(MODEL_VARIANT)
    config.model.cross_view_fusion = ml_collections.ConfigDict({
        "type": "cross_view_attention",
        "fuse_in_descending_order": True,
        "use_query_config": True,
        "fusion_layers": (5, 11),
    })
    # With merge_axis 'channel' the global width is the sum of the view widths; hidden_size is unused.
    config.model.global_encoder_config = ml_collections.ConfigDict({
        "num_heads": 8,
        "mlp_dim": 3072,
        "num_layers": 12,
        "hidden_size": 768,
        "merge_axis": "channel",
    })
    config.model.temporal_encoding_config = ml_collections.ConfigDict({
        "kernel_init_method": "central_frame_initializer",
        "method": "3d_conv",
    })

    # Training.
    config.trainer_name = "mtv_trainer"
    config.optimizer = "momentum"
    config.optimizer_configs = ml_collections.ConfigDict()
    config.l2_decay_factor = 0
    config.max_grad_norm = 1
    config.label_smoothing = None
    config.num_training_epochs = 30
    config.batch_size = 64
    config.rng_seed = 0

    # One ImageNet ViT per view (Ti, S, B), inflated into the tubelet embeddings.
    config.init_from = ml_collections.ConfigDict()
    config.init_from.model_cfg = [
        ml_collections.ConfigDict({"model": {"classifier": "token"}}) for _ in range(3)
    ]
    config.init_from.model_type = "vit"
    # Scenic's placeholders: ViT checkpoints from google-research/vision_transformer ('big_vision'
    # format) or Scenic's baselines ('scenic' format).
    config.init_from.checkpoint_path = [
        "/path/to/vit-tiny",
        "/path/to/vit-small",
        "/path/to/vit-base",
    ]
    config.init_from.checkpoint_formats = ["big_vision", "big_vision", "big_vision"]
    config.init_from.restore_positional_embedding = True
    config.init_from.restore_input_embedding = True
    config.init_from.positional_embed_size_change = "tile"

    # Learning rate: cosine decay after 2.5 epochs of linear warm-up.
    steps_per_epoch = KINETICS_400_TRAIN_SIZE // config.batch_size
    total_steps = config.num_training_epochs * steps_per_epoch
    config.lr_configs = ml_collections.ConfigDict()
    config.lr_configs.learning_rate_schedule = "compound"
    config.lr_configs.factors = "constant * cosine_decay * linear_warmup"
    config.lr_configs.warmup_steps = 2.5 * steps_per_epoch
    config.lr_configs.steps_per_cycle = total_steps
    config.lr_configs.base_learning_rate = 1e-1

    # Logging.
    config.write_summary = True
    config.checkpoint = True
    config.debug_train = False
    config.debug_eval = False
    return config
