"""Depth encodings of docs/method.md §3.

The networks see depth as a z-buffer-normalised disparity:
  zbuf = (1/near - 1/d) / (1/near - 1/far), clipped to [0, 1]
and the network encoding maps [0, 1] to [-1, 1]. Every function works on numpy and jax arrays
(jnp operations on numpy inputs) and is jittable.
"""
from typing import Union

import jax.numpy as jnp
import numpy as np

Array = Union[np.ndarray, jnp.ndarray]

# The inverse clips the z-buffer value away from 0 and 1 so that depth stays finite (docs/method.md
# §3).
ZBUF_EPS = 1e-6
# MiDaS raw disparity scale of the reference's per-image files (docs/method.md §3).
MIDAS_SCALE = 6250.0
MIDAS_MIN_DISPARITY = 1e-3


def zbuf_from_depth(depth: Array, near: float, far: float) -> jnp.ndarray:
  """Planar depth -> z-buffer encoding in [0, 1] (0 = near plane, 1 = far plane)."""
  depth = jnp.clip(depth, near, far)
  return (1.0 / near - 1.0 / depth) / (1.0 / near - 1.0 / far)


def depth_from_zbuf(zbuf: Array, near: float, far: float) -> jnp.ndarray:
  """Z-buffer encoding -> planar depth; zbuf is clipped to [1e-6, 1 - 1e-6] first."""
  zbuf = jnp.clip(zbuf, ZBUF_EPS, 1.0 - ZBUF_EPS)
  return near * far / (far - (far - near) * zbuf)


def zbuf_from_midas(disparity: Array, near: float, far: float) -> Array:
  """Raw MiDaS disparity (reference scale) of ONE image -> z-buffer encoding in [0, 1].

  disp /= 6250; if disp.max() > 1/near the nearest point is put at depth `near`;
  disp = max(disp, 1e-3); zbuf = clip((disp - 1/near) / (1/far - 1/near), 0, 1).
  Numpy input gives a numpy result (used by data preparation on the host), jax input a jax one.
  """
  xp = np if isinstance(disparity, np.ndarray) else jnp
  disp = xp.asarray(disparity, dtype=xp.float32) / MIDAS_SCALE
  peak = xp.max(disp)
  disp = xp.where(peak > 1.0 / near, disp / (peak * near), disp)
  disp = xp.maximum(disp, MIDAS_MIN_DISPARITY)
  zbuf = xp.clip((disp - 1.0 / near) / (1.0 / far - 1.0 / near), 0.0, 1.0)
  return zbuf.astype(xp.float32)


def to_network(x01: Array) -> jnp.ndarray:
  """[0, 1] -> network encoding [-1, 1]."""
  return 2.0 * x01 - 1.0


def from_network(x: Array) -> jnp.ndarray:
  """Network encoding [-1, 1] -> [0, 1]."""
  return (x + 1.0) / 2.0
