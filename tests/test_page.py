"""Results pages (ivd_jax/io/page.py, sampling/page.py, evaluation/page.py) in a real browser.

Headless Chromium (the Debian package; .ci/run installs it) opens each page from file://: every
<img> must decode (natural size > 0), every <video> must reach its first frame, no console error
or failed load may occur, and every relative link must name a file that exists.
"""
import html
import json
import pathlib
import urllib.parse

import numpy as np
import pytest

import chromium  # tests/chromium.py  # pylint: disable=g-bad-import-order
from ivd_jax.evaluation import page as eval_page
from ivd_jax.io import images
from ivd_jax.io import page
from ivd_jax.io import ply
from ivd_jax.sampling import export
from ivd_jax.sampling import page as sample_page


@pytest.fixture(scope='module')
def browser_binary():
  binary = chromium.find_chromium()
  if binary is None:  # never a skip: CI installs it, and a page nobody opened is untested
    pytest.fail('headless Chromium is needed: apt-get install -y chromium (as .ci/run does)',
                pytrace=False)
  return binary


def _check_page(path, binary, screenshot=None, num_images=1, num_videos=0):
  """Opens `path` in Chromium; asserts everything loaded; returns the browser's report."""
  report = chromium.inspect_page(str(path), binary=binary, screenshot=screenshot)
  assert report['errors'] == []
  assert len(report['images']) >= num_images and len(report['videos']) >= num_videos
  for img in report['images']:
    assert img['width'] > 0 and img['height'] > 0, img
  for video in report['videos']:
    assert video['width'] > 0 and video['ready'] >= 2, video  # HAVE_CURRENT_DATA: a frame
  for href in report['links']:
    if href.startswith('#'):
      continue
    assert '://' not in href and not href.startswith('/'), href  # relative links only
    assert (pathlib.Path(path).parent / urllib.parse.unquote(href)).is_file(), href
  return report


def _text(path):
  return html.unescape(pathlib.Path(path).read_text())


# ------------------------------------------------------------------------------------------------
# The HTML helpers.
# ------------------------------------------------------------------------------------------------


def test_relative_links_local_and_bucket(tmp_path):
  assert page.relative(str(tmp_path / 'run' / 'a b.png'), str(tmp_path)) == 'run/a%20b.png'
  assert page.relative(str(tmp_path / 'x.json'), str(tmp_path / 'run')) == '../x.json'
  assert page.relative('gs://b/w/samples/r/v.png', 'gs://b/w') == 'samples/r/v.png'
  assert page.relative('gs://other/v.png', 'gs://b/w') == 'gs://other/v.png'


def test_figures_are_found_by_name():
  doc = {
      'consistency': {'psnr': 20.5, 'depth_agreement': 0.9, 'per_pair': list(range(50))},
      'consistency_ceiling': {'psnr': 22.0, 'depth_agreement': 0.99, 'per_pair': [1.0]},
      'tsed': {'tsed': 0.75, 'threshold': 2.0},
      'tsed_runs': {'generated': {'tsed': 0.5, 'sweep': {'1': 0.25}}, 'shuffled': {'tsed': 0.0},
                    'settings': {'error': 2.0}},
      'run': {'mesh_chamfer': 0.012, 'timings': {'consistency_s': 3.0}},
      'timings': {'consistency_s': 3.0},
      'sample_config': {'consistency': True, 'consistency_neighbours': 0},
      'shuffled_consistency': None,
  }
  found = dict(page.find_figures(doc))
  assert set(found) == {'consistency', 'consistency_ceiling', 'tsed', 'run / mesh_chamfer',
                        'shuffled_consistency', 'tsed_runs / generated', 'tsed_runs / shuffled'}
  # A dict of dicts is one set per entry (its settings are not figures).
  assert found['tsed_runs / generated'] == {'tsed': 0.5, 'sweep.1': 0.25}
  assert found['consistency'] == {'psnr': 20.5, 'depth_agreement': 0.9}  # long lists left out
  assert found['consistency_ceiling']['per_pair'] == [1.0]
  assert found['run / mesh_chamfer'] == {'value': 0.012}
  assert found['shuffled_consistency'] == {}
  p = page.Page('/tmp/x/index.html', 'figures')
  p.section('Consistency')
  p.figure_tables([('a', {'psnr': 1.0, 'n': 2}), ('b', {'tsed': 0.5}),
                   ('c', {'psnr': 3.0, 'n': 4})])
  rendered = p.render()
  assert rendered.count('<table>') == 2  # rows with the same fields share a table
  assert '<td class="num">3</td>' in rendered and '<td class="num">0.5</td>' in rendered
  assert page.fmt(0.123456) == '0.1235' and page.fmt(None) == '—' and page.fmt(True) == 'yes'


# ------------------------------------------------------------------------------------------------
# A sample run and an eval run, written by the exports themselves.
# ------------------------------------------------------------------------------------------------


