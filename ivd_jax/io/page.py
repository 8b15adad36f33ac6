"""Results pages: one index.html per run, showing its pictures, videos, figures and settings.

Plain HTML and CSS, no script and nothing fetched from the network, so a page opens offline from
file:// (or from a bucket's static hosting); every link is relative to the page, so a run's
folder can be copied or served as it is. Pictures are drawn with `image-rendering: pixelated`:
32 px views stay sharp squares, not blur.

Figures are found by name, not by a fixed list: every dict (or number) under a key that mentions
consistency, TSED, Chamfer or a mesh is a row of a table, and rows with the same fields share a
table, so a metric added to a manifest, an eval report or the quickstart summary appears without
touching this module.
"""
import html
import os
import posixpath
import urllib.parse
from typing import Any, Iterable, Mapping, Sequence

from ivd_jax.io import paths

# Keys whose values are figures (lower-case substrings).
FIGURE_KEYS = ('consisten', 'tsed', 'chamfer', 'mesh')
# Sections that hold settings or timings, never figures (`consistency_s`, `sample.consistency`).
NOT_FIGURES = ('timings', 'settings', 'sample_config', 'config', 'sampling')
# Files linked as geometry (open in Blender / MeshLab).
MESH_SUFFIXES = ('.ply', '.glb', '.obj')
# Lists up to this long are shown inline; longer ones (per-pair values, poses) are counted.
_INLINE_LIST = 12

_CSS = """
:root { --ink: #1d2430; --muted: #5b6575; --line: #d9dee7; --card: #ffffff; --bg: #f3f5f8;
        --accent: #2458c6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { background: #172033; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c8d1e3; }
nav { padding: 8px 28px; background: #e6eaf1; border-bottom: 1px solid var(--line); }
nav a { margin-right: 14px; }
main { padding: 18px 28px 40px; max-width: 1500px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 18px; margin: 0 0 18px; }
h2 { font-size: 18px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; color: var(--muted); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
img, video { image-rendering: pixelated; image-rendering: crisp-edges; max-width: 100%;
             height: auto; background: #000; border-radius: 3px; display: block; }
video { width: 512px; }
table { border-collapse: collapse; margin: 4px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; }
th { background: #f0f3f8; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
         font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: #f6f8fb; border: 1px solid var(--line); padding: 10px; overflow: auto;
      max-height: 480px; font-size: 12px; }
.files a { margin-right: 12px; white-space: nowrap; }
.muted { color: var(--muted); }
"""


def relative(target: str, start: str) -> str:
  """The URL of `target` relative to the folder `start` (both local, or both on one bucket)."""
  if paths.is_remote(target) or paths.is_remote(start):
    target, start = str(target), str(start).rstrip('/')
    if not target.startswith(start + '/'):
      return target  # elsewhere: the absolute URL
    rel = target[len(start) + 1:]
  else:
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(start))
  return urllib.parse.quote(rel.replace(os.sep, '/'))


def fmt(value: Any) -> str:
  """A value for a table cell: 4 significant digits for floats, '—' for missing."""
  if value is None:
    return '—'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) < 1e5 else f'{value:.3e}'
  if isinstance(value, (list, tuple)):
    if len(value) <= _INLINE_LIST and all(not isinstance(v, (dict, list, tuple)) for v in value):
      return ', '.join(fmt(v) for v in value)
    return f'[{len(value)} values]'
  return str(value)


def flatten(tree: Any, prefix: str = '') -> list[tuple[str, Any]]:
  """Nested dicts -> [(dotted key, leaf)] in insertion order."""
  if not isinstance(tree, Mapping):
    return [(prefix, tree)]
  rows = []
  for key, value in tree.items():
    name = f'{prefix}.{key}' if prefix else str(key)
    rows.extend(flatten(value, name) if isinstance(value, Mapping) and value else
                [(name, value)])
  return rows


def is_figure_key(key: str) -> bool:
  return any(k in str(key).lower() for k in FIGURE_KEYS)


def find_figures(doc: Any, prefix: str = '', depth: int = 2) -> list[tuple[str, dict]]:
  """[(name, {field: value})] of every figure set in `doc` (keys matching FIGURE_KEYS).

  A dict under a figure key is one set (its nested dicts flattened, long lists left out), or,
  when every entry of it is a dict, one set per entry ({'generated': {...}, 'shuffled': {...}});
  a number is a set with the field 'value'; None (not measured) is a set with no fields. Other
  dicts are searched `depth` levels down, their names prefixed; NOT_FIGURES are skipped.
  """
  found = []
  if not isinstance(doc, Mapping):
    return found
  for key, value in doc.items():
    name = f'{prefix} / {key}' if prefix else str(key)
    if key in NOT_FIGURES or isinstance(value, bool):
      continue
    if is_figure_key(key) and (value is None or isinstance(value, (Mapping, int, float))):
      subsets = ({k: v for k, v in value.items() if k not in NOT_FIGURES}
                 if isinstance(value, Mapping) else {})
      if subsets and all(isinstance(v, Mapping) for v in subsets.values()):
        found.extend(find_figures({f'{key} / {k}': v for k, v in subsets.items()}, prefix, 0))
        continue
      if isinstance(value, Mapping):
        fields = {k: v for k, v in flatten(value) if not isinstance(v, (list, tuple)) or (
            len(v) <= _INLINE_LIST and all(isinstance(x, (int, float)) for x in v))}
      else:
        fields = {} if value is None else {'value': value}
      found.append((name, fields))
    elif isinstance(value, Mapping) and depth > 0:
      found.extend(find_figures(value, name, depth - 1))
  return found


