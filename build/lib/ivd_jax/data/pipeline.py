"""Input pipeline: a prepared RGBD dataset -> global jax.Arrays sharded over the mesh's data axes.

grain reads this process's part of the split (`tfds.split_for_jax_process`) from the ArrayRecord
shards of ivd_jax.data.records, shuffles with a seed (a new order every epoch), repeats, decodes
the PNGs to float32 RGBD in the network encoding ([-1, 1] for colour and for the z-buffer depth of
docs/method.md §3), optionally flips horizontally (a mirrored image is as valid a view 0 as the
original: the source camera is symmetric), batches per host and prefetches with
`data_config.num_workers` worker processes (0 = threads in this process). Each batch becomes a
global array with `jax.make_array_from_process_local_data`, its batch axis sharded over both mesh
axes (parallel.BATCH_SPEC).

  it = create_input_iterator(config.data, global_batch_size=128, mesh=mesh, seed=0)
  batch = next(it)          # {'rgbd': [128, R, R, 4] float32, 'label': [128] int32}
  state = it.get_state()    # JSON-serialisable; goes into training checkpoints
  it.set_state(state)       # the next batches are exactly those of an uninterrupted run

Fields of config.data read here: dir (the prepared dataset, local or gs://), cache_dir (where a
dataset on a bucket is copied first), resolution, near, far (checked against the dataset's
metadata), num_classes (checked when > 0), flip, num_workers (grain worker processes),
read_threads (reader threads, default 4).
"""
import json
from typing import Any, Dict, Iterator, Optional

from absl import flags
import grain.python as grain
import jax
import numpy as np

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.data import records
from ivd_jax.geometry import depth as depth_lib


class DecodeRGBD(grain.RandomMapTransform):
  """Serialized example -> {'rgbd': float32 [R, R, 4] in [-1, 1], 'label': int32}."""

  def __init__(self, flip: bool):
    self.flip = flip

  def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    rgbd = records.rgbd_from_stored(records.decode_png(element['rgb']),
                                    records.decode_png(element['depth']))
    # The draw happens whether or not we flip, so the random stream does not depend on `flip`.
    if rng.random() < 0.5 and self.flip:
      rgbd = rgbd[:, ::-1]
    return {'rgbd': np.ascontiguousarray(depth_lib.to_network(rgbd), dtype=np.float32),
            'label': np.int32(element['label'])}


class InputIterator(Iterator[Dict[str, jax.Array]]):
  """Global batches {'rgbd', 'label'}; get_state()/set_state() for exact resume."""

  def __init__(self, loader: grain.DataLoader, *, mesh, global_batch_size: int,
               identity: Dict[str, Any], num_examples: int, metadata: Dict[str, Any]):
    self._loader = loader
    self._iterator_or_none = None  # created on first use: iter() starts the worker processes
    self._mesh = mesh
    self._identity = identity
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // jax.process_count()
    self.num_examples = num_examples  # in this process's part of the split
    self.metadata = metadata
    self._sharding = None if mesh is None else parallel.batch_sharding(mesh)

  @property
  def _iterator(self):
    if self._iterator_or_none is None:
      self._iterator_or_none = iter(self._loader)
    return self._iterator_or_none

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, jax.Array]:
    local = next(self._iterator)
    if self._sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(
        self._sharding, v, (self.global_batch_size,) + v.shape[1:]) for k, v in local.items()}

  def get_state(self) -> Dict[str, Any]:
    return dict(self._identity, grain=self._iterator.get_state().decode())

  def set_state(self, state: Dict[str, Any]) -> None:
    mismatch = {k: (state.get(k), v) for k, v in self._identity.items() if state.get(k) != v}
    if mismatch:
      raise errors.UserError(
          f'input iterator state does not belong to this input pipeline: {mismatch} (saved, '
          'now); resume with the same dataset, split, seed, batch size and process count')
    self._iterator.set_state(state['grain'].encode())


