"""Pieces of `mtv.train`: schedules, optimizer, losses, initialisation, checkpoints, inputs, strategies."""
