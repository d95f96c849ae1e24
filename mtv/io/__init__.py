"""Model files in and out: experiment configs, the zoo registry, downloads, presets, Flax/Scenic
checkpoints, SavedModel and hub export."""
