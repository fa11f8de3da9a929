"""Fine-tune EncT5 (Liu et al. 2021) with Adafactor: `python train.py --flags`.

Reads top-down: Adafactor (T5X `t5x/adafactor.py`); sharding over a ('data', 'model') mesh
(T5X's partitioning rules, `jax.jit` with `NamedSharding`); the train and eval steps.
"""
import logging

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import enct5


# ----------------------------------------------------------------------------------------------
# Adafactor (Shazeer & Stern 2018), exactly as T5X `adafactor.Adafactor` with its defaults, the
# optimizer of the paper (§4.1): factored second moments, no momentum (beta1=None), update
# clipping 1.0, step size scaled by the parameter's RMS, no weight decay.
# ----------------------------------------------------------------------------------------------

DECAY_RATE = 0.8                 # rho_t = 1 - (t + 1)^-0.8, t = steps taken so far
EPSILON1 = 1e-30                 # added to g^2
EPSILON2 = 1e-3                  # floor of the parameter scale RMS(param)
CLIPPING_THRESHOLD = 1.0         # update clipping: y / max(1, RMS(y) / 1.0)
MIN_DIM_SIZE_TO_FACTOR = 128     # factor only if the second-largest dim is >= 128


def factored_dims(shape, min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """(row_dim, col_dim) of a factored second moment, or None: T5X `Adafactor._factored_dims`.

  col_dim is the largest dim and row_dim the second largest; with equal sizes the earlier dim is
  the row (T5X's `np.argsort`), so a (128, 128) kernel has v_row indexed by dim 0 and `wo`
  [F, D] = (256, 128) has v_row indexed by dim 1. `v_row` = mean of g^2 over col_dim (shape
  without col_dim); `v_col` = mean over row_dim.
  NOTE: T5X is built with `standard_logical_factor_rules()`, but `_parse_rule` falls back to
  this shape heuristic for every parameter of rank <= 2 (all of ours), so the rules never apply.
  """
  if len(shape) < 2:
    return None
  order = np.argsort(shape, kind='stable')
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def _init_param_state(param, min_dim_size_to_factor):
  """T5X `init_param_state`: unused slots are zeros((1,)) placeholders, as in checkpoints."""
  state = {k: jnp.zeros((1,), jnp.float32) for k in ('m', 'v', 'v_row', 'v_col')}
  dims = factored_dims(param.shape, min_dim_size_to_factor)
  if dims is None:
    state['v'] = jnp.zeros(param.shape, jnp.float32)
  else:
    row, col = dims
    state['v_row'] = jnp.zeros(np.delete(param.shape, col), jnp.float32)
    state['v_col'] = jnp.zeros(np.delete(param.shape, row), jnp.float32)
  return state


def adafactor_init(params, *, min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """Optimizer state in T5X's layout: {'step': int32 0, 'param_states': {... {m, v, v_row, v_col}}}."""
  param_states = jax.tree.map(lambda p: _init_param_state(p, min_dim_size_to_factor), params)
  return {'step': jnp.zeros((), jnp.int32), 'param_states': param_states}


def _update_param(param, grad, state, step, learning_rate, min_dim_size_to_factor):
  """One parameter's update: T5X `Adafactor.apply_param_gradient` with the default hparams."""
  grad = grad.astype(jnp.float32)
  # NOTE: T5X `_decay_rate_pow(step)`: rho = 1 - (step + 1)^-0.8 with `step` the count *before*
  # this update, so the first update (step 0) has rho = 0 and v = g^2 + eps1.
  decay_rate = 1.0 - (step.astype(jnp.float32) + 1.0) ** -DECAY_RATE
  mixing_rate = 1.0 - decay_rate
  # Relative step size: lr * max(RMS(param), eps2).
  param_scale = jnp.maximum(jnp.sqrt(jnp.mean(param * param)), EPSILON2)
  update_scale = learning_rate * param_scale
  grad_sqr = grad * grad + EPSILON1
  new_state = {k: jnp.zeros((1,), jnp.float32) for k in ('m', 'v', 'v_row', 'v_col')}
  dims = factored_dims(param.shape, min_dim_size_to_factor)
  if dims is not None:
    row, col = dims
    new_v_row = decay_rate * state['v_row'] + mixing_rate * jnp.mean(grad_sqr, axis=col)
    new_v_col = decay_rate * state['v_col'] + mixing_rate * jnp.mean(grad_sqr, axis=row)
    new_state['v_row'], new_state['v_col'] = new_v_row, new_v_col
    # v ~ outer(v_row, v_col) / mean(v_row): y = g / sqrt(v).
    row_factor = (new_v_row / jnp.mean(new_v_row)) ** -0.5
    col_factor = new_v_col ** -0.5
    y = grad * jnp.expand_dims(row_factor, col) * jnp.expand_dims(col_factor, row)
  else:
    new_v = decay_rate * state['v'] + mixing_rate * grad_sqr
    new_state['v'] = new_v
    y = grad * new_v ** -0.5
  y = y / jnp.maximum(1.0, jnp.sqrt(jnp.mean(y * y)) / CLIPPING_THRESHOLD)
  new_param = param - update_scale * y
  return new_param.astype(param.dtype), new_state


def adafactor_update(grads, opt_state, params, learning_rate, *,
                     min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """One Adafactor step: T5X `Adafactor.apply_gradient`. Returns (new_params, new_opt_state).

  Pure: jit it; `learning_rate` may be traced. The state's step count increments by one.
  """
  step = opt_state['step']
  out = jax.tree.map(
      lambda p, g, s: _update_param(p, g, s, step, learning_rate, min_dim_size_to_factor),
      params, grads, opt_state['param_states'])
  is_pair = lambda x: isinstance(x, tuple)
  new_params = jax.tree.map(lambda pair: pair[0], out, is_leaf=is_pair)
  new_states = jax.tree.map(lambda pair: pair[1], out, is_leaf=is_pair)
  return new_params, {'step': step + 1, 'param_states': new_states}


# ----------------------------------------------------------------------------------------------
# Sharding: one code path for one CPU, many devices and many hosts. A Mesh with axes
# ('data', 'model'); batches split on 'data'; parameters partitioned by name rules.
# ----------------------------------------------------------------------------------------------

# NOTE: T5X `partitioning.standard_logical_axis_rules()` (1-D parameter partitioning, the
# default): vocabulary, heads, joined heads x head dim and FFN hidden dims go on 'model';
# 'embed' (d_model), head dim and relative-position buckets are replicated. 'classes' (EncT5's
# projection, not in T5X) is tiny and replicated.
LOGICAL_AXIS_RULES = {
    'vocab': 'model', 'mlp': 'model', 'heads': 'model', 'joined_kv': 'model',
    'embed': None, 'kv': None, 'relpos_buckets': None, 'classes': None,
}


def initialize_distributed(coordinator_address=None, num_processes=1, process_id=0):
  """Many hosts with JAX's own runtime: every process runs this same program, and the mesh
  spans all processes' devices. On CPU the cross-process collectives are gloo (jax's default
  `jax_cpu_collectives_implementation`)."""
  if num_processes > 1:
    if not coordinator_address:
      raise ValueError('--num_processes > 1 needs --coordinator_address (host:port of process 0)')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(mesh_shape=None, devices=None):
  """Mesh ('data', 'model') from 'DxM' (e.g. '4x2'); default: every device on 'data'."""
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
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh(shape, ('data', 'model'), auto, devices=devices)


def _mesh_spec(shape, axes, mesh, path, replicated):
  """PartitionSpec of one array from its logical axes; a dim the mesh axis does not divide
  is replicated instead (and recorded in `replicated`)."""
  spec = []
  for dim, (size, name) in enumerate(zip(shape, axes)):
    mesh_axis = LOGICAL_AXIS_RULES.get(name)
    if mesh_axis is not None and (mesh_axis in spec or size % mesh.shape[mesh_axis]):
      replicated.append(f'{path} dim {dim} ({name}={size}, {mesh_axis}={mesh.shape[mesh_axis]})')
      mesh_axis = None
    spec.append(mesh_axis)
  return P(*spec)


def _path_name(path):
  return '/'.join(str(k.key) for k in path)


def param_partition_specs(cfg, mesh, model='enct5'):
  """PartitionSpecs of the parameters, from `enct5.param_specs(cfg)` logical axes."""
  replicated = []
  specs = jax.tree_util.tree_map_with_path(
      lambda path, s: _mesh_spec(s.shape, s.axes, mesh, _path_name(path), replicated),
      enct5.param_specs(cfg, model), is_leaf=lambda x: isinstance(x, enct5.ParamSpec))
  if replicated:
    logging.warning('mesh %s does not divide these dims; they are replicated: %s',
                    dict(mesh.shape), '; '.join(replicated))
  return specs


def opt_partition_specs(param_specs_, param_shapes, min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """Adafactor state sharded like its parameter: v as the parameter; v_row (v_col) as the
  parameter without its col (row) dim; (1,) placeholders and the step replicated.

  NOTE: T5X replicates v_row/v_col (`Adafactor.derive_logical_axes`); sharding them like their
  parameter only changes where they live, not their values.
  """
  def leaf(spec, shape):
    dims = factored_dims(shape, min_dim_size_to_factor)
    if dims is None:
      return {'m': P(), 'v': spec, 'v_row': P(), 'v_col': P()}
    row, col = dims
    full = tuple(spec) + (None,) * (len(shape) - len(spec))
    drop = lambda d: P(*(a for i, a in enumerate(full) if i != d))
    return {'m': P(), 'v': P(), 'v_row': drop(col), 'v_col': drop(row)}
  param_states = jax.tree.map(leaf, param_specs_, param_shapes,
                              is_leaf=lambda x: isinstance(x, P))
  return {'step': P(), 'param_states': param_states}


def named(mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


class Shardings:
  """NamedShardings of the parameters, the optimizer state and batches on one mesh."""

  def __init__(self, cfg, mesh, model='enct5'):
    self.mesh = mesh
    specs = param_partition_specs(cfg, mesh, model)
    shapes = jax.tree.map(lambda s: s.shape, enct5.param_specs(cfg, model),
                          is_leaf=lambda x: isinstance(x, enct5.ParamSpec))
    self.params = named(mesh, specs)
    self.opt_state = named(mesh, opt_partition_specs(specs, shapes))
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


# ----------------------------------------------------------------------------------------------
# The train and eval steps: one jit each, parameters and optimizer state donated.
# ----------------------------------------------------------------------------------------------

def dropout_rng(seed, step):
  """Dropout key of a step, a function of (seed, step) only, so a resumed run is exact."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def make_train_step(cfg, shardings, learning_rate, seed):
  """jit((params, opt_state, batch) -> (params, opt_state, metrics)): grad of
  `enct5.loss_fn` (mean per example), then Adafactor. Dropout key from (seed, Adafactor step).
  """
  def train_step(params, opt_state, batch):
    rng = dropout_rng(seed, opt_state['step']) if cfg.dropout_rate > 0 else None
    grad_fn = jax.value_and_grad(lambda p: enct5.loss_fn(p, cfg, batch, rng=rng), has_aux=True)
    (loss, aux), grads = grad_fn(params)
    params, opt_state = adafactor_update(grads, opt_state, params, learning_rate)
    metrics = {'loss': loss, 'loss_sum': aux['loss_sum'], 'num_examples': aux['num_examples']}
    return params, opt_state, metrics

  return jax.jit(train_step,
                 in_shardings=(shardings.params, shardings.opt_state, shardings.batch),
                 out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
                 donate_argnums=(0, 1))


def make_eval_step(cfg, shardings):
  """jit((params, batch) -> logits [B, T, n+1] (regression [B, T])), replicated on every host."""
  return jax.jit(lambda params, batch: enct5.apply(params, cfg, batch),
                 in_shardings=(shardings.params, shardings.batch),
                 out_shardings=shardings.replicated)


def init_train_state(cfg, shardings, rng):
  """Fresh parameters and Adafactor state, born sharded (jit with out_shardings)."""
  params = jax.jit(lambda key: enct5.init_params(key, cfg),
                   out_shardings=shardings.params)(rng)
  opt_state = jax.jit(adafactor_init, out_shardings=shardings.opt_state)(params)
  return params, opt_state
