"""The workdir lock: one writing run per workdir (every mode that writes takes it).

WORKDIR/ivd_jax.lock is a JSON file naming its holder: host, pid, the pid's start time, since
(UTC), heartbeat (unix seconds), mode, command and a random token. A second run that finds it gets
a one-line UserError naming the holder and the fix (exit 2 from the command line). A lock whose
holder is gone is stale and is taken over with a warning:
  - same host: the pid has exited (a zombie counts as exited), or now belongs to another process
    (its start time differs): a kill -9 leaves such a lock, and the next run takes it at once;
  - another host: pids cannot be checked there. The holder rewrites its heartbeat every
    distributed.lock_heartbeat_s; a lock whose heartbeat is older than
    distributed.lock_stale_after_s is stale. A younger one is watched (polled every quarter
    heartbeat): if its heartbeat advances the holder is alive and the run is refused; if it does
    not advance until that age (by the holder's timestamp or this host's own clock, whichever is
    first), it is taken over. A job restarted on new hosts after a pre-emption therefore waits at
    most lock_stale_after_s instead of failing.
A process that already holds a workdir's lock takes it again without touching the file (the
quickstart runs prepare and sample in its own workdir; train may run prepare).

Multi-process runs: process 0 alone takes the lock and tells the other processes the outcome over
the coordination service's key-value store (no device collective), and all of them fail together
when it is held. One lock per job is what is needed: any other job writing the same workdir has a
process 0 too, and per-process locks would let a conflict stop some processes of a job while the
others hang in their next collective.

Local workdirs: the lock file appears complete and atomically (a hard link of a finished file;
O_EXCL where the file system has no hard links), so two runs starting together never both win.
gs:// and other remote workdirs: advisory (check, write, read back): two runs starting within the
same second can both win; stale rules and messages are the same.
"""
import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from ivd_jax import errors
from ivd_jax.io import paths

LOCK_FILE = 'ivd_jax.lock'

# Workdirs this process holds: key -> nesting depth.
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()
_AGREEMENTS = [0]  # how many lock outcomes process 0 has broadcast (the key-value keys)


class WorkdirLocked(errors.UserError):
  """Another live run holds the workdir."""


def _proc_stat(pid: int) -> tuple[Optional[str], Optional[int]]:
  """(state letter, start time in clock ticks after boot) of a local pid; (None, None) without
  /proc."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return fields[0], int(fields[19])
  except (OSError, IndexError, ValueError):
    return None, None


def _pid_alive(pid: int, start: Optional[int]) -> bool:
  """Whether local `pid` is the live process that wrote a lock (start: its start ticks)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: alive
  state, ticks = _proc_stat(pid)
  if state == 'Z':
    return False
  return not (start is not None and ticks is not None and ticks != start)


def _describe(info: dict[str, Any], path: str) -> str:
  command = str(info.get('command', ''))
  command = command if len(command) <= 160 else command[:157] + '...'
  return (f"host {info.get('host')}, pid {info.get('pid')}, since {info.get('since')} "
          f"(mode {info.get('mode')}: {command}; lock file {path})")


