"""Experiment configs (ssv2), shipped as package data of mtv (mtv.configs)."""
