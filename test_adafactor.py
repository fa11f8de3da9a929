"""Tests of adafactor.py: updates against hand-worked ones and a float64 reference of T5X's
formulas, T5X's state shapes, and the state of a T5X-trained checkpoint: its layout, and its
next update at its own step."""
import jax.numpy as jnp
import numpy as np
import pytest

import adafactor
from testutil import MINI_CKPT, mini_checkpoint


def _adafactor_reference(param, grads, lr, factored):
  """Plain numpy, float64, T5X defaults: the formulas of `apply_param_gradient` written out."""
  p = np.asarray(param, np.float64)
  v = v_row = v_col = None
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    rho = 1.0 - (t + 1.0) ** -0.8
    g2 = g * g + 1e-30
    if factored:  # rows = dim 0 (the smaller or equal dim) in these tests
      v_row = g2.mean(1) if t == 0 else rho * v_row + (1 - rho) * g2.mean(1)
      v_col = g2.mean(0) if t == 0 else rho * v_col + (1 - rho) * g2.mean(0)
      v_hat = np.outer(v_row, v_col) / v_row.mean()
    else:
      v = g2 if t == 0 else rho * v + (1 - rho) * g2
      v_hat = v
    y = g / np.sqrt(v_hat)
    y /= max(1.0, np.sqrt(np.mean(y * y)))
    p = p - lr * max(np.sqrt(np.mean(p * p)), 1e-3) * y
  return p, (v_row, v_col) if factored else v


def _run(param, grads, lr, min_dim=adafactor.MIN_DIM_SIZE_TO_FACTOR):
  params = {'w': jnp.asarray(param, jnp.float32)}
  state = adafactor.init(params, min_dim_size_to_factor=min_dim)
  for g in grads:
    params, state = adafactor.update({'w': jnp.asarray(g, jnp.float32)}, state, params, lr,
                                     min_dim_size_to_factor=min_dim)
  return params['w'], state


def test_adafactor_vector_first_step_by_hand():
  # Step 0: rho = 0, v = g^2 + eps1, y = sign(g), RMS(y) = 1 (no clipping);
  # RMS([3, 4]) = sqrt(12.5) = 3.5355339, lr 0.1 -> the step is 0.35355339.
  new, state = _run([3.0, 4.0], [[0.5, -2.0]], 0.1)
  np.testing.assert_allclose(new, [3.0 - 0.35355339, 4.0 + 0.35355339], rtol=1e-6)
  np.testing.assert_allclose(state['param_states']['w']['v'], [0.25, 4.0], rtol=1e-6)
  assert int(state['step']) == 1
  for k in ('m', 'v_row', 'v_col'):
    assert state['param_states']['w'][k].shape == (1,)


def test_adafactor_vector_second_step_decay_and_clipping():
  # Step 1: rho = 1 - 2^-0.8 = 0.42565082. g1 small, g2 large: y = g2 / sqrt(v) has RMS > 1,
  # so update clipping divides by it.
  g1, g2 = [0.01, -0.02, 0.03], [1.0, 2.0, -3.0]
  rho = 1.0 - 2.0 ** -0.8
  new, state = _run([0.0, 0.0, 0.0], [g1, g2], 1.0)   # zero params: scale = eps2 = 1e-3
  ref, _ = _adafactor_reference([0.0, 0.0, 0.0], [g1, g2], 1.0, factored=False)
  v = rho * np.square(g1) + (1 - rho) * np.square(g2)
  np.testing.assert_allclose(state['param_states']['w']['v'], v, rtol=1e-6)
  y = np.asarray(g2) / np.sqrt(v)
  assert np.sqrt(np.mean(y * y)) > 1.0  # so this step is clipped
  np.testing.assert_allclose(new, ref, rtol=1e-5)
  # Step 0 moved the zero params to -1e-3 sign(g1) (RMS 1e-3); step 1 is clipped to RMS 1e-3.
  p1 = -1e-3 * np.sign(g1)
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(new) - p1))), 1e-3, rtol=1e-4)


def test_adafactor_factored_rank_one_gradient_by_hand():
  # A rank-one gradient a b^T is factored exactly: y = sign(g) on the first step.
  a, b = np.array([1.0, -2.0, 0.5]), np.array([0.3, 1.0, -4.0, 2.0, 0.1])
  p = np.arange(15, dtype=np.float64).reshape(3, 5) / 10.0
  new, state = _run(p, [np.outer(a, b)], 0.01, min_dim=3)
  s = state['param_states']['w']
  assert s['v_row'].shape == (3,) and s['v_col'].shape == (5,) and s['v'].shape == (1,)
  np.testing.assert_allclose(s['v_row'], a * a * np.mean(b * b), rtol=1e-6)
  np.testing.assert_allclose(s['v_col'], b * b * np.mean(a * a), rtol=1e-6)
  expected = p - 0.01 * np.sqrt(np.mean(p * p)) * np.sign(np.outer(a, b))
  np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_adafactor_factored_three_steps_vs_reference():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(4, 6))
  grads = [rng.normal(size=(4, 6)) * s for s in (1.0, 0.1, 3.0)]
  new, state = _run(p, grads, 0.05, min_dim=4)
  ref, (v_row, v_col) = _adafactor_reference(p, grads, 0.05, factored=True)
  np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(state['param_states']['w']['v_row'], v_row, rtol=1e-5)
  np.testing.assert_allclose(state['param_states']['w']['v_col'], v_col, rtol=1e-5)
  assert int(state['step']) == 3
  # min_dim 5 > second-largest dim 4: not factored, full v.
  _, state = _run(p, grads[:1], 0.05, min_dim=5)
  assert state['param_states']['w']['v'].shape == (4, 6)


