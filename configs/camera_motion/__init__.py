"""Experiment configs (camera_motion), shipped as package data of mtv (mtv.configs)."""
