"""The results page of an eval run: eval/<name>.html beside eval/<name>.json and <name>.png.

Scores (FID / IS / KID), every consistency and truth figure the report holds (found by name,
ivd_jax.io.page), the report picture, and the settings: what the JSON says, readable.
"""
from ivd_jax.io import jsonio
from ivd_jax.io import page
from ivd_jax.io import paths

_SCORES = ('fid', 'inception_score', 'inception_score_std', 'kid', 'kid_std', 'num_images',
           'num_reference', 'images', 'views', 'image_size')


def write_report_page(path: str, report: dict) -> str:
  """Writes the page of an eval report (the dict written to eval/<name>.json); returns `path`."""
  r = jsonio.jsonable(report)
  size = 'x'.join(str(v) for v in r.get('image_size') or [])
  p = page.Page(path, f'ivd_jax eval: {r.get("name")}',
                f'{r.get("num_images")} {r.get("images")} images ({r.get("views")} views, '
                f'{size} px) against {r.get("num_reference")} real images')
  p.section('Scores', anchor='scores')
  p.table([(k, r[k]) for k in _SCORES if k in r])
  if r.get('inception_score_note'):
    p.text(r['inception_score_note'], muted=True)
  p.section('Consistency and truth', anchor='consistency')
  figures = page.find_figures(r)
  if isinstance(r.get('truth'), dict):
    figures.append(('truth (novel views from the true view 0 vs the true novel views)',
                    {k: v for k, v in page.flatten(r['truth'])
                     if not isinstance(v, list) or len(v) <= 12}))
  p.figure_tables(figures or [('consistency', {})])
  if r.get('png') and paths.is_file(r['png']):
    p.section('Pictures', anchor='pictures')
    p.row([p.image(r['png'], 'scores and samples (eval report picture)')])
  p.section('Settings', anchor='settings')
  p.settings('settings', r.get('settings') or {}, open_=True)
  p.settings('timings (s)', r.get('timings') or {})
  if r.get('json'):
    p.links([(paths.basename(r['json']), r['json'])], label='report:')
  return p.write()
