"""Diffusion math and samplers: pure functions over arrays, no Flax."""
