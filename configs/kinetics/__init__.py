"""Experiment configs (kinetics), shipped as package data of mtv (mtv.configs)."""
