"""The results page of a sample run: samples/<run>/index.html beside the files export writes.

Per instance: the view grid, the depth grid, the conditions G_c was given and their masks, the
orbit video, every other file (raw views, arrays, point cloud and any mesh) as links; for the run:
the overview, every consistency figure its manifest holds (ivd_jax.io.page finds them by name),
and the settings. Written by the sample mode after manifest.json, and again by the quickstart
once it has added the true views' ceiling; the quickstart's own page (WORKDIR/index.html) links
both runs' pages.
"""
from typing import Optional, Sequence

from ivd_jax.io import jsonio
from ivd_jax.io import page
from ivd_jax.io import paths

PAGE_NAME = 'index.html'
# The grids export writes, in page order, with what they show.
GRIDS = (
    ('grid_rgb', 'generated views (row-major, view 0 first)'),
    ('grid_depth', 'their depth (turbo: near red, far blue)'),
    ('grid_cond', 'condition G_c was given: earlier views warped in (holes black)'),
    ('grid_mask', 'condition mask (white: warped content; view 0 has none)'),
)
VIDEOS = ('webm', 'mp4')  # <source> order: the browser plays the first it can
_SHOWN = {name for name, _ in GRIDS} | set(VIDEOS) | {'views', 'num_points'}


def _subtitle(m: dict) -> str:
  start = 'a given first view' if m.get('from_photo') else 'G_u'
  n = m.get('num_instances', len(m.get('instances', [])))
  parts = [f'{n} instance{"" if n == 1 else "s"}',
           f'view set {m.get("viewset")}', f'{m.get("resolution")} px',
           f'view 0 from {start}', f'seed {m.get("seed")}']
  total = (m.get('timings') or {}).get('total_s')
  if total is not None:
    parts.append(f'sampled in {total:.0f} s on {m.get("devices")} device(s)')
  return ' · '.join(parts)


def _instance(p: page.Page, out_dir: str, entry: dict, has_classes: bool) -> None:
  folder = paths.join(out_dir, entry['dir'])
  files = entry.get('files') or {}
  label = f' (class {entry["label"]})' if has_classes and 'label' in entry else ''
  p.section(f'Instance {entry["index"]}{label}', anchor=entry['dir'], nav=False)
  p.row(p.image(paths.join(folder, files[name]), caption, alt=f'{entry["dir"]} {name}')
        for name, caption in GRIDS if name in files)
  videos = [paths.join(folder, files[k]) for k in VIDEOS if k in files]
  if videos:
    p.row([p.video(videos, 'fusion orbit: every view aggregated along a camera path '
                           '(colour | depth)')])
  figures = page.find_figures({k: v for k, v in entry.items() if k != 'files'})
  if figures:
    p.heading('Figures of this instance')
    p.figure_tables(figures)
  views = files.get('views') or []
  for kind in ('rgb', 'depth', 'cond'):
    named = [(f'{v:02d}', paths.join(folder, view[kind])) for v, view in enumerate(views)
             if kind in view]
    if named:
      p.links(named, label=f'views ({kind}, generated size):')
  meshes = page.mesh_files(folder, files.values())
  p.links([(paths.basename(m), m) for m in meshes],
          label='geometry (PLY / GLB: MeshLab, Blender):')
  p.links([(value, paths.join(folder, value)) for name, value in files.items()
           if name not in _SHOWN and isinstance(value, str) and
           paths.join(folder, value) not in meshes], label='files:')


