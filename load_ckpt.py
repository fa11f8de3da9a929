"""T5X checkpoints read with TensorStore; T5.1.1 mapped onto EncT5 (paper §4.2). Writing: save_ckpt.py.

A T5X checkpoint (`t5x/checkpoints.py`, VERSION 3) is a directory `checkpoint_<step>/`:

  checkpoint                         msgpack index (flax serialization) of
                                     {'version': 3, 'optimizer': {'target': params,
                                      'state': {'step': int32, 'param_states': Adafactor state}}}
  target.encoder.layers_0.mlp.wo.kernel/      one zarr array per parameter, and one per
  state.param_states.<same path>.v/           unfactored Adafactor second moment

In the index, every array written through TensorStore is replaced by the TensorStore spec that
wrote it (zarr driver, dtype, kvstore path relative to the checkpoint directory, metadata with
shape, chunks and compressor). Arrays that T5X does not partition stay inline as msgpack
extension values: type 1 = ndarray, payload msgpack `[shape, dtype name, C-order bytes]`; type 3
= numpy scalar, same payload. Older T5X files are one msgpack file with every array inline.

Leaves are named by their '/'-joined path below 'optimizer', e.g.
'target/encoder/layers_0/attention/query/kernel' or 'state/param_states/.../v_row'.
Paths are local or 'gs://bucket/path' (TensorStore's gcs kvstore: no download step).
A Hugging Face model directory (config.json + safetensors) is read as the same tree, lazily, with
T5X's names (hf_ckpt.py): every function here that reads a checkpoint takes one.
"""
import functools
import logging
import os
import posixpath
import re

import jax
import ml_dtypes  # noqa: F401  (registers numpy's 'bfloat16' dtype name)
import msgpack
import numpy as np
import tensorstore as ts

import adafactor
import enct5
import fileio
import hf_ckpt
import partitioning

INDEX_FILE = 'checkpoint'  # T5X's name for the msgpack index inside `checkpoint_<step>/`
VERSION = 3  # T5X checkpoint VERSION: bfloat16 arrays are stored natively, not as uint16
EXT_NDARRAY, EXT_NPSCALAR = 1, 3  # flax `_MsgpackExtType`
_STEP_DIR = re.compile(r'checkpoint_(\d+)')

# EncT5 parameters that a T5.1.1 checkpoint does not have (§3): the learned query and the
# classification head start random (a multi-task model's, each task's under decoder/heads/).
# Everything else in `enct5.param_specs` is loaded (§4.2).
FRESH_PARAMS = ('decoder/bos_embedding', 'decoder/class_projection/kernel',
                'decoder/class_projection/bias')
HEADS = 'decoder/heads/'


def is_head_param(name):
  """Whether a parameter is a task's own (query or class projection), not T5.1.1's."""
  return name in FRESH_PARAMS or name.startswith(HEADS)


def has_heads(flat):
  """Whether a checkpoint's flat index holds trained EncT5 heads: a run of ours."""
  return any(is_head_param(name[len('target/'):]) for name in flat if name.startswith('target/'))


def select_head(flat, task):
  """A multi-task checkpoint's flat index as a one-task one: task `task`'s query and class
  projection (and their Adafactor slots) renamed to decoder/bos_embedding and
  decoder/class_projection, the other tasks' left out; T5's recipe fine-tunes each task from
  the multi-task model so (Raffel et al. §3.5.3)."""
  prefix = HEADS + task + '/'
  if not any(prefix in name for name in flat):
    tasks = sorted({name.split(HEADS)[1].split('/')[0] for name in flat if HEADS in name})
    raise CheckpointError(f'a multi-task checkpoint, of tasks {", ".join(tasks)}: '
                          + (f'it has no task {task!r}' if task else 'name the task to use '
                             '(train.py --task)'))
  return {name.replace(prefix, 'decoder/'): leaf for name, leaf in flat.items()
          if HEADS not in name or prefix in name}


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Nested dicts <-> {'a/b/c': leaf}.
# ---------------------------------------------------------------------------------------------

def _is_tensorstore_spec(x):
  """A TensorStore spec in the index (T5X `_is_leaf`: a dict with a driver and a kvstore)."""
  return isinstance(x, dict) and 'driver' in x and 'kvstore' in x


