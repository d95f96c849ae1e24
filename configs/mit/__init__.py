"""Experiment configs (mit), shipped as package data of mtv (mtv.configs)."""
