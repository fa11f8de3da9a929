"""Tests of experiments/plan_pod.py: the sharded train step compiled for simulated devices,
unallocated."""
import json
import os
import subprocess
import sys

import testutil


def plan_tiny(tmp_path, *flags):
  """The tool's one row for EncT5-tiny on a 2x4 mesh of 8 simulated CPU devices."""
  out = tmp_path / 'plan.json'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.plan_pod', '--devices=8',
       '--sizes=tiny', '--models=enct5', '--meshes=2x4', '--batch_size=8', '--input_length=128',
       f'--json={out}', *flags], capture_output=True, text=True, env=env, timeout=600,
      cwd=testutil.REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  [row] = json.loads(out.read_text())
  return row


def test_plan_of_a_tiny_model_on_eight_devices(tmp_path):
  """Through the tool's own code: XLA's figures are positive, the parameters on one device
  are a quarter of all of them (the replicated norms and biases aside), XLA's argument bytes
  are our shards' bytes, and full rematerialization needs fewer temporaries than none (it
  would not if the memory came from the unrolled step: XLA:CPU undoes that remat)."""
  row = plan_tiny(tmp_path, '--remat_policy=full')
  assert row['mesh'] == '2x4' and row['batch'] == '8x128'
  for key in ('params', 'opt_state', 'batch_bytes', 'arguments', 'temp', 'peak', 'flops',
              'compile_s'):
    assert row[key] > 0, key
  quarter = row['params_total'] / 4  # the model axis splits vocab, heads and FFN by 4
  assert quarter <= row['params'] <= 1.01 * quarter, row
  ours = row['params'] + row['opt_state'] + row['batch_bytes']
  assert abs(row['arguments'] - ours) <= 0.001 * ours, row  # jit drops unused (1,) slots
  assert row['peak'] >= row['arguments'] and row['collectives']['all-reduce'] > 0, row
  kept = plan_tiny(tmp_path, '--remat_policy=none', '--memory_only')
  assert kept['flops'] is None and kept['temp'] > 1.5 * row['temp'], (kept['temp'], row['temp'])
