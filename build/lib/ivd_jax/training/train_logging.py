"""Training logs on process 0: metrics.jsonl, TensorBoard (tensorboardX), progress bar, previews."""
import io
import json
import shutil
import sys
import tempfile
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from absl import logging
from etils import epath
from tensorboardX import SummaryWriter
from tqdm import tqdm

from ivd_jax import roles
from ivd_jax.diffusion import samplers
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.io import images
from ivd_jax.io import paths
from ivd_jax.models import unet as unet_lib


class MetricWriter:
  """Appends metrics to WORKDIR/metrics.jsonl and TensorBoard; a no-op on other processes.

  On resume, lines of steps after the restored step (written by a run that was killed before its
  next checkpoint) are dropped, so metrics.jsonl reads like one uninterrupted run. Local files
  are appended to; on object stores (gs://...), which cannot append, the file is rewritten.
  TensorBoard events of a workdir on a bucket are written to a local folder and copied to
  WORKDIR/tensorboard at every flush (tensorboardX's own gs:// writer would re-upload from its
  destructor, possibly long after the run).
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int = 0):
    self.enabled = enabled
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self._local = not paths.is_remote(workdir)
    self._lines = []
    self._tb = None
    self._tb_dir = paths.join(workdir, 'tensorboard')
    self._tb_local = self._tb_dir if self._local else ''
    if not enabled:
      return
    if self.path.exists():
      lines = [l + '\n' for l in self.path.read_text().splitlines() if l.strip()]
      self._lines = [l for l in lines if json.loads(l).get('step', 0) <= resume_step]
      if len(self._lines) != len(lines):
        self.path.write_text(''.join(self._lines))
    if tensorboard:
      self._tb_local = self._tb_local or tempfile.mkdtemp(prefix='ivd_jax_tensorboard_')
      self._tb = SummaryWriter(self._tb_local, purge_step=resume_step + 1)

  def _flush_tensorboard(self) -> None:
    self._tb.flush()
    if not self._local:
      paths.copy_tree(self._tb_local, self._tb_dir)

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
      self._flush_tensorboard()

  def write_text(self, tag: str, text: str, step: int) -> None:
    if self._tb is not None:
      self._tb.add_text(tag, f'```\n{text}\n```', step)

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    if self._tb is not None:
      self._tb.add_image(tag, image, step, dataformats='HWC')
      self._flush_tensorboard()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      if not self._local:
        paths.copy_tree(self._tb_local, self._tb_dir)
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb = None


class Progress:
  """A tqdm bar over training steps with rate and ETA (stderr); silent when disabled."""

  def __init__(self, start: int, total: int, *, enabled: bool, desc: str):
    self._bar = None
    if enabled:
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


def preview_conditions(batch: dict[str, jax.Array], config: ml_collections.ConfigDict
                       ) -> Optional[dict[str, jax.Array]]:
  """The role's conditions of the first examples of a batch (fixed key); None if it has none."""
  role = roles.role_of(config)
  if role.make_condition is None:
    return None
  n = config.log.num_samples
  fn = jax.jit(lambda rgbd: dict(
      target=rgbd[:n], **role.make_condition(
          rgbd[:n], jax.random.PRNGKey(config.train.seed + 1), config)))
  out = fn(batch['rgbd'])
  # Replicate (all processes hold the full small arrays) so any host can read them.
  return jax.tree.map(lambda x: jax.device_put(x, _replicated_like(x)), out)


def make_preview_fn(model: unet_lib.UNet, config: ml_collections.ConfigDict
                    ) -> Callable[..., jax.Array]:
  """DDIM samples from EMA params: from noise, or from the role's conditions with edits.

  Predicted x_0 is clipped to [-1, 1] at every step: a young network's few-step DDIM otherwise
  amplifies its eps error at large t (x_0 = x_t / sqrt(abar_t) - ..., 1 / sqrt(abar_999) ~ 156)
  into saturated noise, and the previews would hide how far training has come.
  """
  schedule = schedule_lib.schedule_from_config(config.diffusion)
  role = roles.role_of(config)
  steps = int(config.log.sample_steps)
  num_classes = int(config.model.num_classes or 0)

  def preview(ema_params, key, cond):
    n = config.log.num_samples
    res = config.model.image_size
    k_x, k_hole = jax.random.split(key)
    x_T = jax.random.normal(k_x, (n, res, res, 4), jnp.float32)
    labels = (jnp.arange(n) % num_classes).astype(jnp.int32) if num_classes else None
    net = lambda x, t: model.apply({'params': ema_params}, x, t, labels)
    if cond is None:
      return samplers.ddim_sample(net, x_T, schedule=schedule, steps=steps, clip_denoised=True)
    eps_fn = role.eps_fn(net, cond, k_hole)
    edits = samplers.ConditionEdits(
        rgb=cond['y_rgb'], depth=cond['y_depth'], mask_rgb=cond['mask_rgb'], mask=cond['mask'],
        hull=None, rgb_weight=config.log.replace_rgb, depth_weight=config.log.replace_depth,
        hull_weight=config.log.constrain_depth)
    return samplers.ddim_sample(eps_fn, x_T, schedule=schedule, steps=steps, edits=edits,
                                clip_denoised=True)

  return jax.jit(preview)


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
  s = _to01(samples)
  tiles = []
  for i in range(s.shape[0]):
    row = []
    if cond is not None:
      row += [images.to_uint8(_to01(cond['y_rgb'][i]) * cond['mask_rgb'][i]),
              images.colourise_depth(_to01(cond['y_depth'][i]), cond['mask'][i])]
    row += [images.to_uint8(s[i, ..., :3]), images.colourise_depth(s[i, ..., 3:])]
    if cond is not None:
      row += [images.to_uint8(_to01(cond['target'][i][..., :3])),
              images.colourise_depth(_to01(cond['target'][i][..., 3:]))]
    tiles += row
  return images.image_grid(np.stack(tiles), cols=len(row))


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