def flatten(tree, prefix=''):
  """{'a': {'b': x}} -> {'a/b': x}. Spec dicts and non-dicts are leaves."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and not _is_tensorstore_spec(value):
      flat.update(flatten(value, name + '/'))
    else:
      flat[name] = value
  return flat


def unflatten(flat):
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _map_tree(fn, tree, prefix=''):
  """fn(name, leaf) on every leaf, keeping the tree's structure (empty dicts included)."""
  return {key: (_map_tree(fn, value, f'{prefix}{key}/')
                if isinstance(value, dict) and not _is_tensorstore_spec(value)
                else fn(f'{prefix}{key}', value))
          for key, value in tree.items()}


# ---------------------------------------------------------------------------------------------
# The msgpack index.
# ---------------------------------------------------------------------------------------------

def _ext_hook(code, data):
  """flax's msgpack extensions: ndarray (1) and numpy scalar (3), both [shape, dtype, bytes].

  Both come back as numpy arrays (a scalar as a rank-0 array), so every leaf is an ndarray.
  """
  if code not in (EXT_NDARRAY, EXT_NPSCALAR):
    raise CheckpointError(f'unsupported msgpack extension type {code}')
  shape, dtype, buffer = msgpack.unpackb(data, raw=False)
  return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape).copy()


def _unchunk(tree):
  """flax writes inline arrays over ~1 GiB as {'__msgpack_chunked_array__', 'shape', 'chunks'}
  of flat pieces (`serialization._chunk`); put them back together."""
  if not isinstance(tree, dict):
    return tree
  if '__msgpack_chunked_array__' in tree:
    shape = [tree['shape'][str(i)] for i in range(len(tree['shape']))]
    chunks = [tree['chunks'][str(i)] for i in range(len(tree['chunks']))]
    return np.concatenate(chunks).reshape(shape)
  return {key: _unchunk(value) for key, value in tree.items()}


def _join(directory, name):
  return (posixpath if directory.startswith('gs://') else os.path).join(directory, name)


def _dirname(path):
  return (posixpath if path.startswith('gs://') else os.path).dirname(path)


def absolute_spec(spec, checkpoint_dir):
  """The TensorStore spec of an index leaf, its relative path joined to `checkpoint_dir`.

  NOTE: as T5X `_update_ts_path_from_relative_to_absolute` and
  `_maybe_update_ts_from_{gcs_to_file,file_to_gcs}`: the kvstore driver written in the index
  ('file', 'gfile', or 'gcs' with the placeholder bucket 't5x-dummy-bucket') is replaced by
  the one of the directory we read from; the path is in `kvstore` (tensorstore >= 0.1.14)
  or at the top level (older specs, as T5X's gcs writer still produces).
  """
  kvstore = spec['kvstore']
  if kvstore.get('driver') not in ('file', 'gfile', 'gcs'):
    raise CheckpointError(f'unsupported kvstore driver in {spec}')
  relative = kvstore.get('path', spec.get('path'))
  if relative is None:
    raise CheckpointError(f'no path in TensorStore spec {spec}')
  if not relative.endswith('/'):
    relative += '/'  # a zarr array is a directory of chunk files
  out = {key: value for key, value in spec.items() if key != 'path'}
  out['kvstore'] = fileio.kvstore(_join(checkpoint_dir, relative))
  return out


def read_index(path):
  """The decoded index of a checkpoint: the tree under 'optimizer' (T5X) or the whole tree.

  `path` is a checkpoint directory (with its index file `checkpoint`), or a single-file
  msgpack (legacy T5X format). Leaves are numpy arrays (inline) or TensorStore specs whose
  paths are made absolute (read them with `read_t5x`). A Hugging Face model directory gives
  {'target': params} under T5X's names, its leaves `hf_ckpt.LazyTensor`s (see hf_ckpt.py).
  """
  path = path.rstrip('/')
  if hf_ckpt.is_hf_checkpoint(path):
    return hf_ckpt.read_index(path)
  index_path = _join(path, INDEX_FILE)
  data = fileio.read_bytes(index_path)
  checkpoint_dir = path
  if data is None:  # not a directory: a single-file checkpoint?
    index_path, data = path, fileio.read_bytes(path)
    checkpoint_dir = _dirname(path)
  if data is None:
    raise CheckpointError(f'no T5X checkpoint at {path}: no index {_join(path, INDEX_FILE)}, '
                          'and not a single-file checkpoint')
  try:
    tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  except (ValueError, msgpack.UnpackException) as e:
    raise CheckpointError(f'cannot decode the msgpack index {index_path}: {e}') from e
  if not isinstance(tree, dict):
    raise CheckpointError(f'{index_path} is not a checkpoint index (top level: {type(tree)})')
  tree = _unchunk(tree.get('optimizer', tree))
  return _map_tree(lambda _, leaf: absolute_spec(leaf, checkpoint_dir)
                   if _is_tensorstore_spec(leaf) else leaf, tree)


