"""Experiment configs: every default number of ivd_jax (ml_collections ConfigDicts, no library code).

Reachable by file path from a clone (`--config=configs/uncond.py:tiny`) and by bare name from any
directory once installed (`ivd-jax --config=uncond:tiny`).
"""
