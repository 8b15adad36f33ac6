r"""A picture of the warp at work: one procedural scene, its warps and masks, in one PNG panel.

  python -m ivd_jax.tools.warp_demo --out /tmp/warp_demo [--seed 3 --resolution 128]
  python -m ivd_jax.main --config=configs/warp_demo.py --workdir=/tmp/warp_demo

Each row is one target camera (yaw, pitch, radius). Columns: source colour, source depth, the
true render from the target camera, the forward warp into it (holes grey), the forward-warp mask
scored against the true co-visibility (white = correct, red = visible but not co-visible, blue =
co-visible but missed), the forward-backward warp (a G_c training condition, back in the source
view), its mask scored the same way, and the aggregation of the source and the previous row's
true render (row 0: the source alone) into this row's camera (docs/method.md §8, shown inside
mask_rgb). Writes warp_demo.png and warp_demo.json (the precision / recall / PSNR of each warp)
into the output directory.
"""
from __future__ import annotations

import io
import json
from typing import Any, Dict, List

import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageDraw

from ivd_jax import errors
from ivd_jax.data import procedural
from ivd_jax.evaluation import metrics
from ivd_jax.geometry import aggregate
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import warp
from ivd_jax.io import images
from ivd_jax.io import jsonio
from ivd_jax.io import paths

COLUMNS = ('source', 'source depth', 'true target', 'forward warp', 'fw mask vs truth',
           'fwd-bwd warp', 'fbw mask vs truth', 'aggregated')
HOLE = np.array([0.5, 0.5, 0.5], np.float32)


def parse_poses(text: str) -> np.ndarray:
  """'yaw,pitch,radius; ...' (radians) -> [V, 3]; ConfigError naming demo.poses if malformed."""
  try:
    rows = [[float(x) for x in row.split(',')] for row in text.split(';') if row.strip()]
    return cameras.viewset_poses(rows)
  except (ValueError, errors.UserError) as e:
    raise errors.ConfigError('demo.poses', f'cannot read {text!r} ({e})',
                             "give 'yaw,pitch[,radius]; ...' in radians, e.g. '0.3,0,1; -0.2,0.1'"
                             ) from None


