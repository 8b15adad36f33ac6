"""User paths, local or on a bucket: gs:// (or any other etils.epath scheme) beside plain files.

Every mode reads and writes its workdir, checkpoints, outputs and caches through these functions,
so `--workdir=gs://bucket/run` behaves like a local folder and never creates a local folder named
`gs:`. Remote paths go through etils.epath (gcsfs for gs://); local paths through os.

Libraries that need a real local file go through one of three bridges:
  local_copy(path)       a local copy to read (a file or a whole folder), removed afterwards;
  temp_target / commit   a local file to write, then moved (local) or uploaded (remote) into place;
  stage(path, cache)     a lasting local copy in a cache folder, refreshed when the remote changes
                         (prepared datasets: ArrayRecord cannot read gs://).
"""
import builtins
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Iterator, Union

import fsspec
from etils import epath

PathLike = Union[str, os.PathLike]
_CHUNK = 16 << 20  # bytes per read when copying between file systems
_STAGE_MANIFEST = '.ivd_jax_staged.json'


def is_remote(path: PathLike) -> bool:
  """True for a URL such as gs://bucket/dir (anything with a scheme), False for local paths."""
  return '://' in os.fspath(path)


def join(path: PathLike, *parts: str) -> str:
  """os.path.join that keeps a URL's scheme (gs://b/x + y -> gs://b/x/y)."""
  if is_remote(path):
    return '/'.join([os.fspath(path).rstrip('/')] + [p.strip('/') for p in parts if p])
  return os.path.join(os.fspath(path), *parts)


def basename(path: PathLike) -> str:
  return os.path.basename(os.fspath(path).rstrip('/'))


def dirname(path: PathLike) -> str:
  """The parent folder; a bucket's root (gs://bucket) is its own parent."""
  path = os.fspath(path).rstrip('/')
  if not is_remote(path):
    return os.path.dirname(path)
  scheme, rest = path.split('://', 1)
  return f'{scheme}://{rest.rsplit("/", 1)[0]}' if '/' in rest else path


def abspath(path: PathLike) -> str:
  """An absolute local path; a URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def is_dir(path: PathLike) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def is_file(path: PathLike) -> bool:
  return epath.Path(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path: PathLike) -> None:
  """Creates a folder and its parents (on a bucket folders are implicit: nothing to do)."""
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  elif path:
    os.makedirs(path, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """Names in a folder, sorted."""
  if is_remote(path):
    return sorted(p.name for p in epath.Path(path).iterdir())
  return sorted(os.listdir(path))


def _fs(path: str) -> tuple[Any, str]:
  return fsspec.core.url_to_fs(path)


def _file_info(info: dict[str, Any]) -> dict[str, Any]:
  """{'size', 'version'} of an fsspec info dict; `version` changes when the file is rewritten
  (the object generation / etag on a bucket)."""
  version = next((str(info[k]) for k in ('generation', 'etag', 'ETag', 'md5Hash', 'mtime')
                  if info.get(k)), '')
  return {'size': int(info.get('size') or 0), 'version': version}


def size(path: PathLike) -> int:
  """A file's size in bytes."""
  if is_remote(path):
    fs, name = _fs(os.fspath(path))
    return int(fs.size(name))
  return os.path.getsize(path)


def list_files(path: PathLike) -> dict[str, dict[str, Any]]:
  """Every file under a folder (recursive): relative path -> {'size', 'version'}.

  `version` changes when a file is rewritten (the object generation / etag on a bucket, the
  modification time locally). One listing call on a bucket.
  """
  path = os.fspath(path).rstrip('/')
  out = {}
  if is_remote(path):
    fs, root = _fs(path)
    for name, info in fs.find(root, detail=True).items():
      if info.get('type', 'file') != 'file' or name.endswith('/'):
        continue
      out[name[len(root):].lstrip('/')] = _file_info(info)
    return out
  for dirpath, _, filenames in os.walk(path):
    for name in filenames:
      full = os.path.join(dirpath, name)
      st = os.stat(full)
      out[os.path.relpath(full, path)] = {'size': st.st_size, 'version': str(st.st_mtime_ns)}
  return out


def open(path: PathLike, mode: str = 'r') -> IO[Any]:  # pylint: disable=redefined-builtin
  """Opens a file for reading or writing ('r', 'rb', 'w', 'wb', 'a'); a writer's folder is made."""
  if any(m in mode for m in 'wa'):
    makedirs(dirname(path))
  if is_remote(path):
    return epath.Path(path).open(mode)
  return builtins.open(path, mode)


def read_bytes(path: PathLike) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode('utf-8')


def write_bytes(path: PathLike, data: bytes) -> str:
  """Writes a whole file: locally through a temporary file and a rename, so a reader never sees
  half a file; on a bucket as one object (uploads are atomic)."""
  path = os.fspath(path)
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return path
  tmp = temp_target(path)
  try:
    with builtins.open(tmp, 'wb') as f:
      f.write(data)
    commit(tmp, path)
  finally:
    _remove_quietly(tmp)
  return path


def write_text(path: PathLike, text: str) -> str:
  return write_bytes(path, text.encode('utf-8'))


