"""Tests of partitioning.py: train steps sharded on meshes of 8 CPU devices equal the
single-device step, two processes (jax.distributed, each feeding its half of the global
batch) reach the loss of one, and a mesh that cannot work is named."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import partitioning
import testutil


def _run_tool(name, *args, timeout=120, devices=1):
  """Runs `python -m tools.<name>` in its own process with `devices` CPU devices (XLA_FLAGS
  must be set before jax is imported) -> its last line of output, as JSON."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-m', f'tools.{name}', *args], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=testutil.REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_train_step_equals_single_device():
  result = _run_tool('sharding_check')
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


def test_two_processes_reach_the_same_loss_as_one():
  """Two processes on 127.0.0.1 (2 CPU devices each, mesh 2x2, gloo collectives), each feeding
  its half of the global batch, match one single-device process on the same global batch."""
  single = _run_tool('multihost_check')
  address = f'127.0.0.1:{testutil.free_port()}'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  outs = testutil.run_processes(
      [[sys.executable, '-m', 'tools.multihost_check', '--num_processes=2',
        f'--process_id={i}', f'--coordinator_address={address}', '--mesh=2x2']
       for i in range(2)], env, timeout=120, cwd=testutil.REPO)
  multi = json.loads(outs[0].strip().splitlines()[-1])
  assert multi['processes'] == 2 and multi['devices'] == 4, multi
  np.testing.assert_allclose(multi['losses'], single['losses'], rtol=1e-5)
  np.testing.assert_allclose(multi['checksum'], single['checksum'], rtol=1e-6)


def test_bad_mesh_and_batch_size_are_named():
  devices = ['cpu:0', 'cpu:1']  # checked before any device is touched
  for mesh, message in [('4', "must look like '4x2'"), ('2x2', 'needs 4 devices')]:
    with pytest.raises(ValueError, match=message):
      partitioning.make_mesh(mesh, devices)
  with pytest.raises(ValueError, match=r"--batch_size=3 must be a multiple of the mesh's data "
                                       r'axis \(2\)'):
    partitioning.make_mesh('2x1', devices, batch_size=3)
