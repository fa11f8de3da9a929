"""T5X checkpoints written with TensorStore: atomically, each process its own slices.

The layout is load_ckpt.py's (T5X `checkpoints.py`, VERSION 3): `checkpoint_<step>/` holds the
msgpack index and one zarr array per parameter and per unfactored Adafactor second moment; the
rest stays inline in the index. `load_ckpt.read_checkpoint` reads back exactly what is written
here, and `load_ckpt.restore_checkpoint` resumes from the newest.
"""
import logging
import os
import secrets
import shutil
import tempfile

import jax
from jax.experimental import multihost_utils
import msgpack
import numpy as np
import tensorstore as ts

import load_ckpt

_CHUNK_BYTES = 64 * 2**20  # T5X `_DESIRED_CHUNK_SIZE_BYTES`


def _chunk_shape(shape, itemsize):
  """Chunks that divide `shape` with at most 64 MiB each: shrink the largest dim to its next
  smaller divisor until the chunk fits (as T5X `_choose_chunk_shape`)."""
  chunks = list(shape)
  while np.prod(chunks, dtype=np.int64) * itemsize > _CHUNK_BYTES:
    dim = int(np.argmax(chunks))
    chunks[dim] = max(d for d in range(1, chunks[dim]) if shape[dim] % d == 0)
  return chunks


def _inline(array):
  """flax's msgpack ndarray extension (type 1): [shape, dtype name, C-order bytes]."""
  payload = msgpack.packb([list(array.shape), array.dtype.name, array.tobytes('C')],
                          use_bin_type=True)
  return msgpack.ExtType(load_ckpt.EXT_NDARRAY, payload)