def remove(path: PathLike) -> None:
  if is_remote(path):
    epath.Path(path).unlink(missing_ok=True)
  else:
    _remove_quietly(os.fspath(path))


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def copy_file(src: PathLike, dst: PathLike) -> str:
  """Copies one file between any two file systems (local <-> bucket, bucket <-> bucket)."""
  with open(src, 'rb') as fin, open(dst, 'wb') as fout:
    shutil.copyfileobj(fin, fout, _CHUNK)
  return os.fspath(dst)


def copy_tree(src: PathLike, dst: PathLike) -> list[str]:
  """Copies every file under folder `src` to the same relative path under `dst`."""
  names = sorted(list_files(src))
  for rel in names:
    copy_file(join(src, *rel.split(os.sep)), join(dst, *rel.split(os.sep)))
  return names


# ------------------------------------------------------------------------------------------------
# Bridges to libraries that need local files.
# ------------------------------------------------------------------------------------------------


def temp_target(path: PathLike) -> str:
  """A local file to write before commit(tmp, path) puts it at `path`; keeps the extension
  (imageio picks its writer by it). Locally it sits beside `path` (the rename is atomic)."""
  path = os.fspath(path)
  name = basename(path)
  stem, ext = os.path.splitext(name)
  if is_remote(path):
    fd, tmp = tempfile.mkstemp(prefix=f'ivd_jax_{stem}_', suffix=ext)
    os.close(fd)
    return tmp
  folder = os.path.dirname(path)
  makedirs(folder)
  return os.path.join(folder, f'.{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}')


def commit(tmp: str, path: PathLike) -> str:
  """Moves a finished temp_target into place (a rename locally, an upload to a bucket)."""
  path = os.fspath(path)
  if is_remote(path):
    copy_file(tmp, path)
    _remove_quietly(tmp)
  else:
    os.replace(tmp, path)
  return path


@contextlib.contextmanager
def local_target(path: PathLike) -> Iterator[str]:
  """`with local_target(p) as local:` write `local`; it lands at `p` when the block ends."""
  tmp = temp_target(path)
  try:
    yield tmp
    commit(tmp, path)
  finally:
    _remove_quietly(tmp)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """`with local_copy(p) as local:` a local file or folder with the content of `p`.

  A local path is yielded as it is; a remote file or folder is downloaded to a temporary
  folder that is removed when the block ends.
  """
  path = os.fspath(path)
  if not is_remote(path):
    yield path
    return
  if not exists(path):
    raise FileNotFoundError(f'{path} does not exist')
  tmpdir = tempfile.mkdtemp(prefix='ivd_jax_copy_')
  try:
    local = os.path.join(tmpdir, basename(path) or 'root')
    if is_dir(path):
      copy_tree(path, local)
      os.makedirs(local, exist_ok=True)
    else:
      copy_file(path, local)
    yield local
  finally:
    shutil.rmtree(tmpdir, ignore_errors=True)


def default_cache_dir() -> str:
  """$IVD_JAX_CACHE or ~/.cache/ivd_jax: where remote data is staged unless a config says."""
  return os.environ.get('IVD_JAX_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'ivd_jax'))


def staging_dir(path: PathLike, cache_dir: PathLike = '') -> str:
  """The local folder stage() copies remote `path` to: CACHE/staged/<name>-<hash of the URL>."""
  path = os.fspath(path).rstrip('/')
  key = hashlib.sha1(path.encode()).hexdigest()[:12]
  return os.path.join(os.fspath(cache_dir) or default_cache_dir(), 'staged',
                      f'{basename(path)}-{key}')


def stage(path: PathLike, cache_dir: PathLike = '') -> str:
  """A local copy of a remote folder or file, kept in `cache_dir` and refreshed file by file.

  Files whose size or version (object generation) changed are downloaded again, files gone from
  the bucket are removed locally; an unchanged folder costs one listing call. Each file is
  downloaded to a temporary name and renamed, so processes staging the same folder at once
  (several processes of one host) do not see half files. A local path, and a remote one that
  does not exist (for the caller to report), are returned as they are.

  Returns:
    The local folder or file.
  """
  path = os.fspath(path).rstrip('/')
  if not is_remote(path):
    return path
  if is_file(path):
    fs, name = _fs(path)
    local = staging_dir(path, cache_dir)
    _sync(dirname(path), {basename(path): _file_info(fs.info(name))}, local)
    return os.path.join(local, basename(path))
  if not is_dir(path):
    return path
  local = staging_dir(path, cache_dir)
  _sync(path, list_files(path), local)
  return local


def _sync(path: str, remote: dict[str, dict[str, Any]], local: str) -> None:
  """Downloads the files `remote` lists under `path` whose copy in `local` is missing or stale."""
  os.makedirs(local, exist_ok=True)
  manifest_path = os.path.join(local, _STAGE_MANIFEST)
  try:
    with builtins.open(manifest_path) as f:
      have = json.load(f)
  except (OSError, ValueError):
    have = {}
  for rel, info in sorted(remote.items()):
    target = os.path.join(local, *rel.split('/'))
    if have.get(rel) == info and os.path.isfile(target) and os.path.getsize(target) == info[
        'size']:
      continue
    tmp = temp_target(target)
    try:
      copy_file(join(path, rel), tmp)
      os.replace(tmp, target)
    finally:
      _remove_quietly(tmp)
  for rel in set(have) - set(remote):
    _remove_quietly(os.path.join(local, *rel.split('/')))
  write_text(manifest_path, json.dumps(remote, sort_keys=True))
