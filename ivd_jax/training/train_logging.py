"""Training logs on process 0: metrics.jsonl, TensorBoard (tensorboardX), progress bar, previews."""
import io
import json
import os
import sys
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from PIL import Image
from absl import logging
from etils import epath

from ivd_jax.data import pairs as pairs_lib


class MetricWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard; a no-op on other processes.

  On resume, lines of steps after the restored step (written by a run that was killed before its
  next checkpoint) are dropped, so metrics.jsonl reads like one uninterrupted run. Local files
  are appended to; on object stores (gs://...), which cannot append, the file is rewritten.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int = 0):
    self.enabled = enabled
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self._local = '://' not in str(workdir)
    self._lines = []
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      lines = [l + '\n' for l in self.path.read_text().splitlines() if l.strip()]
      self._lines = [l for l in lines if json.loads(l).get('step', 0) <= resume_step]
      if len(self._lines) != len(lines):
        self.path.write_text(''.join(self._lines))
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1)

  def write_metrics(self, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    line = json.dumps(metrics) + '\n'
    if self._local:
      with open(self.path, 'a') as f:
        f.write(line)
    else:
      self._lines.append(line)
      self.path.write_text(''.join(self._lines))
    if self._tb is not None:
      step = int(metrics['step'])
      for k, v in metrics.items():
        if k != 'step':
          self._tb.add_scalar(f'train/{k}', v, step)
      self._tb.flush()

  def write_text(self, tag: str, text: str, step: int) -> None:
    if self._tb is not None:
      self._tb.add_text(tag, f'```\n{text}\n```', step)

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    if self._tb is not None:
      self._tb.add_image(tag, image, step, dataformats='HWC')
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A tqdm bar over training steps with rate and ETA (stderr); silent when disabled."""

  def __init__(self, start: int, total: int, *, enabled: bool, desc: str):
    self._bar = None
    if enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=start, desc=desc, unit='step', file=sys.stderr,
                       dynamic_ncols=True, smoothing=0.1)
    self._n = start

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._n)
    self._n = step

  def set_postfix(self, **kwargs: float) -> None:
    if self._bar is not None:
      self._bar.set_postfix({k: f'{v:.4f}' for k, v in kwargs.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def preview_conditions(batch: dict[str, jax.Array], config: ml_collections.ConfigDict,
                       pair_kwargs: dict[str, Any]) -> dict[str, jax.Array]:
  """G_c conditions for the preview grids: pairs of the first examples of a batch, fixed key."""
  n = config.log.num_samples
  fn = jax.jit(lambda rgbd: dict(
      target=rgbd[:n], **pairs_lib.make_training_pairs(
          rgbd[:n], jax.random.PRNGKey(config.train.seed + 1), **pair_kwargs)))
  out = fn(batch['rgbd'])
  # Replicate (all processes hold the full small arrays) so any host can read them.
  return jax.tree.map(lambda x: jax.device_put(x, _replicated_like(x)), out)


def _replicated_like(x: jax.Array) -> jax.sharding.Sharding:
  sharding = x.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return sharding


def _to01(x: np.ndarray) -> np.ndarray:
  return np.clip((np.asarray(x, np.float32) + 1.0) * 0.5, 0.0, 1.0)


def preview_grid(samples: np.ndarray, cond: Optional[dict[str, np.ndarray]]) -> np.ndarray:
  """One uint8 picture: per example a row of RGB and colourised depth tiles.

  G_u rows: [sample RGB, sample depth]. G_c rows: [condition RGB, condition depth, sample RGB,
  sample depth, target RGB, target depth]; condition holes are black.
  """
  from ivd_jax.inference import export  # pylint: disable=g-import-not-at-top
  s = _to01(samples)
  tiles = []
  for i in range(s.shape[0]):
    row = []
    if cond is not None:
      row += [export.to_uint8(_to01(cond['y_rgb'][i]) * cond['mask_rgb'][i]),
              export.colourise_depth(_to01(cond['y_depth'][i]), cond['mask'][i])]
    row += [export.to_uint8(s[i, ..., :3]), export.colourise_depth(s[i, ..., 3:])]
    if cond is not None:
      row += [export.to_uint8(_to01(cond['target'][i][..., :3])),
              export.colourise_depth(_to01(cond['target'][i][..., 3:]))]
    tiles += row
  return export.image_grid(np.stack(tiles), cols=len(row))


def write_preview(writer: MetricWriter, workdir: str, step: int, preview_fn: Callable[..., Any],
                  ema_params: Any, cond: Optional[dict[str, jax.Array]],
                  config: ml_collections.ConfigDict) -> Optional[str]:
  """Samples with EMA params (every process computes; process 0 writes PNG and TensorBoard)."""
  net_cond = None if cond is None else {k: v for k, v in cond.items() if k != 'target'}
  samples = preview_fn(ema_params, jax.random.PRNGKey(config.train.seed + 2), net_cond)
  samples = jax.device_put(samples, _replicated_like(samples))
  if not writer.enabled:
    return None
  host_cond = None if cond is None else jax.tree.map(np.asarray, jax.device_get(cond))
  grid = preview_grid(np.asarray(jax.device_get(samples)), host_cond)
  path = epath.Path(workdir) / 'samples' / f'step_{step:08d}.png'
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format='PNG')
  path.write_bytes(buffer.getvalue())
  writer.write_image('samples', grid, step)
  logging.info('preview samples of step %d: %s', step, path)
  return path
