"""Adafactor (Shazeer & Stern 2018), exactly as T5X `t5x/adafactor.py` with its defaults: the
optimizer of the paper (§4.1). Factored second moments, no momentum (beta1=None), update
clipping 1.0, step size scaled by the parameter's RMS, no weight decay.

The state is T5X's layout, so a T5.1.1 checkpoint's optimizer state loads as it is:
{'step': int32, 'param_states': {<param path>: {'m', 'v', 'v_row', 'v_col'}}}.
"""
import jax
import jax.numpy as jnp
import numpy as np

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


def state_shapes(shape, min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """Shapes of a parameter's slots {'m', 'v', 'v_row', 'v_col'}: T5X `init_param_state`.

  Factored: `v_row` without col_dim, `v_col` without row_dim. Unfactored: a full `v`. Unused
  slots, and `m` (no momentum), are (1,) placeholders, as stored in T5X checkpoints.
  """
  shapes = {'m': (1,), 'v': tuple(shape), 'v_row': (1,), 'v_col': (1,)}
  dims = factored_dims(shape, min_dim_size_to_factor)
  if dims is not None:
    row, col = dims
    shapes['v'] = (1,)
    shapes['v_row'] = tuple(np.delete(shape, col).tolist())
    shapes['v_col'] = tuple(np.delete(shape, row).tolist())
  return shapes


def init(params, *, min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR):
  """Zero state for `params` at step 0."""
  param_states = jax.tree.map(
      lambda p: {slot: jnp.zeros(shape, jnp.float32)
                 for slot, shape in state_shapes(p.shape, min_dim_size_to_factor).items()},
      params)
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


def update(grads, opt_state, params, learning_rate, *,
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