def create_input_iterator(data_config, *, global_batch_size: int, mesh, seed: int,
                          split: str = 'train', shuffle: bool = True,
                          num_epochs: Optional[int] = None) -> InputIterator:
  """The input iterator of a prepared dataset (config.data.dir).

  Args:
    data_config: config.data (dir, resolution, near, far, flip, num_workers, read_threads).
    global_batch_size: examples per step over all processes; divisible by the number of devices
      of the mesh (parallel.MESH_AXES) and by the process count.
    mesh: a parallel.make_mesh mesh; None yields process-local numpy batches.
    seed: shuffle and flip seed.
    split: dataset split.
    shuffle: global shuffle, a new order every epoch (False: file order, for evaluation).
    num_epochs: None repeats forever; evaluation passes 1 (the last partial batch is dropped).

  Returns:
    InputIterator.
  """
  path = str(data_config.get('dir') or '')
  if not path:
    raise errors.ConfigError('data.dir', 'no prepared dataset given',
                             'set config.data.dir (prepare writes WORKDIR/data by default)')
  metadata = records.load_metadata(path)
  resolution = int(data_config.get('resolution') or metadata['resolution'])
  if resolution != metadata['resolution']:
    raise errors.ConfigError(
        'data.resolution', f'{resolution} but the dataset at {path} was prepared at '
        f'{metadata["resolution"]} px', 'use the same resolution or prepare the data again')
  for name in ('near', 'far'):
    want = data_config.get(name)
    if want is not None and not np.isclose(float(want), metadata[name]):
      raise errors.ConfigError(
          f'data.{name}', f'{want} but the dataset depth was encoded with {name}='
          f'{metadata[name]}', f'set config.data.{name}={metadata[name]} or prepare again')
  num_classes = int(data_config.get('num_classes') or 0)
  if num_classes and metadata.get('num_classes') != num_classes:
    raise errors.ConfigError(
        'data.num_classes', f'{num_classes} but the dataset at {path} has '
        f'{metadata.get("num_classes")} classes', 'set it to the number of class folders '
        'prepared (0 for an unconditional model)')
  process_count = jax.process_count()
  if mesh is not None:
    shards = parallel.data_parallel_size(mesh)
    if global_batch_size % shards:
      raise errors.ConfigError(
          'train.batch_size', f'{global_batch_size} is not divisible by the {shards} devices of '
          f'the mesh axes {parallel.MESH_AXES}', f'use a multiple of {shards}')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise errors.ConfigError(
        'train.batch_size', f'{global_batch_size} is not a positive multiple of the '
        f'{process_count} processes', f'use a multiple of {process_count}')
  local_batch = global_batch_size // process_count

  # A dataset on a bucket (gs://) is first copied to data.cache_dir: ArrayRecord reads local files.
  source = records.open_split(path, split, this_process_only=True,
                              cache_dir=str(data_config.get('cache_dir') or ''))
  if len(source) < local_batch:
    raise errors.ConfigError(
        'train.batch_size', f'this process reads {len(source)} examples of split {split!r}, '
        f'fewer than its batch of {local_batch}', 'prepare more examples or use a smaller batch')
  sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.NoSharding(),
                               shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  flip = bool(data_config.get('flip', False)) and shuffle
  workers = int(data_config.get('num_workers') or 0)
  if workers and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside an absl app (notebooks, tests) they
    # are unparsed, so accept the defaults.
    flags.FLAGS.mark_as_parsed()
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[DecodeRGBD(flip), grain.Batch(local_batch, drop_remainder=True)],
      worker_count=workers, worker_buffer_size=2,
      read_options=grain.ReadOptions(num_threads=int(data_config.get('read_threads') or 4),
                                     prefetch_buffer_size=max(64, 4 * local_batch)))
  identity = dict(split=split, num_examples=len(source), seed=int(seed), flip=flip,
                  shuffle=bool(shuffle), global_batch_size=int(global_batch_size),
                  process_index=jax.process_index(), process_count=process_count)
  json.dumps(identity)  # the state must stay JSON-serialisable
  return InputIterator(loader, mesh=mesh, global_batch_size=global_batch_size, identity=identity,
                       num_examples=len(source), metadata=metadata)
