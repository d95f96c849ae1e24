"""Pieces of `mtv.training.trainer`: schedules, optimizer, losses, initialisation, checkpoints, inputs, strategies."""