class _Lock:
  """One held lock file: creation, judgement of an existing one, heartbeat, release."""

  def __init__(self, workdir: str, *, mode: str, heartbeat_s: float, stale_after_s: float):
    self.workdir = workdir
    self.path = paths.join(workdir, LOCK_FILE)
    self.remote = paths.is_remote(workdir)
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    now = time.time()
    self.info = dict(
        host=socket.gethostname(), pid=os.getpid(), pid_start=_proc_stat(os.getpid())[1],
        since=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime(
            '%Y-%m-%dT%H:%M:%SZ'),
        heartbeat=now, mode=mode, command=' '.join(sys.argv), token=uuid.uuid4().hex)
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # ------------------------------------------------------------------ file operations
  def _read(self, path: Optional[str] = None) -> Optional[bytes]:
    try:
      return paths.read_bytes(path or self.path)
    except FileNotFoundError:
      return None

  def _create(self) -> bool:
    """Writes our lock if there is none; True when it is ours."""
    data = json.dumps(self.info).encode()
    if self.remote:
      if paths.exists(self.path):
        return False
      paths.write_bytes(self.path, data)
      return self._read() == data  # advisory: read back, the last writer wins
    tmp = f'{self.path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp'
    with open(tmp, 'wb') as f:
      f.write(data)
    try:
      os.link(tmp, self.path)  # atomic, never half a file
      return True
    except FileExistsError:
      return False
    except OSError:  # no hard links here (some FUSE mounts): O_EXCL
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, 'wb') as f:
        f.write(data)
      return True
    finally:
      paths.remove(tmp)

  def _take_over(self, seen: bytes) -> None:
    """Removes a stale lock, unless it changed since it was judged (then the loop re-judges)."""
    if self.remote:
      if self._read() == seen:
        paths.remove(self.path)
      return
    aside = f'{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    if self._read(aside) != seen:  # rewritten meanwhile (a heartbeat): put it back
      with contextlib.suppress(FileExistsError):
        os.link(aside, self.path)
    paths.remove(aside)

  def _is_mine(self, data: Optional[bytes]) -> bool:
    try:
      return json.loads(data)['token'] == self.info['token']
    except (TypeError, ValueError, KeyError):
      return False

  # ------------------------------------------------------------------ acquire / release
  def acquire(self) -> None:
    watched = None  # (heartbeat value, monotonic time first seen) of another host's lock
    poll_s = self.heartbeat_s / 4
    while True:
      if self._create():
        break
      seen = self._read()
      if seen is None:
        continue  # released meanwhile
      try:
        held = json.loads(seen)
        held['pid'] = int(held['pid'])
      except (ValueError, KeyError, TypeError):
        logging.warning('workdir lock %s is unreadable (%r...): taking it over', self.path,
                        seen[:80])
        self._take_over(seen)
        continue
      if held.get('host') == self.info['host']:
        if _pid_alive(held['pid'], held.get('pid_start')):
          raise WorkdirLocked(
              f'{self.workdir} is in use by another run: {_describe(held, self.path)}. Fix: '
              'wait for that run to finish or stop it, or give this run another --workdir')
        why = f"its pid {held['pid']} has exited"
      else:
        heartbeat = float(held.get('heartbeat', 0))
        age = time.time() - heartbeat
        if watched is not None and heartbeat != watched[0]:
          raise WorkdirLocked(
              f'{self.workdir} is in use by a run on another host (its heartbeat advanced '
              f'while this run watched it): {_describe(held, self.path)}. Fix: wait for that '
              'run to finish or stop it, or give this run another --workdir')
        first = watched is None
        if first:
          watched = (heartbeat, time.monotonic())
        waited = time.monotonic() - watched[1]
        if age <= self.stale_after_s and waited <= self.stale_after_s:
          if first:
            logging.warning(
                'workdir lock %s: held by another host (%s), heartbeat %.0f s ago; watching it '
                'for up to %.0f s (distributed.lock_stale_after_s) to see whether that run is '
                'alive', self.path, _describe(held, self.path), age,
                self.stale_after_s - max(age, 0.0))
          time.sleep(poll_s)
          continue
        why = f'its heartbeat is {max(age, waited):.0f} s old'
      logging.warning('workdir lock %s is stale (%s): taking over from %s', self.path, why,
                      _describe(held, self.path))
      self._take_over(seen)
      watched = None
    self._thread = threading.Thread(target=self._beat, name='ivd_jax-workdir-lock',
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self._is_mine(self._read()):
          logging.error('workdir lock %s was taken over by another run: two runs may now write '
                        '%s', self.path, self.workdir)
          return
        self.info['heartbeat'] = time.time()
        paths.write_text(self.path, json.dumps(self.info))
      except OSError as e:  # a full disk or a flaky bucket: try again next time
        logging.warning('workdir lock %s: heartbeat not written (%s)', self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if self._is_mine(self._read()):
        paths.remove(self.path)
      else:
        logging.warning('workdir lock %s is no longer this run\'s: left in place', self.path)
    except OSError as e:
      logging.warning('workdir lock %s not removed (%s)', self.path, e)


def _agree(failure: Optional[str], timeout_s: float) -> Optional[str]:
  """Process 0's outcome (None: acquired, else a kind letter + message) on every process."""
  if jax.process_count() == 1:
    return failure
  client = ocp.multihost.get_jax_distributed_client()
  key = f'ivd_jax/workdir_lock/{_AGREEMENTS[0]}'
  _AGREEMENTS[0] += 1
  if jax.process_index() == 0:
    client.key_value_set(key, failure or '')
    return failure
  return client.blocking_key_value_get(key, int(timeout_s * 1000)) or None


def _key(workdir: str) -> str:
  return paths.abspath(workdir).rstrip('/')


@contextlib.contextmanager
def hold(workdir: str, *, mode: str, heartbeat_s: float, stale_after_s: float) -> Iterator[None]:
  """Holds WORKDIR/ivd_jax.lock for the body (released on return and on exceptions).

  Raises:
    WorkdirLocked: another live run holds it (every process of a multi-process run raises).
    UserError: the lock file cannot be written (a read-only workdir).
  """
  key = _key(workdir)
  with _HELD_GUARD:
    nested = key in _HELD
    _HELD[key] = _HELD.get(key, 0) + 1
  lock = None
  try:
    if not nested:
      failure, error = None, None
      if jax.process_index() == 0:
        lock = _Lock(workdir, mode=mode, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)
        try:
          paths.makedirs(workdir)
          lock.acquire()
        except WorkdirLocked as e:
          failure, lock = 'L' + str(e), None
        except OSError as e:
          failure, lock = (f'Ucannot create the workdir lock {lock.path} ({e.strerror or e}). '
                           'Fix: give --workdir a directory you can write to'), None
        except Exception as e:  # pylint: disable=broad-except
          failure, error, lock = f'Uworkdir lock {lock.path}: {type(e).__name__}: {e}', e, None
      failure = _agree(failure, timeout_s=2 * stale_after_s + 60)
      if error is not None:
        raise error  # not the user's doing: the original error, after the others were told
      if failure:  # the first letter says which: L locked, U anything else
        raise (WorkdirLocked if failure[0] == 'L' else errors.UserError)(failure[1:])
    yield
  finally:
    with _HELD_GUARD:
      _HELD[key] -= 1
      if not _HELD[key]:
        del _HELD[key]
    if lock is not None:
      lock.release()


def hold_for(config: Any, workdir: str) -> contextlib.AbstractContextManager:
  """hold() with the settings of config.distributed (lock_heartbeat_s, lock_stale_after_s)."""
  dist = config.get('distributed') or {}
  if _key(workdir) in _HELD:  # nested: the settings of the outer hold apply
    return hold(workdir, mode=str(config.get('mode')), heartbeat_s=0.0, stale_after_s=0.0)
  missing = [f for f in ('lock_heartbeat_s', 'lock_stale_after_s') if f not in dist]
  if missing:
    raise errors.ConfigError(
        f'distributed.{missing[0]}', 'missing from the config',
        "build the config's distributed section with configs/common.py:distributed_section()")
  return hold(workdir, mode=str(config.get('mode')), heartbeat_s=dist['lock_heartbeat_s'],
              stale_after_s=dist['lock_stale_after_s'])


def locks_workdir(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates a mode's entry function fn(config, workdir, ...) to hold the workdir lock."""

  @functools.wraps(fn)
  def wrapper(config, workdir, *args, **kwargs):
    with hold_for(config, workdir):
      return fn(config, workdir, *args, **kwargs)

  return wrapper
