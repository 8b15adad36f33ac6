"""Headless Chromium over the DevTools protocol: open a local page, report what loaded, screenshot.

The Debian package `chromium` (installed by .ci/run) is driven through its remote-debugging
websocket with aiohttp (already a dependency of the gcs extra), so nothing is downloaded: no
Selenium Manager, no browser fetch. The browser runs with a fresh profile, no network services,
and is killed (its process group) when done.

  python tests/chromium.py PAGE.html SHOT.png [WIDTH HEIGHT]   # a screenshot of a page
"""
import asyncio
import base64
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Iterator, Optional

import aiohttp

CHROMIUM_CANDIDATES = ('chromium', 'chromium-browser', 'google-chrome')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--mute-audio', '--remote-debugging-port=0')

# Waits for every <img> and <video> of the page (a video: its first frame or an error), then
# describes them. A <video> whose sources all fail gets no `error`, only networkState 3.
_INSPECT_JS = """
(async () => {
  const settle = (el, ok, bad) => new Promise(done => {
    el.addEventListener(ok, done, {once: true});
    el.addEventListener(bad, done, {once: true});
    setTimeout(done, %(timeout_ms)d);
  });
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? null : settle(i, 'load', 'error')));
  const vids = [...document.querySelectorAll('video')];
  await Promise.all(vids.map(v => v.readyState >= 2 || v.networkState === 3 ? null :
                                  settle(v, 'loadeddata', 'error')));
  return {
    title: document.title,
    height: document.documentElement.scrollHeight,
    images: imgs.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth,
                            height: i.naturalHeight})),
    videos: vids.map(v => ({src: v.currentSrc, width: v.videoWidth, height: v.videoHeight,
                            ready: v.readyState, network: v.networkState,
                            mp4: v.canPlayType('video/mp4; codecs="avc1.42E01E"'),
                            webm: v.canPlayType('video/webm; codecs="vp9"')})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  };
})()
"""


def find_chromium() -> Optional[str]:
  for name in CHROMIUM_CANDIDATES:
    path = shutil.which(name)
    if path:
      return path
  return None


@contextlib.contextmanager
def browser(binary: str, width: int = 1280, height: int = 900) -> Iterator[str]:
  """Starts headless Chromium on about:blank; yields the page target's websocket URL."""
  profile = tempfile.mkdtemp(prefix='ivd_jax_chromium_')
  proc = subprocess.Popen([binary, *FLAGS, f'--user-data-dir={profile}',
                           f'--window-size={width},{height}', 'about:blank'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  try:
    port_file = pathlib.Path(profile) / 'DevToolsActivePort'
    deadline = time.monotonic() + 60
    while not port_file.is_file() or not port_file.read_text().strip():
      if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f'{binary} did not start (exit code {proc.poll()})')
      time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=30) as r:
      targets = json.loads(r.read())
    yield next(t['webSocketDebuggerUrl'] for t in targets if t['type'] == 'page')
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helper processes, nothing else
    proc.wait()
    shutil.rmtree(profile, ignore_errors=True)


class _Session:
  """One DevTools websocket: numbered commands and the events that arrive meanwhile."""

  def __init__(self, ws: aiohttp.ClientWebSocketResponse):
    self.ws, self.next_id, self.events = ws, 0, []

  async def call(self, method: str, **params: Any) -> dict:
    self.next_id += 1
    await self.ws.send_str(json.dumps({'id': self.next_id, 'method': method, 'params': params}))
    async for message in self.ws:
      data = json.loads(message.data)
      if data.get('id') == self.next_id:
        if 'error' in data:
          raise RuntimeError(f'{method}: {data["error"]}')
        return data['result']
      if 'method' in data:
        self.events.append(data)
    raise RuntimeError(f'{method}: the browser closed the connection')

  async def _receive(self, until: Optional[str]) -> None:
    async for message in self.ws:
      data = json.loads(message.data)
      if 'method' in data:
        self.events.append(data)
        if data['method'] == until:
          return

  async def wait_for(self, event: str, timeout_s: float) -> None:
    if not any(e['method'] == event for e in self.events):
      await asyncio.wait_for(self._receive(event), timeout_s)

  async def drain(self, seconds: float) -> None:
    """Collects the events of the next `seconds` (late console messages count too)."""
    with contextlib.suppress(asyncio.TimeoutError):
      await asyncio.wait_for(self._receive(None), seconds)

  def errors(self) -> list[str]:
    """Console errors, uncaught exceptions and failed loads the page produced."""
    found = []
    for e in self.events:
      p = e.get('params', {})
      if e['method'] == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
        found.append(' '.join(str(a.get('value', a.get('description', ''))) for a in p['args']))
      elif e['method'] == 'Runtime.exceptionThrown':
        found.append(p['exceptionDetails'].get('text', 'exception'))
      elif e['method'] == 'Log.entryAdded' and p['entry']['level'] == 'error':
        found.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
    return found


async def _inspect(ws_url: str, url: str, screenshot: Optional[str], width: int,
                   max_height: int, timeout_s: float) -> dict:
  async with aiohttp.ClientSession() as client:
    async with client.ws_connect(ws_url, max_msg_size=0) as ws:
      s = _Session(ws)
      for domain in ('Page', 'Runtime', 'Log'):
        await s.call(f'{domain}.enable')
      await s.call('Emulation.setDeviceMetricsOverride', width=width, height=900,
                   deviceScaleFactor=1, mobile=False)
      await s.call('Page.navigate', url=url)
      await s.wait_for('Page.loadEventFired', timeout_s)
      result = await s.call('Runtime.evaluate', awaitPromise=True, returnByValue=True,
                            expression=_INSPECT_JS % {'timeout_ms': int(timeout_s * 1000)})
      if 'exceptionDetails' in result:
        raise RuntimeError(f'inspecting {url}: {result["exceptionDetails"]}')
      report = result['result']['value']
      if screenshot:
        height = min(int(report['height']), max_height)
        shot = await s.call('Page.captureScreenshot', format='png', captureBeyondViewport=True,
                            clip=dict(x=0, y=0, width=width, height=height, scale=1))
        pathlib.Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(screenshot).write_bytes(base64.b64decode(shot['data']))
      await s.drain(0.5)  # a video decoder failing late still counts
      report['errors'] = s.errors()
      return report


def inspect_page(page: str, *, binary: Optional[str] = None, screenshot: Optional[str] = None,
                 width: int = 1280, max_height: int = 2400, timeout_s: float = 60.0) -> dict:
  """Opens a local page in headless Chromium.

  Returns:
    {title, height, images: [{src, width, height}] (natural size, 0 = not loaded),
     videos: [{src, width, height, ready, network, mp4, webm}], links: [href], errors: [str]}.
  """
  binary = binary or find_chromium()
  if not binary:
    raise FileNotFoundError('no chromium on PATH (apt-get install chromium)')
  url = pathlib.Path(page).resolve().as_uri()
  with browser(binary, width=width) as ws_url:
    return asyncio.run(_inspect(ws_url, url, screenshot, width, max_height, timeout_s))


if __name__ == '__main__':
  if len(sys.argv) not in (3, 5):
    sys.exit(__doc__.strip().splitlines()[-1])
  size = dict(width=int(sys.argv[3]), max_height=int(sys.argv[4])) if len(sys.argv) == 5 else {}
  print(json.dumps(inspect_page(sys.argv[1], screenshot=sys.argv[2], **size), indent=1))