def leaf_shape(leaf):
  """Shape of an index leaf, without reading it."""
  if _is_tensorstore_spec(leaf):
    return tuple(leaf['metadata']['shape'])
  return np.shape(leaf)


# ---------------------------------------------------------------------------------------------
# Reading arrays through TensorStore.
# ---------------------------------------------------------------------------------------------

def _where(spec):
  kvstore = spec['kvstore']
  if kvstore['driver'] == 'gcs':
    return f"gs://{kvstore['bucket']}/{kvstore['path']}"
  return kvstore['path']


def _open_all(specs):
  """{name: spec} -> {name: TensorStore}, all opens in flight at once.

  The `.zarray` of each array is checked against the index's metadata (shape, chunks, dtype).
  NOTE: T5X's own test checkpoint has no `.zarray`: then the index's metadata is the array's
  (`assume_metadata=True`). Missing chunks are an error, never silently zero
  (`fill_missing_data_reads=False`).
  """
  def open_(spec, **kwargs):
    return ts.open(dict(spec, fill_missing_data_reads=False), read=True, **kwargs)

  futures = {name: open_(spec) for name, spec in specs.items()}
  stores = {}
  for name, future in futures.items():
    try:
      stores[name] = future.result()
    except ValueError as e:
      if not str(e).startswith('NOT_FOUND'):  # a .zarray that disagrees with the index
        raise CheckpointError(f'array {name!r} at {_where(specs[name])} does not match the '
                              f'checkpoint index: {e}') from e
      stores[name] = _result(open_(specs[name], assume_metadata=True), name, specs[name])
  return stores


def _result(future, name, spec):
  """future.result(), turning TensorStore's errors into a CheckpointError naming the array."""
  try:
    return future.result()
  except ValueError as e:
    raise CheckpointError(f'cannot read array {name!r} from {_where(spec)}: {e}') from e


def _read_all(leaves):
  """{name: index leaf} -> {name: numpy array}: inline arrays as they are, the others read
  through TensorStore, all reads in flight at once."""
  specs = {name: leaf for name, leaf in leaves.items() if _is_tensorstore_spec(leaf)}
  stores = _open_all(specs)
  futures = {name: store.read() for name, store in stores.items()}
  return {name: _result(futures[name], name, leaf) if name in specs else np.asarray(leaf)
          for name, leaf in leaves.items()}


def _selected(name, names):
  return any(name == n or name.startswith(n.rstrip('/') + '/') for n in names)


def read_t5x(path, names=None):
  """A T5X checkpoint as a nested dict of numpy arrays, mirroring its tree.

  For T5X's index {'version', 'optimizer': {'target', 'state'}} this is
  {'target': params, 'state': {'step', 'param_states'}}. With `names` (leaf names or subtree
  prefixes, e.g. ['target/encoder', 'state/step']) only those leaves are read; the others are
  never opened. Arrays keep their stored dtype (float32, bfloat16, float64, int32, ...).
  """
  index = read_index(path)
  if names is None:
    arrays = _read_all(flatten(index))
    return _map_tree(lambda name, _: arrays[name], index)
  names = [names] if isinstance(names, str) else list(names)
  flat = flatten(index)
  missing = [n for n in names if not any(_selected(name, [n]) for name in flat)]
  if missing:
    raise CheckpointError(f'{path}: not in the checkpoint: {missing}')
  return unflatten(_read_all({name: leaf for name, leaf in flat.items()
                              if _selected(name, names)}))


def _index_key(index):
  """Hashable form of a tuple of slices (Python < 3.12 slices are unhashable)."""
  return tuple((s.start, s.stop, s.step) for s in index)


