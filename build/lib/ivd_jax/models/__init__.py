"""Flax networks: the ADM UNet, Inception features, monocular depth."""
