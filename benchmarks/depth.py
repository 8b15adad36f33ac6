"""Depth estimator throughput: images/s of the whole hook (preprocess, network, resize back).

  python benchmarks/depth.py                       # Depth Anything V2 base, 512 px images
  python benchmarks/depth.py --models=da2_small,da2_base,beit_large_512 --batch=4
  python benchmarks/depth.py --torch_baseline     # + transformers (PyTorch CPU), same model

Random weights (speed does not depend on them); one JSON line per case. Throughput is measured
after one warm-up call (compilation), over --repeats calls of --batch images of --size px.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from ivd_jax.models import depth_estimator
from ivd_jax.models import dpt

CONFIGS = {
    'da2_small': lambda: dpt.depth_anything_v2('small'),
    'da2_base': lambda: dpt.depth_anything_v2('base'),
    'da2_large': lambda: dpt.depth_anything_v2('large'),
    'beit_large_512': dpt.dpt_beit_large_512,
}


def bench(name: str, size: int, batch: int, repeats: int, dtype: str) -> dict:
  config = CONFIGS[name]()
  p = config.backbone.patch_size
  params = jax.jit(lambda k: dpt.DPT(config).init(k, np.zeros((1, 2 * p, 2 * p, 3), np.float32)))(
      jax.random.PRNGKey(0))['params']
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, f'{name}.npz')
    depth_estimator.save_depth_model(path, config, params)
    del params
    est = depth_estimator.estimator(weights=path, batch_size=batch, dtype=dtype)
  start = time.perf_counter()
  est(images)  # compile + first run
  compile_s = time.perf_counter() - start
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    out = est(images)
  seconds = time.perf_counter() - start
  cpu = time.process_time() - cpu
  nh, nw = depth_estimator.network_input_size(size, size, est.preprocessing)
  n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(dpt.param_shapes(config)))
  return {'benchmark': 'depth_estimator', 'model': name, 'params_M': round(n_params / 1e6, 1),
          'image_px': size, 'network_px': [nh, nw], 'batch': est.batch_size, 'dtype': dtype,
          'images_per_s': round(repeats * batch / seconds, 3),
          'ms_per_image': round(1e3 * seconds / (repeats * batch), 1),
          'cpu_s_per_image': round(cpu / (repeats * batch), 2),
          'first_call_s': round(compile_s, 1), 'finite': bool(np.isfinite(out).all()),
          'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'jax': jax.__version__, 'python': platform.python_version()}


def bench_torch(name: str, size: int, batch: int, repeats: int) -> dict:
  """The same model in PyTorch (transformers, CPU): processor, network, post-processing."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  size_name = name.split('_')[1]
  hidden, layers, heads, out, neck, fusion = {
      'small': (384, 12, 6, [3, 6, 9, 12], [48, 96, 192, 384], 64),
      'base': (768, 12, 12, [3, 6, 9, 12], [96, 192, 384, 768], 128),
      'large': (1024, 24, 16, [5, 12, 18, 24], [256, 512, 1024, 1024], 256)}[size_name]
  backbone = transformers.Dinov2Config(
      image_size=518, patch_size=14, num_hidden_layers=layers, hidden_size=hidden,
      num_attention_heads=heads, out_indices=out, apply_layernorm=True,
      reshape_hidden_states=False)
  model = transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig(
      backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=neck,
      fusion_hidden_size=fusion)).eval()
  proc = transformers.DPTImageProcessor(
      size={'height': 518, 'width': 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
      image_mean=list(depth_estimator.IMAGENET_MEAN), image_std=list(depth_estimator.IMAGENET_STD),
      resample=3)
  images = list(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))

  def run():
    with torch.no_grad():
      outputs = model(**proc(images=images, return_tensors='pt'))
    return proc.post_process_depth_estimation(outputs, target_sizes=[(size, size)] * batch)

  run()
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    run()
  seconds = time.perf_counter() - start
  cpu = time.process_time() - cpu
  return {'benchmark': 'depth_estimator_torch_baseline', 'model': name, 'image_px': size,
          'batch': batch, 'images_per_s': round(repeats * batch / seconds, 3),
          'ms_per_image': round(1e3 * seconds / (repeats * batch), 1),
          'cpu_s_per_image': round(cpu / (repeats * batch), 2), 'torch': torch.__version__,
          'threads': torch.get_num_threads()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='da2_base', help=f'comma list of {sorted(CONFIGS)}')
  parser.add_argument('--size', type=int, default=512, help='square input image size (px)')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--torch_baseline', action='store_true',
                      help='also time transformers (PyTorch CPU) on the Depth Anything models')
  args = parser.parse_args()
  for name in args.models.split(','):
    print(json.dumps(bench(name, args.size, args.batch, args.repeats, args.dtype)), flush=True)
    if args.torch_baseline and name.startswith('da2_'):
      print(json.dumps(bench_torch(name, args.size, args.batch, args.repeats)), flush=True)


if __name__ == '__main__':
  main()
