"""Two train steps on a synthetic global batch, in one of several processes (run by
test_train.py): `--num_processes 2 --process_id i --coordinator_address 127.0.0.1:PORT`.

Every process builds the same global batch and feeds only its rows. Prints one JSON line
(process 0 only, or the single process): losses and a checksum of the gathered parameters.
"""
import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument('--coordinator_address', default=None)
parser.add_argument('--num_processes', type=int, default=1)
parser.add_argument('--process_id', type=int, default=0)
parser.add_argument('--local_devices', type=int, default=1)
parser.add_argument('--mesh', default=None)
args = parser.parse_args()
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={args.local_devices}'
os.environ['JAX_PLATFORMS'] = 'cpu'
import json
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import numpy as np
import jax
from jax.experimental import multihost_utils

import enct5
import partitioning
import finetune
import loop
from sharding_check import synthetic_batch


def main():
  partitioning.initialize_distributed(args.coordinator_address, args.num_processes,
                                      args.process_id)
  cfg = enct5.get_config('tiny', num_classes=3, vocab_size=256, dropout_rate=0.1)
  mesh = partitioning.make_mesh(args.mesh)
  shardings = partitioning.Shardings(enct5.param_specs(cfg), mesh)
  params, opt_state = loop.init_train_state(cfg, 'enct5', shardings, jax.random.PRNGKey(0))
  step = loop.make_train_step(cfg, shardings, finetune.MODELS['enct5'].loss, 1e-3, seed=0)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(2):
    batch = partitioning.global_batch(synthetic_batch(rng, cfg), shardings.batch)
    params, opt_state, metrics = step(params, opt_state, batch)
    losses.append(float(metrics['loss']))
  gathered = multihost_utils.process_allgather(params, tiled=True)
  checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(gathered)))
  if jax.process_index() == 0:
    print(json.dumps({'losses': losses, 'checksum': checksum,
                      'processes': jax.process_count(), 'devices': jax.device_count(),
                      'mesh': dict(mesh.shape)}))


if __name__ == '__main__':
  main()