def _read_sharded(leaf, store, name, sharding, dtype=None):
  """One global jax.Array laid out by `sharding` (cast to `dtype`, default: as stored); this
  process reads only its devices' slices (each distinct slice once), straight from the
  checkpoint."""
  shape = leaf_shape(leaf)
  device_index = sharding.addressable_devices_indices_map(shape)
  slices = {}
  for index in device_index.values():
    key = _index_key(index)
    if key not in slices:
      part = leaf[index] if store is None else _result(store[index].read(), name, leaf)
      slices[key] = np.asarray(part, dtype)  # dtype None keeps the stored one
  shards = [jax.device_put(slices[_index_key(index)], device)
            for device, index in device_index.items()]
  return jax.make_array_from_single_device_arrays(shape, sharding, shards)


# ---------------------------------------------------------------------------------------------
# T5.1.1 -> EncT5 (paper §4.2).
# ---------------------------------------------------------------------------------------------

def _config_from_flat(flat, path):
  """Model sizes from the shapes of a flattened index."""
  def shape(name):
    if f'target/{name}' not in flat:
      raise CheckpointError(f'{path}: {name!r} is missing: not a T5.1.1 checkpoint')
    return leaf_shape(flat[f'target/{name}'])

  def count_layers(stack):
    return len({name.split('/')[2] for name in flat
                if re.match(rf'target/{stack}/layers_\d+/', name)})

  vocab_size, d_model = shape('token_embedder/embedding')  # [V, D]
  num_heads, _ = shape('encoder/relpos_bias/rel_embedding')  # [H, buckets]
  _, inner = shape('encoder/layers_0/attention/query/kernel')  # [D, H*K]
  _, d_ff = shape('encoder/layers_0/mlp/wi_0/kernel')  # [D, F]
  return dict(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
              head_dim=inner // num_heads, d_ff=d_ff, num_layers=count_layers('encoder'),
              num_decoder_layers=count_layers('decoder'))


def config_from_checkpoint(path):
  """dict(vocab_size, d_model, num_heads, head_dim, d_ff, num_layers, num_decoder_layers),
  from the index's shapes alone. Shapes give H*K, not K: H comes from the relative-position
  table `encoder/relpos_bias/rel_embedding` [H, buckets]."""
  return _config_from_flat(flatten(read_index(path)), path)


def checkpoint_step(path):
  """The Adafactor step stored in a checkpoint (0 if it has no optimizer state)."""
  if 'state/step' not in flatten(read_index(path)):
    return 0
  return int(read_t5x(path, ['state/step'])['state']['step'])


def _check_config(flat, cfg, path):
  ckpt = _config_from_flat(flat, path)
  wrong = [f'{key} {getattr(cfg, key)} (config) vs {ckpt[key]} (checkpoint)'
           for key in ('vocab_size', 'd_model', 'num_heads', 'head_dim', 'd_ff', 'num_layers')
           if getattr(cfg, key) != ckpt[key]]
  if wrong:
    raise CheckpointError(f'{path}: the config does not match the checkpoint: '
                          + '; '.join(wrong))


def _placement(shardings, opt_shardings, shapes, with_optimizer_state):
  """{name in the checkpoint's tree: Sharding} from the params' (and opt_state's) shardings."""
  placement = {f'target/{name}': s for name, s in flatten(shardings).items()}
  if with_optimizer_state:
    opt_shardings = opt_shardings or partitioning.opt_state_shardings(shardings,
                                                                       unflatten(shapes))
    placement.update({f'state/{name}': s for name, s in flatten(opt_shardings).items()})
  return placement


def _read_as(flat, names, placement):
  """{name: array} for index leaves `names`, float32 (the step int32): numpy arrays, or with
  `placement` ({name: Sharding}) global jax.Arrays of which this process reads only its part."""
  dtype = lambda name: np.int32 if name == 'state/step' else np.float32
  leaves = {name: flat[name] for name in names}
  if placement is None:
    return {name: np.asarray(x, dtype(name)) for name, x in _read_all(leaves).items()}
  stores = _open_all({name: leaf for name, leaf in leaves.items() if _is_tensorstore_spec(leaf)})
  return {name: _read_sharded(leaf, stores.get(name), name, placement[name], dtype(name))
          for name, leaf in leaves.items()}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_fresh(rng, cfg, names):
  """EncT5 parameters `names` (the heads, and the pooling block of an encoder-only
  checkpoint), exactly as `init_params(rng, cfg)` makes them; under jit, XLA drops the
  initializers of all the others."""
  params = flatten(enct5.init_params(rng, cfg))
  return {f'target/{name}': params[name] for name in names}