def write_run_page(out_dir: str, manifest: dict,
                   back: Optional[Sequence[tuple[str, str]]] = None) -> str:
  """Writes out_dir/index.html for a sample run from its manifest; returns its path.

  Args:
    out_dir: the run folder (local or gs://) holding manifest.json and the instance folders.
    manifest: the run's manifest (sample mode), numpy values allowed.
    back: optional (label, path) links shown at the top, e.g. the quickstart's page.
  """
  m = jsonio.jsonable(manifest)
  p = page.Page(paths.join(out_dir, PAGE_NAME), f'ivd_jax samples: {m.get("run")}',
                _subtitle(m))
  p.section('Overview', anchor='overview')
  if back:
    p.links(back, label='up:')
  overview = paths.join(out_dir, 'overview.png')
  if paths.is_file(overview):
    p.row([p.image(overview, 'first views of every instance, one row each')])
  p.links([(name, paths.join(out_dir, name)) for name in ('manifest.json', 'views.npz')
           if paths.is_file(paths.join(out_dir, name))], label='run files:')
  instances = [i for i in m.get('instances', []) if 'dir' in i]
  if instances:
    p.links([(f'instance {i["index"]}', '#' + i['dir'])
             for i in instances], label='instances:')

  p.section('Consistency', anchor='consistency')
  figures = page.find_figures({k: v for k, v in m.items() if k != 'instances'})
  if any(fields for _, fields in figures):
    p.text('Pairwise: every view warped into every other view (docs/method.md §8), colour '
           'PSNR and depth agreement over co-visible pixels and the co-visible fraction; '
           '"ceiling" rows are the true views of procedural scenes on the same cameras; TSED '
           'rows (where present): the fraction of neighbouring view pairs whose SIFT matches lie '
           'within the epipolar threshold.', muted=True)
  p.figure_tables(figures or [('consistency', {})])

  has_classes = bool((m.get('cond_model') or {}).get('num_classes'))
  for entry in instances:
    _instance(p, out_dir, entry, has_classes)

  p.section('Settings', anchor='settings')
  if m.get('sample_config'):
    p.settings('sample config (config.sample)', m['sample_config'], open_=True)
  for key, value in m.items():  # a metric's own settings (e.g. TSED's thresholds)
    if page.is_figure_key(key) and isinstance(value, dict) and value.get('settings'):
      p.settings(f'{key} settings', value['settings'])
  for key, title in (('settings', 'sampler settings'), ('timings', 'timings (s)'),
                     ('uncond_model', 'G_u model'), ('cond_model', 'G_c model')):
    if m.get(key):
      p.settings(title, m[key])
  return p.write()


def write_quickstart_page(workdir: str, summary: dict, config: dict) -> str:
  """WORKDIR/index.html of a quickstart: every figure of its summary side by side (generated
  runs next to the true views' ceiling), each run's overview, first orbit video and page, the
  true views' meshes, timings and the config; returns its path."""
  s = jsonio.jsonable(summary)
  networks = f'shipped networks {s["pretrained"]}' if s.get('pretrained') else 'trained here'
  resolution = (config.get('data') or {}).get('resolution')
  p = page.Page(paths.join(workdir, PAGE_NAME), 'ivd_jax quickstart',
                f'{networks} · done in {s["timings"]["total_s"] / 60:.1f} min · '
                f'{resolution} px procedural scenes')
  p.section('Consistency', anchor='consistency')
  p.text('Generated view sets next to the true views of held-out procedural scenes on the same '
         'cameras (the ceiling).', muted=True)
  p.figure_tables(page.find_figures({k: v for k, v in s.items() if k != 'timings'}))
  truth_meshes = [m for d in ((s.get('mesh_ceiling') or {}).get('meshes') or [])
                  for m in page.mesh_files(d)]
  p.links([(paths.basename(paths.dirname(m)) + '/' + paths.basename(m), m)
           for m in truth_meshes], label="true views' fused meshes:")
  for key in ('full_generation', 'novel_views'):
    run = s[key]
    p.section(run['label'], anchor=key)
    p.links([('results page (every instance, depth, conditions, settings)',
              run.get('page') or paths.join(run['samples'], PAGE_NAME))])
    items = [p.image(run['overview'], 'first views of every instance')]
    if run['videos'] and paths.is_file(run['videos'][0]):
      items.append(p.video([run['videos'][0]], 'instance 0: fusion orbit (colour | depth)'))
    p.row(items)
  p.section('Settings', anchor='settings')
  p.settings('timings (s)', s['timings'], open_=True)
  p.settings('quickstart config', config)
  p.links([('quickstart_summary.json', paths.join(workdir, 'quickstart_summary.json'))])
  return p.write()