def _score(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """White where both, red where only the mask, blue where only the truth."""
  out = np.zeros(mask.shape + (3,), np.float32)
  out[mask & truth] = 1.0
  out[mask & ~truth] = (1.0, 0.0, 0.0)
  out[~mask & truth] = (0.15, 0.3, 1.0)
  return out


def _stats(mask, truth, rgb, target) -> Dict[str, float]:
  hit = (mask & truth).sum()
  return dict(precision=float(hit / max(mask.sum(), 1)), recall=float(hit / max(truth.sum(), 1)),
              psnr_in_mask=metrics.psnr(np.sum((rgb[mask] - target[mask])**2), rgb[mask].size),
              coverage=float(mask.mean()))


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Renders the panel into `workdir`; returns the figures written to warp_demo.json."""
  c = config.demo
  if c.resolution < 16 or c.resolution % 2:
    raise errors.ConfigError('demo.resolution', f'{c.resolution} is too small or odd',
                             'use an even resolution >= 16, e.g. 128')
  if c.scale < 1:
    raise errors.ConfigError('demo.scale', f'{c.scale}', 'use an integer >= 1')
  poses = parse_poses(c.poses)
  n = c.resolution
  kw = dict(near=c.near, far=c.far, fov_deg=c.fov_deg, ssaa=c.ssaa, atol=c.atol, rtol=c.rtol)
  scene = procedural.sample_scene(c.seed)
  src = np.asarray(cameras.SOURCE_VIEW)
  source = procedural.render(scene, src, n, fov_deg=c.fov_deg)
  rgbd = procedural.render_rgbd(scene, src, n, near=c.near, far=c.far, fov_deg=c.fov_deg)
  views = np.asarray(cameras.views_from_poses(poses))
  fw = jax.jit(jax.vmap(lambda v: warp.warp_rgbd(rgbd, src, v, **kw)))(views)
  fbw = jax.jit(jax.vmap(lambda v: warp.forward_backward_warp(rgbd, src, v, **kw)))(views)
  fw, fbw = jax.device_get((fw, fbw))
  agg_fn = jax.jit(lambda b, vs, ok, t: aggregate.aggregate_views(
      b, vs, ok, t, near=c.near, far=c.far, fov_deg=c.fov_deg, ssaa=c.ssaa))

  tiles: List[np.ndarray] = []
  rows = []
  previous = (rgbd, src)
  for i, view in enumerate(views):
    true = procedural.render(scene, view, n, fov_deg=c.fov_deg)
    true_rgbd = procedural.render_rgbd(scene, view, n, near=c.near, far=c.far, fov_deg=c.fov_deg)
    covis_fw = procedural.covisibility(scene, view, true.depth, src, fov_deg=c.fov_deg)
    covis_fbw = procedural.covisibility(scene, src, source.depth, view, fov_deg=c.fov_deg)
    m_fw = fw.mask[i, ..., 0] > 0.5
    m_fbw = fbw.mask[i, ..., 0] > 0.5
    agg = jax.device_get(agg_fn(np.stack([rgbd, previous[0]]), np.stack([src, previous[1]]),
                                np.array([True, i > 0]), view))
    m_agg = agg.mask_rgb[..., 0] > 0.5
    covis_agg = covis_fw | procedural.covisibility(scene, view, true.depth, previous[1],
                                                   fov_deg=c.fov_deg)
    rows.append(dict(
        pose=[float(x) for x in poses[i]],
        forward_warp=_stats(m_fw, covis_fw, fw.rgbd[i, ..., :3], true.rgb),
        forward_backward_warp=_stats(m_fbw, covis_fbw, fbw.rgbd[i, ..., :3], source.rgb),
        aggregated=_stats(m_agg, covis_agg, agg.rgbd[..., :3], true.rgb)))
    tiles += [
        images.to_uint8(source.rgb),
        images.colourise_depth(rgbd[..., 3]),
        images.to_uint8(true.rgb),
        images.to_uint8(np.where(m_fw[..., None], fw.rgbd[i, ..., :3], HOLE)),
        images.to_uint8(_score(m_fw, covis_fw)),
        images.to_uint8(np.where(m_fbw[..., None], fbw.rgbd[i, ..., :3], HOLE)),
        images.to_uint8(_score(m_fbw, covis_fbw)),
        images.to_uint8(np.where(m_agg[..., None], agg.rgbd[..., :3], HOLE)),
    ]
    previous = (true_rgbd, view)

  tiles = np.stack(tiles).repeat(c.scale, axis=1).repeat(c.scale, axis=2)
  grid = images.image_grid(tiles, cols=len(COLUMNS), pad=4)
  header = 18
  panel = Image.new('RGB', (grid.shape[1], grid.shape[0] + header), (255, 255, 255))
  panel.paste(Image.fromarray(grid), (0, header))
  draw = ImageDraw.Draw(panel)
  width = tiles.shape[2] + 4
  for k, name in enumerate(COLUMNS):
    draw.text((k * width + 3, 3), name, fill=(0, 0, 0))
  png = paths.join(workdir, 'warp_demo.png')  # local or gs://
  buffer = io.BytesIO()
  panel.save(buffer, format='PNG')
  summary = dict(png=png, seed=c.seed, resolution=n, rows=rows)
  if jax.process_index() == 0:  # every process of a multi-process run computes the same panel
    paths.write_bytes(png, buffer.getvalue())
    paths.write_text(paths.join(workdir, 'warp_demo.json'),
                     json.dumps(jsonio.jsonable(summary), indent=1))
  for i, row in enumerate(rows):
    print(f"view {i} (yaw, pitch, r) = {row['pose']}: " + ', '.join(
        f"{k} precision {v['precision']:.4f} recall {v['recall']:.3f} PSNR {v['psnr_in_mask']:.1f}"
        for k, v in row.items() if k != 'pose'))
  print(f'wrote {png}')
  return summary
