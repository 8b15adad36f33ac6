r"""TSED and the fused mesh on true views of procedural scenes; one JSON line per case.

  .venv/bin/python benchmarks/consistency.py                   # 32 and 128 px, 4 scenes, 3x9
  .venv/bin/python benchmarks/consistency.py --sizes 32 --scenes 2

tsed: evaluation/tsed.py at the sample section's defaults (configs/common.py: T_error 2 px at
256 px, T_matches 10, each view with its 2 nearest cameras) on the exact renders of procedural
scenes 0..S-1 on the 3x9 cameras (the quickstart's view set), their shuffled control, and the
seconds per view (SIFT at 256 px) and per pair (matching). mesh: sampling/mesh.py at the default
box and voxel 0.025 (truncation 3 voxels): TSDF fusion seconds (compile, then a steady call),
marching cubes seconds, vertices / faces, and the Chamfer distance to the scenes' analytic
surfaces (data/surfaces.py: exact distances of 200 000 points on the mesh; the seen surfaces
from renders at twice the size), averaged over the scenes. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.configs import common
from ivd_jax.data import procedural
from ivd_jax.data import surfaces
from ivd_jax.evaluation import mesh as mesh_eval
from ivd_jax.evaluation import tsed as tsed_lib
from ivd_jax.geometry import cameras
from ivd_jax.sampling import mesh as mesh_lib

NEAR, FAR = 0.5, 100.0  # the procedural data's encoding


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[32, 128])
  parser.add_argument('--scenes', type=int, default=4)
  parser.add_argument('--viewset', default='3x9')
  args = parser.parse_args(argv)
  s = common.sample_section()
  settings = tsed_lib.TsedSettings.from_config(s)
  mesh_settings = mesh_lib.MeshSettings.from_config(s)
  views = np.asarray(cameras.views_from_poses(cameras.viewset_poses(args.viewset)))
  info = dict(machine=f'{os.cpu_count()}-core {platform.machine()} CPU',
              backend=jax.default_backend(), jax=jax.__version__, viewset=args.viewset,
              scenes=args.scenes)
  for size in args.sizes:
    scenes = [procedural.sample_scene(i) for i in range(args.scenes)]
    rgbd = np.stack([np.stack([procedural.render_rgbd(sc, v, size, near=NEAR, far=FAR)
                               for v in views]) for sc in scenes])
    start, cpu = time.perf_counter(), time.process_time()
    out = tsed_lib.tsed(rgbd, views, fov_deg=45.0, settings=settings)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps(dict(bench='tsed', size=size, true_views=out['views'],
                          shuffled=out['shuffled'], seconds=round(seconds, 2),
                          cpu_s_per_view=round(cpu / rgbd.shape[0] / rgbd.shape[1], 3),
                          settings=settings.as_dict(), **info)), flush=True)
    figures, timing = [], []
    for k, scene in enumerate(scenes):
      volume_args = dict(near=NEAR, far=FAR, fov_deg=45.0, bounds=mesh_settings.bounds,
                         voxel=mesh_settings.voxel,
                         truncation=mesh_settings.truncation * mesh_settings.voxel)
      t0 = time.perf_counter()
      volume = mesh_lib.fuse_views(rgbd[k], views, **volume_args)
      t1 = time.perf_counter()
      volume = mesh_lib.fuse_views(rgbd[k], views, **volume_args)
      t2 = time.perf_counter()
      fused = mesh_lib.extract_mesh(volume, origin=mesh_settings.bounds[0],
                                    voxel=mesh_settings.voxel)
      t3 = time.perf_counter()
      timing.append((t1 - t0, t2 - t1, t3 - t2, len(fused.vertices), len(fused.faces)))
      on_mesh = mesh_eval.sample_surface(fused.vertices, fused.faces, 200_000, seed=k)
      seen = surfaces.surface_points(scene, views, 2 * size, fov_deg=45.0,
                                     bounds=mesh_settings.bounds)
      figures.append(mesh_eval.chamfer(on_mesh, seen, within=mesh_settings.voxel,
                                       mesh_to_surface=surfaces.distance(scene, on_mesh)))
    mean = {key: round(float(np.mean([f[key] for f in figures])), 5)
            for key in ('chamfer', 'accuracy', 'completeness', 'precision', 'recall')}
    t = np.mean(np.array(timing), axis=0)
    print(json.dumps(dict(bench='mesh', size=size, **mean,
                          first_fuse_s=round(t[0], 2), fuse_s=round(t[1], 2),
                          marching_cubes_s=round(t[2], 2), vertices=int(t[3]), faces=int(t[4]),
                          grid=list(volume.tsdf.shape), voxel=mesh_settings.voxel, **info)),
          flush=True)


if __name__ == '__main__':
  main()