def _fake_run(out, res=16, num_views=3):
  rng = np.random.RandomState(0)
  rgbd = rng.rand(num_views, res, res, 4).astype(np.float32)
  views = np.tile(np.eye(4, dtype=np.float32), (num_views, 1, 1))
  views[:, 2, 3] = -2.0
  mask = (rng.rand(num_views, res, res, 1) > 0.5).astype(np.float32)
  mask[0] = 0.0
  files = export.export_instance(
      str(out / 'instance_0000'), rgbd=rgbd, views=views, cond_rgbd=rgbd, cond_mask=mask,
      near=0.5, far=100.0, fov_deg=45.0, video=export.fusion_video(rgbd), fps=8.0,
      grid_view_px=128)
  export.export_run(str(out), rgbd=rgbd[None], views=views[None], labels=np.zeros(1, np.int32),
                    instance_ids=np.arange(1), grid_view_px=128)
  # A mesh the manifest does not name (written by another export): linked all the same.
  ply.save_ply(str(out / 'instance_0000' / 'mesh.ply'), np.zeros((3, 3)), np.zeros((3, 3)))
  manifest = {
      'run': 'page_test', 'viewset': 'custom', 'num_instances': 1, 'seed': 0,
      'resolution': res, 'devices': 1, 'from_photo': False,
      'timings': {'total_s': 1.5, 'consistency_s': 0.5},
      'sample_config': {'steps_cond': 2, 'consistency': True},
      'consistency': {'psnr': 19.25, 'depth_agreement': 0.875, 'covisible': 0.5, 'num_pairs': 6},
      'consistency_ceiling': {'psnr': 23.5, 'depth_agreement': 0.995, 'covisible': 0.5,
                              'num_pairs': 6},
      'tsed': {'tsed': 0.625, 'num_pairs': 2},
      'instances': [{'index': 0, 'label': 0, 'dir': 'instance_0000', 'files': files,
                     'poses': np.zeros((num_views, 3))}],
  }
  (out / 'manifest.json').write_text(json.dumps(manifest, default=lambda a: a.tolist()))
  return manifest


def test_run_page_shows_every_output(tmp_path, browser_binary):
  out = tmp_path / 'samples' / 'page_test'
  manifest = _fake_run(out)
  path = sample_page.write_run_page(str(out), manifest, back=[('up', str(tmp_path / 'x.html'))])
  (tmp_path / 'x.html').write_text('<!doctype html><title>x</title>')
  report = _check_page(path, browser_binary, num_images=5, num_videos=1)
  srcs = {img['src'] for img in report['images']}
  assert srcs == {'overview.png'} | {f'instance_0000/grid_{k}.png'
                                     for k in ('rgb', 'depth', 'cond', 'mask')}
  assert report['videos'][0]['src'].endswith('instance_0000/orbit.mp4')
  # The overview and grids are enlarged (nearest) so 16 px views show at 128 px.
  assert all(img['height'] == 128 for img in report['images'])
  for name in ('manifest.json', 'views.npz', 'instance_0000/points.ply', 'instance_0000/mesh.ply',
               'instance_0000/orbit.gif', 'instance_0000/view_01_cond.png', '../../x.html'):
    assert name in report['links']
  text = _text(path)
  for figure in ('19.25', '0.875', '23.5', '0.995', 'tsed', '0.625'):
    assert figure in text
  assert 'steps_cond' in text  # the settings


def test_eval_page(tmp_path, browser_binary):
  png = tmp_path / 'eval' / 'run.png'
  png.parent.mkdir()
  images.save_png(str(png), np.random.RandomState(1).rand(40, 60, 3))
  report = {
      'name': 'run', 'fid': 123.456, 'kid': 0.0521, 'kid_std': 0.001, 'inception_score': None,
      'num_images': 8, 'num_reference': 16, 'images': 'generated', 'views': 'novel',
      'image_size': [16, 16], 'consistency': {'psnr': 18.5, 'covisible': 0.25},
      'truth': {'psnr': 17.75, 'lpips': None, 'per_view': [1.0, 2.0]},
      'settings': {'sampling': {'steps_cond': 2}}, 'timings': {'total_s': 3.0},
      'json': str(tmp_path / 'eval' / 'run.json'), 'png': str(png),
  }
  (tmp_path / 'eval' / 'run.json').write_text(json.dumps(report))
  path = eval_page.write_report_page(str(tmp_path / 'eval' / 'run.html'), report)
  report_seen = _check_page(path, browser_binary, num_images=1)
  assert report_seen['images'][0]['src'] == 'run.png'
  text = _text(path)
  for figure in ('123.5', '0.0521', '18.5', '17.75', 'steps_cond'):
    assert figure in text


# ------------------------------------------------------------------------------------------------
# The smoke quickstart's pages (its run is shared with tests/test_quickstart.py).
# ------------------------------------------------------------------------------------------------


def test_quickstart_pages_open_in_chromium(smoke_quickstart, browser_binary, tmp_path):
  config, workdir, summary, printed = smoke_quickstart
  index = workdir / 'index.html'
  assert summary['page'] == str(index) and f'Results page: {index}' in printed
  shot = tmp_path / 'quickstart_page.png'
  report = _check_page(index, browser_binary, screenshot=str(shot), num_images=2, num_videos=2)
  assert shot.is_file() and shot.stat().st_size > 1000
  assert {'samples/quickstart_smoke/index.html',
          'samples/quickstart_smoke_novel/index.html'} <= set(report['links'])
  text = _text(index)
  saved = json.loads((workdir / 'quickstart_summary.json').read_text())
  for c in (saved['full_generation']['consistency'], saved['novel_views']['consistency'],
            saved['consistency_ceiling']):
    assert page.fmt(c['psnr']) in text and page.fmt(c['covisible']) in text
  for run in ('quickstart_smoke', 'quickstart_smoke_novel'):
    run_page = workdir / 'samples' / run / 'index.html'
    n = config.sample.num_instances
    run_report = _check_page(run_page, browser_binary, num_images=1 + 4 * n, num_videos=n)
    assert '../../index.html' in run_report['links']
    assert 'consistency_ceiling' in _text(run_page)  # rewritten once the ceiling was known