def _host(x):
  """A numpy copy of a small array that goes inline into the index: a replicated one from this
  process's own copy, a sharded global jax.Array gathered (a collective: every process calls
  this)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _own_slices(x):
  """[(index, numpy array)]: the slices of `x` this process writes. Of a jax.Array, the shards
  of its devices with replica_id 0 (every slice of the global array has exactly one such
  shard, on one device of one process); a host array is written whole by process 0."""
  if isinstance(x, jax.Array):
    return [(shard.index, np.asarray(shard.data)) for shard in x.addressable_shards
            if shard.replica_id == 0]
  return [(..., np.asarray(x))] if jax.process_index() == 0 else []


def _barrier(name):
  """Every process waits here for all the others (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_tree(root):
  for directory, _, files in os.walk(root):
    for name in files:
      _fsync(os.path.join(directory, name))
    _fsync(directory)


def _tensorstore_specs(leaves):
  """{name: zarr spec, its path relative to the checkpoint} of the leaves written through
  TensorStore (gzip): the parameters, and each unfactored `v` (`v` of its parameter's shape).
  The others go inline into the index: factored `v_row`/`v_col`, placeholders, `m`, the step.
  This is where T5X puts them: it writes through TensorStore the arrays it partitions.

  NOTE: chunks divide each array's shard (T5X `_write_array` chooses them from the local
  shape), so every chunk file is written by one process only.
  """
  def via_tensorstore(name):
    if name.startswith('target/'):
      return True
    if name.startswith('state/param_states/') and name.endswith('/v'):
      param = 'target/' + name[len('state/param_states/'):-len('/v')]
      return param in leaves and np.shape(leaves[name]) == np.shape(leaves[param])
    return False

  specs = {}
  for name, x in leaves.items():
    if via_tensorstore(name):
      dtype = np.dtype(x.dtype)
      shard_shape = x.sharding.shard_shape(x.shape) if isinstance(x, jax.Array) else x.shape
      specs[name] = {'driver': 'zarr', 'dtype': dtype.name,
                     'kvstore': {'driver': 'file', 'path': name.replace('/', '.') + '/'},
                     'metadata': {'chunks': _chunk_shape(shard_shape, dtype.itemsize),
                                  'compressor': {'id': 'gzip', 'level': 1},
                                  'shape': list(x.shape)}}
  return specs


def _write_checkpoint(checkpoint_dir, params, opt_state):
  """Every process writes its own slices of the TensorStore arrays into `checkpoint_dir`, an
  existing empty directory; then process 0 writes the index. Returns after a barrier: every
  process's arrays are written, the index too when this is process 0."""
  leaves = {f'target/{name}': x for name, x in load_ckpt.flatten(params).items()}
  leaves.update({f'state/{name}': x for name, x in load_ckpt.flatten(opt_state).items()})
  specs = _tensorstore_specs(leaves)
  if jax.process_index() == 0:  # one process creates each array (its .zarray)
    for store in [ts.open(load_ckpt.absolute_spec(spec, checkpoint_dir), create=True)
                  for spec in specs.values()]:
      store.result()
  _barrier(f'created {checkpoint_dir}')
  writes = []
  for name, spec in sorted(specs.items()):
    store = ts.open(load_ckpt.absolute_spec(spec, checkpoint_dir), open=True).result()
    writes += [store[index].write(part) for index, part in _own_slices(leaves[name])]
  inline = {name: _host(x) for name, x in sorted(leaves.items()) if name not in specs}
  for write in writes:
    write.result()
  _barrier(f'written {checkpoint_dir}')
  if jax.process_index() == 0:
    # The index goes last: without it nothing here is a checkpoint.
    index = {**specs, **{name: _inline(array) for name, array in inline.items()}}
    tree = load_ckpt.unflatten(dict(sorted(index.items())))
    data = msgpack.packb({'version': load_ckpt.VERSION, 'optimizer': tree}, use_bin_type=True)
    with open(os.path.join(checkpoint_dir, load_ckpt.INDEX_FILE), 'wb') as f:
      f.write(data)


def save_checkpoint(directory, step, params, opt_state, *, keep=3, extra_files=None):
  """Write `directory/checkpoint_<step>/` in T5X's layout, atomically; keep the last `keep`.

  `extra_files` ({file name: bytes}, e.g. the run's `config.json`) are written into the
  checkpoint's directory with it. Local paths only.

  Every process calls this with the same global arrays and writes only the slices its own
  devices hold, through TensorStore, into one checkpoint (as T5X); no parameter is gathered
  onto one host. Only what T5X keeps inline in the index (factored `v_row`/`v_col`: vectors;
  placeholders; the step) is gathered, for process 0 to write the index after all processes
  have written their slices.

  Atomicity (T5X `Checkpointer.save`): everything is written into a temporary sibling
  directory `checkpoint_<step>.tmp-<token>` (the token drawn by process 0 and broadcast, so
  that all processes write into the same one); after a barrier process 0 alone writes the
  index, fsyncs the tree and renames it to `checkpoint_<step>`. That rename is the only
  commit: a crash of any process before it leaves a `.tmp-` directory that
  `load_ckpt.latest_checkpoint` ignores, never a partial `checkpoint_<step>`. With several hosts this
  needs `directory` on one filesystem that all of them share, where the files one host has
  written are visible to the others once it has closed them (a local disk, NFS's
  close-to-open consistency): the barrier orders every host's writes before the rename. If
  that checkpoint exists already it is kept as it is (as T5X).
  """
  if directory.startswith('gs://'):
    raise ValueError(f'save_checkpoint writes local directories only, got {directory}')
  final_dir = os.path.join(directory, f'checkpoint_{int(step)}')
  if os.path.exists(final_dir):
    logging.warning('checkpoint %s exists already; not overwritten', final_dir)
    return final_dir
  token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
  tmp_dir = os.path.join(directory, f'checkpoint_{int(step)}.tmp-{token:08x}')
  if jax.process_index() == 0:
    os.makedirs(tmp_dir)
  _write_checkpoint(tmp_dir, params, opt_state)
  if jax.process_index() == 0:
    for name, data in (extra_files or {}).items():
      with open(os.path.join(tmp_dir, name), 'wb') as f:
        f.write(data)
    _fsync_tree(tmp_dir)
    os.rename(tmp_dir, final_dir)
    _fsync(directory)
    _remove_old_checkpoints(directory, keep)
  _barrier(f'saved {final_dir}')
  return final_dir


def _remove_old_checkpoints(directory, keep):
  """Delete all but the newest `keep` (None: keep all). Each is renamed away first, so a
  crash mid-delete never leaves a partial `checkpoint_<step>`."""
  if not keep:
    return
  for step, path in load_ckpt.complete_checkpoints(directory)[:-keep]:
    doomed = tempfile.mkdtemp(prefix=f'checkpoint_{step}.deleting-', dir=directory)
    os.rename(path, os.path.join(doomed, 'old'))
    shutil.rmtree(doomed)
