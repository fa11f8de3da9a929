"""Tests for train.py: Adafactor against hand-worked updates and T5X's state, sharding, resume."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import train

SHARED = os.environ.get('ENCT5_SHARED', os.path.join(os.path.dirname(__file__), '..', 'shared'))
MINI_CKPT = os.path.join(SHARED, 'fixtures', 't5x_mini_t5_1_1', 'checkpoint_3')


# ------------------------------------------------------------------------------------ Adafactor

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


def _run(param, grads, lr, min_dim=train.MIN_DIM_SIZE_TO_FACTOR):
  params = {'w': jnp.asarray(param, jnp.float32)}
  state = train.adafactor_init(params, min_dim_size_to_factor=min_dim)
  for g in grads:
    params, state = train.adafactor_update({'w': jnp.asarray(g, jnp.float32)}, state, params, lr,
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
  assert abs(rho - 0.42565082) < 1e-7
  new, state = _run([0.0, 0.0, 0.0], [g1, g2], 1.0)   # zero params: scale = eps2 = 1e-3
  ref, ref_v = _adafactor_reference([0.0, 0.0, 0.0], [g1, g2], 1.0, factored=False)
  v = rho * np.square(g1) + (1 - rho) * np.square(g2)
  np.testing.assert_allclose(state['param_states']['w']['v'], v, rtol=1e-6)
  np.testing.assert_allclose(ref_v, v, rtol=1e-12)
  y = np.asarray(g2) / np.sqrt(v)
  assert np.sqrt(np.mean(y * y)) > 1.0
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
  state = train.adafactor_init({'w': jnp.zeros(shape)})['param_states']['w']
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


# ------------------------------------------------------------------------------------- Sharding

def _run_tool(name, *args, timeout=120):
  """Runs tools/<name> in its own process (XLA_FLAGS must be set before jax is imported)."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  script = os.path.join(os.path.dirname(__file__), 'tools', name)
  out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_train_step_equals_single_device():
  result = _run_tool('sharding_check.py')
  for mesh in ('4x2', '8x1'):
    r = result[mesh]
    np.testing.assert_allclose(r['losses'], r['ref_losses'], rtol=1e-5)
    assert r['param_diff'] < 1e-5 and r['opt_diff'] < 1e-5 and r['logits_diff'] < 1e-5, r
  specs = result['4x2']['specs']
  assert specs['embedding'] == "P('model', None)"     # vocab on 'model'
  assert specs['wo'] == "P('model', None)"            # mlp on 'model'
  assert specs['wo_v_col'] == "P('model',)"  # v_col of wo [F, D] is [F]
  assert specs['rel_embedding'] == 'P(None, None)'    # 3 heads: replicated
  assert result['8x1']['specs']['embedding'] == "P('model', None)"


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_reach_the_same_loss_as_one():
  """Two processes on 127.0.0.1 (2 CPU devices each, mesh 2x2, gloo collectives), each feeding
  its half of the global batch, match one single-device process on the same global batch."""
  single = _run_tool('multihost_check.py')
  script = os.path.join(os.path.dirname(__file__), 'tools', 'multihost_check.py')
  address = f'127.0.0.1:{_free_port()}'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen([sys.executable, script, '--num_processes=2', f'--process_id={i}',
                             f'--coordinator_address={address}', '--local_devices=2',
                             '--mesh=2x2'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  multi = json.loads(outs[0][0].strip().splitlines()[-1])
  assert multi['processes'] == 2 and multi['devices'] == 4, multi
  np.testing.assert_allclose(multi['losses'], single['losses'], rtol=1e-5)
  np.testing.assert_allclose(multi['checksum'], single['checksum'], rtol=1e-6)