@pytest.mark.parametrize('shape,v_row,v_col', [
    ((128, 128), (128,), (128,)),          # attention kernels
    ((128, 256), (128,), (256,)),          # wi_0 / wi_1
    ((256, 128), (128,), (256,)),          # wo: v_row indexed by dim 1
    ((32128, 128), (128,), (32128,)),      # token embedding
    ((128, 127), (1,), (1,)),              # second-largest dim < 128: full v
])
def test_adafactor_state_shapes_are_t5x(shape, v_row, v_col):
  state = adafactor.init({'w': jnp.zeros(shape)})['param_states']['w']
  assert state['v_row'].shape == v_row and state['v_col'].shape == v_col
  assert state['v'].shape == (shape if v_row == (1,) else (1,))
  assert state['m'].shape == (1,)


def test_adafactor_square_matrix_rows_are_dim0():
  # (128, 128): v_row is the mean over dim 1, indexed by dim 0 (T5X's argsort keeps order).
  g = np.zeros((128, 128))
  g[3, :] = 1.0
  _, state = _run(np.ones((128, 128)), [g], 0.1)
  v_row = np.asarray(state['param_states']['w']['v_row'])
  assert v_row[3] == pytest.approx(1.0) and v_row[4] == pytest.approx(1e-30)


# ------------------------------------------------------------------------------ T5X's own state

def test_adafactor_state_layout_equals_t5x_mini_checkpoint():
  """Our Adafactor state for the T5X-trained mini T5.1.1 has exactly T5X's leaves and shapes,
  and T5X's step after its 3 updates is 3, as ours after 3 updates."""
  load_ckpt = mini_checkpoint()
  flat = load_ckpt.flatten(load_ckpt.read_index(MINI_CKPT))
  params = {name[len('target/'):]: jnp.zeros(load_ckpt.leaf_shape(leaf))
            for name, leaf in flat.items() if name.startswith('target/')}
  ours = load_ckpt.flatten(adafactor.init(load_ckpt.unflatten(params)))
  theirs = {name[len('state/'):]: load_ckpt.leaf_shape(leaf)
            for name, leaf in flat.items() if name.startswith('state/')}
  assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v) for k, v in theirs.items()}
  assert ours['param_states/encoder/layers_0/mlp/wo/kernel/v_row'].shape == (128,)
  assert ours['param_states/token_embedder/embedding/v_col'].shape == (32128,)
  state = load_ckpt.read_t5x(MINI_CKPT, ['state/step'])
  assert int(state['state']['step']) == 3
  _, after3 = _run(np.ones(4), [np.ones(4)] * 3, 0.1)
  assert int(after3['step']) == 3


def test_adafactor_continues_t5x_state_at_its_step():
  """The 4th update of a loaded T5X state decays with rho = 1 - 4^-0.8 (T5X's step 3)."""
  load_ckpt = mini_checkpoint()
  names = ['target/encoder/layers_0/mlp/wo/kernel', 'target/encoder/encoder_norm/scale',
           'state/param_states/encoder/layers_0/mlp/wo/kernel',
           'state/param_states/encoder/encoder_norm/scale', 'state/step']
  tree = load_ckpt.read_t5x(MINI_CKPT, names)
  params = {'wo': tree['target']['encoder']['layers_0']['mlp']['wo']['kernel'],
            'scale': tree['target']['encoder']['encoder_norm']['scale']}
  states = tree['state']['param_states']['encoder']
  opt_state = {'step': jnp.asarray(tree['state']['step']),
               'param_states': {'wo': states['layers_0']['mlp']['wo']['kernel'],
                                'scale': states['encoder_norm']['scale']}}
  # Embedding rows never seen in T5X's batches keep v_col = eps1 (their gradient is 0).
  v_col = load_ckpt.read_t5x(
      MINI_CKPT, ['state/param_states/token_embedder/embedding/v_col'])
  v_col = v_col['state']['param_states']['token_embedder']['embedding']['v_col']
  assert np.sum(np.isclose(v_col, 1e-30, rtol=1e-3)) == 32128 - 364
  rng = np.random.default_rng(0)
  grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  _, new = adafactor.update(grads, opt_state, params, 1e-3)
  rho = 1.0 - 4.0 ** -0.8
  g2 = {k: np.float64(g) ** 2 + 1e-30 for k, g in grads.items()}
  old = opt_state['param_states']
  np.testing.assert_allclose(new['param_states']['scale']['v'],
                             rho * old['scale']['v'] + (1 - rho) * g2['scale'], rtol=1e-5)
  # wo [F, D] = (256, 128): v_row [D] averages g^2 over F (dim 0), v_col [F] over D.
  np.testing.assert_allclose(new['param_states']['wo']['v_row'],
                             rho * old['wo']['v_row'] + (1 - rho) * g2['wo'].mean(0), rtol=1e-5)
  np.testing.assert_allclose(new['param_states']['wo']['v_col'],
                             rho * old['wo']['v_col'] + (1 - rho) * g2['wo'].mean(1), rtol=1e-5)
  assert int(new['step']) == 4
