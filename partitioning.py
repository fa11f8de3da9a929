"""Sharding over a ('data', 'model') mesh, after T5X `partitioning.py`: one code path for one
CPU, one accelerator, many devices and many hosts (`jax.jit` with `NamedSharding`).

Each parameter is declared once as a `ParamSpec` (the table is `enct5.param_specs`) with its
T5X logical axes, which `LOGICAL_AXIS_RULES` maps to mesh axes. Batches are split on 'data';
the Adafactor state follows its parameter (`opt_state_shardings`); activations are constrained
where T5X's layers constrain them (`with_sharding_constraint`, under `activation_mesh`).

Many hosts run this same code on one mesh over all their devices: `hosts.py` joins them.
"""
import logging
from typing import NamedTuple

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

import adafactor


class ParamSpec(NamedTuple):
  """One parameter, declared once (`enct5.param_specs`): init, sharding, Adafactor factoring
  and parameter counts all derive from it."""
  shape: tuple
  axes: tuple  # T5X logical axis names, mapped to mesh axes by LOGICAL_AXIS_RULES
  init: object  # jax.nn.initializers-style fn(key, shape, dtype)


# NOTE: T5X `partitioning.standard_logical_axis_rules()` (1-D parameter partitioning, the
# default) on a ('data', 'model') mesh: vocabulary, heads, joined heads x head dim and FFN
# hidden dims go on 'model'; 'embed' (d_model), head dim and relative-position buckets are
# replicated; activations' 'batch' goes on 'data'. 'classes' (EncT5's projection, not in
# T5X) is tiny and replicated.
LOGICAL_AXIS_RULES = {
    'batch': 'data', 'vocab': 'model', 'mlp': 'model', 'heads': 'model', 'joined_kv': 'model',
    'embed': None, 'kv': None, 'length': None, 'relpos_buckets': None, 'classes': None,
}


def logical_to_mesh(shape, logical_axes, mesh_shape, replicated=None):
  """PartitionSpec of an array from its logical axes. A dim that its mesh axis does not divide
  (or whose mesh axis an earlier dim took) is replicated instead, and listed in `replicated`."""
  spec = []
  for dim, (size, name) in enumerate(zip(shape, logical_axes)):
    mesh_axis = LOGICAL_AXIS_RULES[name]
    if mesh_axis is not None and (mesh_axis in spec or size % mesh_shape[mesh_axis]):
      if replicated is not None:
        replicated.append(f'dim {dim} ({name}={size}, {mesh_axis}={mesh_shape[mesh_axis]})')
      mesh_axis = None
    spec.append(mesh_axis)
  return P(*spec)


def with_sharding_constraint(x, logical_axes):
  """Lays out activation `x` by its logical axes on the mesh of the step being traced (T5X's
  layers constrain the same activations); without one (plain `jax.jit`, one device) returns
  x as it is. The train step enters its mesh with `activation_mesh`."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_mesh(x.shape, logical_axes, mesh.shape))


def make_mesh(mesh_shape=None, devices=None, batch_size=None):
  """Mesh ('data', 'model') from 'DxM' (e.g. '4x2'); default: every device on 'data'. With
  `batch_size`, checked to split evenly over 'data'."""
  devices = jax.devices() if devices is None else devices
  if not mesh_shape:
    shape = (len(devices), 1)
  else:
    try:
      shape = tuple(int(n) for n in mesh_shape.lower().split('x'))
    except ValueError:
      shape = ()
    if len(shape) != 2 or min(shape) < 1:
      raise ValueError(f"--mesh must look like '4x2' (data x model), got {mesh_shape!r}")
  if shape[0] * shape[1] != len(devices):
    raise ValueError(f'--mesh {shape[0]}x{shape[1]} needs {shape[0] * shape[1]} devices; '
                     f'there are {len(devices)} ({jax.process_count()} processes)')
  if batch_size is not None and batch_size % shape[0]:
    raise ValueError(f'--batch_size={batch_size} must be a multiple of the mesh\'s data axis '
                     f'({shape[0]})')
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh(shape, ('data', 'model'), auto, devices=devices)


def activation_mesh(mesh):
  """Context, entered inside a jitted step, under which `with_sharding_constraint` lays out
  activations on `mesh`."""
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def opt_state_shardings(param_shardings, param_shapes):
  """Where the Adafactor state lives: `v` like its parameter; `v_row` (`v_col`) like the
  parameter without its col (row) dim; the (1,) placeholders and the step replicated.

  `param_shardings`: a NamedSharding per parameter; `param_shapes`: the same tree of shapes.
  NOTE: T5X replicates v_row/v_col (`Adafactor.derive_logical_axes`); sharding them like their
  parameter only changes where they live, not their values.
  """
  leaves = jax.tree.leaves(param_shardings)
  replicated = NamedSharding(leaves[0].mesh, P())

  def param_state(sharding, shape):
    full = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    without = lambda d: NamedSharding(sharding.mesh,
                                      P(*(a for i, a in enumerate(full) if i != d)))
    state = {'m': replicated, 'v': replicated, 'v_row': replicated, 'v_col': replicated}
    dims = adafactor.factored_dims(shape)
    if dims is None:
      state['v'] = sharding
    else:
      row, col = dims
      state['v_row'], state['v_col'] = without(col), without(row)
    return state
  param_states = jax.tree.map(param_state, param_shardings, param_shapes,
                              is_leaf=lambda x: isinstance(x, NamedSharding))
  return {'step': replicated, 'param_states': param_states}


class Shardings:
  """NamedShardings of a model's parameters, its optimizer state and batches on one mesh.

  `specs`: the model's parameter tree of `ParamSpec`s (`enct5.param_specs`).
  """

  def __init__(self, specs, mesh):
    is_spec = lambda x: isinstance(x, ParamSpec)
    replicated = []

    def param_sharding(path, spec):
      found = []
      sharding = NamedSharding(mesh, logical_to_mesh(spec.shape, spec.axes, mesh.shape, found))
      replicated.extend(f'{"/".join(str(k.key) for k in path)} {what}' for what in found)
      return sharding
    self.mesh = mesh
    self.params = jax.tree_util.tree_map_with_path(param_sharding, specs, is_leaf=is_spec)
    if replicated:
      logging.warning('mesh %s does not divide these dims; they are replicated: %s',
                      dict(mesh.shape), '; '.join(replicated))
    shapes = jax.tree.map(lambda s: s.shape, specs, is_leaf=is_spec)
    self.opt_state = opt_state_shardings(self.params, shapes)
    self.batch = NamedSharding(mesh, P('data'))      # every batch array is [B, ...]
    self.replicated = NamedSharding(mesh, P())


def global_batch(batch, sharding):
  """A host numpy batch (the *global* batch; every process builds the same one) -> global
  jax.Arrays sharded on 'data'. Each process hands over only the rows its devices hold.
  """
  out = {}
  for name, x in batch.items():
    rows = _process_rows(sharding, x.shape)
    out[name] = jax.make_array_from_process_local_data(sharding, x[rows], x.shape)
  return out


def _process_rows(sharding, shape):
  """The rows of a [B, ...] array that this process's devices hold (a contiguous slice)."""
  index = sharding.addressable_devices_indices_map(shape)
  starts = sorted({idx[0].indices(shape[0])[:2] for idx in index.values()})
  lo, hi = starts[0][0], starts[-1][1]
  if sum(b - a for a, b in starts) != hi - lo:
    raise ValueError(f'rows of this process are not contiguous: {starts}')
  return slice(lo, hi)
