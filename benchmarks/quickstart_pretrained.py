"""`quickstart:pretrained` timed, with its pictures: the README's first look.

  python benchmarks/quickstart_pretrained.py [--workdir=/tmp/ivd_pretrained] \
      [--figures=benchmarks/figures] [--pretrained=DIR]

Runs the `pretrained` preset of configs/quickstart.py in a fresh workdir (the shipped demo
networks, or --pretrained=DIR for another export), then prints one JSON line: wall seconds per
stage (the summary's timings), the process's CPU seconds and the load average (other jobs on the
machine stretch the wall time, not the CPU time), and every consistency figure of the summary
(pairwise and TSED where present) beside the true views' ceiling. Writes to --figures:
pretrained_full_generation.png / pretrained_novel_views.png (the two overviews, views enlarged
nearest-neighbour), pretrained_instance0_grid.png (all views of the first generated instance)
and results_page.png (the top of DIR/index.html in headless Chromium, tests/chromium.py).
Never asserts a time.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

import chromium  # tests/chromium.py
from ivd_jax import main as main_lib
from ivd_jax import runtime
from ivd_jax.configs import quickstart as quickstart_config
from ivd_jax.io import page
# pylint: enable=g-import-not-at-top,wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/ivd_pretrained')
  parser.add_argument('--figures', default=os.path.join(ROOT, 'benchmarks', 'figures'))
  parser.add_argument('--pretrained', default='', help='default: the shipped demo networks')
  args = parser.parse_args()
  runtime.configure()  # XLA:CPU as `python -m ivd_jax.main` runs it
  if os.path.exists(args.workdir):
    shutil.rmtree(args.workdir)  # every stage from scratch (the compile cache still counts)
  config = quickstart_config.get_config('pretrained')
  if args.pretrained:
    config.pretrained = args.pretrained
  t0, cpu0 = time.perf_counter(), time.process_time()
  summary = main_lib.run(config, args.workdir)
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  figures = {name: fields for name, fields in page.find_figures(
      {k: v for k, v in summary.items() if k != 'timings'})}
  os.makedirs(args.figures, exist_ok=True)
  written = {}
  for key in ('full_generation', 'novel_views'):
    written[key] = os.path.join(args.figures, f'pretrained_{key}.png')
    shutil.copy(summary[key]['overview'], written[key])
  written['instance0'] = os.path.join(args.figures, 'pretrained_instance0_grid.png')
  shutil.copy(os.path.join(summary['full_generation']['instances'][0], 'grid_rgb.png'),
              written['instance0'])
  written['page'] = os.path.join(args.figures, 'results_page.png')
  seen = chromium.inspect_page(summary['page'], screenshot=written['page'], max_height=1500)
  print(json.dumps({
      'bench': 'quickstart_pretrained', 'pretrained': config.pretrained,
      'wall_s': round(wall, 1), 'cpu_s': round(cpu, 1), 'load_avg_1_5_15': os.getloadavg(),
      'timings': {k: round(v, 1) for k, v in summary['timings'].items()},
      'figures': figures, 'page': summary['page'], 'pictures': written,
      'page_images_loaded': sum(i['width'] > 0 for i in seen['images']),
      'page_errors': seen['errors'], 'jax': jax.__version__, 'cpus': os.cpu_count(),
      'machine': platform.machine(), 'date': time.strftime('%Y-%m-%d'),
  }, default=float))


if __name__ == '__main__':
  main()