def load_params(path, cfg, rng, *, model='enct5', with_optimizer_state=False, shardings=None,
                opt_shardings=None, fresh_pooling_block=False, task=None):
  """Parameters of `model` ('enct5', 't5' or '1dect5') from a pre-trained checkpoint (a
  T5.1.1 of T5X's or Hugging Face's, or an EncT5 of ours), optionally with Adafactor state.

  'enct5' (paper §4.2): the token embedding, the whole encoder (with its relative-position
  table), the first decoder layer's cross-attention and FFN with their norms, and the decoder's
  final norm. Never read: the other decoder layers, the decoder's self-attention and
  relative-position table, and the vocabulary projection `decoder/logits_dense`.
  `decoder/bos_embedding` and `decoder/class_projection` are those of
  `enct5.init_params(rng, cfg)`. An encoder-only checkpoint (T5EncoderModel, Sentence-T5) has
  no pooling block: an error, unless `fresh_pooling_block` asks for a random one. An EncT5
  checkpoint of ours (one with `decoder/class_projection`, or multi-task `decoder/heads/`)
  loads whole, its heads included; a one-task model from a multi-task checkpoint takes the head
  of `task` (`select_head`).
  't5': the whole tree (`enct5.param_specs(cfg, 't5')`), nothing fresh. '1dect5' (§4.3): the
  same with only decoder layer 0 (self-attention included), the decoder's relative-position
  table, final norm and `logits_dense`; the other decoder layers are never read.

  Returns float32 params, or (params, opt_state) with `with_optimizer_state`: the checkpoint's
  Adafactor slots for every loaded parameter (zeros for the fresh ones) and its step count, so
  the second-moment decay continues from the checkpoint's step; a checkpoint without optimizer
  state (Hugging Face's) gives zeros at step 0, as `adafactor.init`. Without `shardings`:
  numpy arrays. With `shardings` (a Sharding per parameter, the params' tree) every process reads
  only the slices of its own devices and gets global jax.Arrays; `opt_shardings` (opt_state's
  tree; default: `partitioning.opt_state_shardings`, the state beside its parameter) places
  the state. Shardings must be NamedShardings when the optimizer state is loaded.
  """
  flat = flatten(read_index(path))
  if model == 'enct5' and not cfg.heads and any(HEADS in name for name in flat):
    flat = select_head(flat, task)
  _check_config(flat, cfg, path)
  shapes = {name: spec.shape for name, spec in flatten(enct5.param_specs(cfg, model)).items()}
  fresh = _fresh_params(flat, shapes, model, fresh_pooling_block, path)
  with_state = with_optimizer_state and 'state/step' in flat
  if with_optimizer_state and not with_state:
    logging.info('%s has no optimizer state: Adafactor starts from zeros at step 0', path)
  expected = _leaves_to_read(flat, shapes, fresh, with_state, path)
  placement = None if shardings is None else _placement(shardings, opt_shardings, shapes,
                                                        with_optimizer_state)
  arrays = _read_as(flat, expected, placement)
  put = lambda name, x: x if placement is None else jax.device_put(x, placement[name])
  if fresh:
    for name, value in _init_fresh(rng, cfg, fresh).items():
      arrays[name] = put(name, np.asarray(value))
  if with_optimizer_state:
    if not with_state:
      arrays['state/step'] = put('state/step', np.zeros((), np.int32))
    for name in (fresh if with_state else shapes):
      for slot, shape in adafactor.state_shapes(shapes[name]).items():
        key = f'state/param_states/{name}/{slot}'
        arrays[key] = put(key, np.zeros(shape, np.float32))
  tree = unflatten(arrays)
  return (tree['target'], tree['state']) if with_optimizer_state else tree['target']


