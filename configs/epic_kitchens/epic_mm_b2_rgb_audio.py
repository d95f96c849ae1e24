"""M&M (multimodal MTV) on EPIC-Kitchens-100: RGB (MTV-B views Ti/8, S/4, B/2) and audio.

Every field of `epic_mtv_b2_cva.py` is kept with its value (Scenic's names and Epic recipe, from
google-research/scenic's `scenic/projects/mtv/configs/epic_kitchens/epic_mtv_b2_cva.py`, read at commit
a6c4438309527730cde7c9c59d15c74e6113ea0a); the additions are `model.modalities` (one stream of MTV views
per modality) and `dataset_configs.audio`. Which values come from the M&M report (arXiv 2206.09852) and
which are our own choices is set out in docs/multimodal.md: the audio stream (ViT-B over 16x16
spectrogram patches), the audio features and the fusion layout are ours.
"""

import ml_collections

from mtv import variants

EPIC_TRAIN_SIZE = 67217
EPIC_VALID_SIZE = 9668
MODEL_VARIANT = "Ti/8+S/4+B/2"
AUDIO_VARIANT = "B/16x16"  # ViT size / (time x frequency) patch
NUM_FRAMES = 64
# 128 spectrogram frames at a 10 ms hop = 1.28 s = 64 frames at 50 fps (the EPIC-100 extension's rate).
AUDIO_FRAMES = 128
MEL_BINS = 128


def get_config(runlocal: str = "") -> ml_collections.ConfigDict:
    """The experiment config; `runlocal` is accepted for config_flags' ':arg' and not used."""
    del runlocal
    config = ml_collections.ConfigDict()
    config.experiment_name = f"epic_mm_{MODEL_VARIANT}_rgb_audio"

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
        "train": EPIC_TRAIN_SIZE,
        "validation": EPIC_VALID_SIZE,
        "test": EPIC_VALID_SIZE,
    }
    data.num_frames = NUM_FRAMES
    data.stride = 1
    data.min_resize = 256
    data.crop_size = 224
    data.class_splits = [300, 97]
    data.split_names = ["noun", "verb"]
    data.one_hot_labels = True
    data.zero_centering = True
    config.data_dtype_str = "float32"
    # Log-mel of the clip's own audio track, starting at its first frame (mtv.data.audio.AudioConfig names).
    data.audio = ml_collections.ConfigDict({
        "num_frames": AUDIO_FRAMES,
        "num_mel_bins": MEL_BINS,
        "sample_rate": 16000,
        "window_ms": 25.0,
        "hop_ms": 10.0,
        "fmin": 20.0,
        "log_offset": 1e-6,
    })

    data.test_on_val = True
    data.do_multicrop_test = True
    data.do_three_spatial_crops = False
    data.log_test_epochs = 10
    data.num_test_clips = 4
    data.test_batch_size = 8
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
    aug.do_rand_augment = True
    aug.rand_augment_num_layers = 3
    aug.rand_augment_magnitude = 10
    data.prefetch_to_device = 2

    config.model_name = "mtv_multimodal_multihead_classification"
    config.model = ml_collections.ConfigDict()
    config.model.classifier = "token"
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.model.stochastic_depth = 0.1
    # The RGB stream's views, under Scenic's field name.
    config.model.view_configs = variants.parse_view_configs(MODEL_VARIANT)
    # Streams in the fixed order rgb, audio; their views join one list for the multiview encoder.
    config.model.modalities = ml_collections.ConfigDict({
        "rgb": {"channels": 3},
        "audio": {"variant": AUDIO_VARIANT, "channels": 1, "num_frames": AUDIO_FRAMES, "mel_bins": MEL_BINS},
    })
    config.model.cross_view_fusion = ml_collections.ConfigDict({
        "type": "cross_view_attention",
        "fuse_in_descending_order": True,
        "use_query_config": True,
        "fusion_layers": (5, 11),
    })
    # merge_axis 'channel': the global width is the sum of all view widths (192+384+768+768 = 2112).
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

    config.trainer_name = "mtv_trainer"
    config.optimizer = "momentum"
    config.optimizer_configs = ml_collections.ConfigDict()
    config.l2_decay_factor = 0
    config.max_grad_norm = 1
    config.label_smoothing = 0.2
    config.num_training_epochs = 80
    config.batch_size = 128
    config.rng_seed = 0

    # Every stream starts from one Kinetics MTV-B checkpoint (mtv.training.multimodal_init).
    config.init_from = ml_collections.ConfigDict()
    config.init_from.checkpoint_path = "path_to_checkpoint"
    config.init_from.model_type = "mtv"
    config.init_from.restore_positional_embedding = True
    config.init_from.positional_embed_size_change = "resize"

    steps_per_epoch = EPIC_TRAIN_SIZE // config.batch_size
    total_steps = config.num_training_epochs * steps_per_epoch
    config.lr_configs = ml_collections.ConfigDict()
    config.lr_configs.learning_rate_schedule = "compound"
    config.lr_configs.factors = "constant * cosine_decay * linear_warmup"
    config.lr_configs.warmup_steps = 2.5 * steps_per_epoch
    config.lr_configs.steps_per_cycle = total_steps
    config.lr_configs.base_learning_rate = 2e-1

    config.log_eval_steps = 3000
    config.write_summary = True
    config.write_xm_measurements = True
    config.checkpoint = True
    config.debug_train = False
    config.debug_eval = False
    return config
