"""Experiment configs (epic_kitchens), shipped as package data of mtv (mtv.configs)."""