def _fresh_params(flat, shapes, model, fresh_pooling_block, path):
  """The parameter names of `model` that the checkpoint does not give (§3): EncT5's learned
  query and head from a T5.1.1 checkpoint, and its pooling block too from an encoder-only one
  when `fresh_pooling_block`; none for the baselines and for an EncT5 checkpoint of ours."""
  if model != 'enct5' or has_heads(flat):
    return ()
  heads = tuple(name for name in shapes if is_head_param(name))
  if any(name.startswith('target/decoder/') for name in flat):
    return heads
  pooling_block = tuple(name for name in shapes
                        if name.startswith('decoder/') and not is_head_param(name))
  if not fresh_pooling_block:
    raise CheckpointError(
        f'{path} is an encoder-only checkpoint: it has no decoder, so EncT5\'s pooling block '
        f'(the first decoder layer\'s cross-attention and FFN with their norms, and the '
        f'decoder\'s final norm: {", ".join(pooling_block)}) is missing. To start the '
        f'pooling block from random init, pass fresh_pooling_block=True '
        f'(train.py --fresh_pooling_block).')
  return heads + pooling_block


def _leaves_to_read(flat, shapes, fresh, with_state, path):
  """{index leaf name: expected shape} of every loaded parameter (and with `with_state` its
  Adafactor slots and the step), each checked to be in the checkpoint with that shape."""
  loaded = [name for name in shapes if name not in fresh]
  expected = {f'target/{name}': shapes[name] for name in loaded}
  if with_state:
    expected['state/step'] = ()
    for name in loaded:
      for slot, shape in adafactor.state_shapes(shapes[name]).items():
        expected[f'state/param_states/{name}/{slot}'] = shape
  for name, shape in expected.items():
    if name not in flat:
      raise CheckpointError(f'{path}: {name!r} is missing from the checkpoint')
    if tuple(leaf_shape(flat[name])) != tuple(shape):
      raise CheckpointError(f'{path}: {name!r} has shape {tuple(leaf_shape(flat[name]))} '
                            f'in the checkpoint, expected {tuple(shape)}')
  return expected


def complete_checkpoints(directory):
  """[(step, path)] of the complete checkpoints in `directory`, oldest first."""
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    match = _STEP_DIR.fullmatch(name)
    path = os.path.join(directory, name)
    if match and os.path.isfile(os.path.join(path, INDEX_FILE)):
      found.append((int(match[1]), path))
  return sorted(found)


def latest_checkpoint(directory):
  """Path of the newest complete `checkpoint_<step>` in `directory` (with its index), or None."""
  found = complete_checkpoints(directory)
  return found[-1][1] if found else None


def restore_checkpoint(directory, *, shardings=None, opt_shardings=None):
  """(params, opt_state) of the newest checkpoint in `directory` that reads back whole
  (`read_checkpoint`), or None when there is none: how a run resumes. A damaged one (e.g. a
  truncated array file) is said so, renamed `<name>.damaged` (kept to look at, out of the way
  of the step that saves it again) and the previous one is tried."""
  found = complete_checkpoints(directory)
  for _, path in reversed(found):
    try:
      state = read_checkpoint(path, shardings=shardings, opt_shardings=opt_shardings)
    except CheckpointError as e:
      logging.warning('%s is damaged, not resuming from it (renamed %s.damaged): %s', path,
                      path, e)
      if jax.process_index() == 0:
        os.rename(path, f'{path}.damaged')
      continue
    logging.info('resuming from %s', path)
    return state
  if found:
    raise CheckpointError(f'every checkpoint in {directory} is damaged (see the log); remove '
                          'them to start over')
  return None


def read_checkpoint(path, *, shardings=None, opt_shardings=None):
  """(params, opt_state) of the checkpoint at `path`, exactly what `save_ckpt.save_checkpoint` wrote
  (same dtypes, bit for bit): numpy arrays, or with `shardings` (and `opt_shardings`, as in
  `load_params`) global jax.Arrays of which each process reads only its own slices. A damaged
  file (a truncated array) raises CheckpointError.
  """
  if shardings is None:
    tree = read_t5x(path)
  else:
    flat = flatten(read_index(path))
    shapes = {name[len('target/'):]: leaf_shape(leaf) for name, leaf in flat.items()
              if name.startswith('target/')}
    placement = _placement(shardings, opt_shardings, shapes, with_optimizer_state=True)
    missing = sorted(set(flat) ^ set(placement))
    if missing:
      raise CheckpointError(f'{path}: the checkpoint and the shardings differ at {missing}')
    stores = _open_all({name: leaf for name, leaf in flat.items() if _is_tensorstore_spec(leaf)})
    tree = unflatten({name: _read_sharded(leaf, stores.get(name), name, placement[name])
                      for name, leaf in flat.items()})
  return tree['target'], tree['state']