class Page:
  """An HTML page built from parts; `write` puts it at its path (local or gs://)."""

  def __init__(self, path: str, title: str, subtitle: str = ''):
    self.path, self.dir = path, paths.dirname(path)
    self.title, self.subtitle = title, subtitle
    self.nav: list[tuple[str, str]] = []
    self.parts: list[str] = []
    self._open = False  # inside a <section>

  def href(self, target: str) -> str:
    """A file's link from this page (targets are paths, local or remote; '#x' stays)."""
    return target if target.startswith('#') else relative(target, self.dir)

  def section(self, title: str, anchor: str = '', nav: bool = True) -> None:
    if self._open:
      self.parts.append('</section>')
    self._open = True
    anchor = anchor or f'section{len(self.nav)}'
    if nav:
      self.nav.append((title, anchor))
    self.parts.append(f'<section id="{html.escape(anchor)}"><h2>{html.escape(title)}</h2>')

  def heading(self, text: str) -> None:
    self.parts.append(f'<h3>{html.escape(text)}</h3>')

  def text(self, text: str, muted: bool = False) -> None:
    cls = ' class="muted"' if muted else ''
    self.parts.append(f'<p{cls}>{html.escape(text)}</p>')

  def row(self, items: Iterable[str]) -> None:
    """Several figures side by side (each an `image` / `video` string)."""
    self.parts.append('<div class="row">' + ''.join(items) + '</div>')

  def image(self, target: str, caption: str = '', alt: str = '') -> str:
    src = html.escape(self.href(target))
    cap = f'<figcaption>{html.escape(caption)}</figcaption>' if caption else ''
    return (f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(alt or caption)}" '
            f'loading="lazy"></a>{cap}</figure>')

  def video(self, targets: Sequence[str], caption: str = '', width: int = 0) -> str:
    """A looping, muted <video> of the first playable source (MP4 H.264 / WebM)."""
    sources = ''.join(
        f'<source src="{html.escape(self.href(t))}" type="video/{_video_type(t)}">'
        for t in targets)
    style = f' style="width:{int(width)}px"' if width else ''
    cap = f'<figcaption>{html.escape(caption)}</figcaption>' if caption else ''
    return (f'<figure><video controls autoplay loop muted playsinline preload="auto"{style}>'
            f'{sources}</video>{cap}</figure>')

  def links(self, targets: Iterable[tuple[str, str]], label: str = '') -> None:
    """A line of links (nothing when there are none)."""
    items = ' '.join(f'<a href="{html.escape(self.href(t))}">{html.escape(name)}</a>'
                     for name, t in targets)  # spaces: long lists wrap between links
    if not items:
      return
    lead = f'<span class="muted">{html.escape(label)}</span> ' if label else ''
    self.parts.append(f'<p class="files">{lead}{items}</p>')

  def table(self, rows: Sequence[tuple[str, Any]], header: Sequence[str] = ()) -> None:
    """A two-column (name, value) table."""
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
    body = ''.join(f'<tr><td>{html.escape(str(k))}</td>{_cell(v)}</tr>' for k, v in rows)
    self.parts.append(f'<table>{"<tr>" + head + "</tr>" if head else ""}{body}</table>')

  def figure_tables(self, sets: Sequence[tuple[str, dict]]) -> None:
    """Figure sets as tables: one row per set, sets with the same fields in one table."""
    groups: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
    for name, fields in sets:
      groups.setdefault(tuple(fields), []).append((name, fields))
    for columns, rows in groups.items():
      head = '<tr><th></th>' + ''.join(f'<th>{html.escape(c)}</th>' for c in columns) + '</tr>'
      if not columns:
        head = ''
      body = ''.join(
          f'<tr><td>{html.escape(name)}</td>' +
          (''.join(_cell(fields[c]) for c in columns) if columns else '<td>not measured</td>') +
          '</tr>' for name, fields in rows)
      self.parts.append(f'<table>{head}{body}</table>')

  def settings(self, title: str, tree: Any, open_: bool = False) -> None:
    """A collapsible table of every (dotted key, value) of a nested dict."""
    self.parts.append(f'<details{" open" if open_ else ""}><summary>{html.escape(title)}'
                      '</summary>')
    self.table(flatten(tree))
    self.parts.append('</details>')

  def render(self) -> str:
    nav = ''.join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for t, a in self.nav)
    body = ''.join(self.parts) + ('</section>' if self._open else '')
    sub = f'<p>{html.escape(self.subtitle)}</p>' if self.subtitle else ''
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>'
            f'<header><h1>{html.escape(self.title)}</h1>{sub}</header>'
            f'{"<nav>" + nav + "</nav>" if nav else ""}<main>{body}</main></body></html>\n')

  def write(self) -> str:
    paths.write_text(self.path, self.render())
    return self.path


def _cell(value: Any) -> str:
  cls = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ''
  return f'<td{cls}>{html.escape(fmt(value))}</td>'


def _video_type(path: str) -> str:
  return {'.webm': 'webm', '.mp4': 'mp4'}.get(posixpath.splitext(path)[1].lower(), 'mp4')


def mesh_files(folder: str, named: Iterable[Any] = ()) -> list[str]:
  """Geometry files of a folder: those `named` (relative names) plus any found in it."""
  names = [n for n in named if isinstance(n, str) and n.lower().endswith(MESH_SUFFIXES)]
  if paths.is_dir(folder):
    names += sorted(n for n in paths.listdir(folder) if n.lower().endswith(MESH_SUFFIXES))
  return [paths.join(folder, n) for n in dict.fromkeys(names)]
