"""Experiment configs, shipped as package data of mtv (mtv.configs)."""
