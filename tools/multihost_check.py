"""Two train steps on a synthetic global batch, in one of several processes (run by
test_train.py): `python -m tools.multihost_check --num_processes=2 --process_id=i
--coordinator_address=127.0.0.1:PORT --mesh=2x2` from the repository's root, XLA_FLAGS giving
each process its CPU devices.

Every process builds the same global batch and feeds only its rows. Prints one JSON line
(process 0 only, or the single process): losses and a checksum of the gathered parameters.
"""
import json

from absl import app
import numpy as np
import jax
from jax.experimental import multihost_utils

import cli  # the device flags: --coordinator_address, --num_processes, --process_id, --mesh
import enct5
import evaluation
import hosts
import loop
import partitioning
from tools.sharding_check import synthetic_batch

FLAGS = cli.FLAGS


def main(argv):
  del argv
  hosts.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  cfg = enct5.get_config('tiny', num_classes=3, vocab_size=256, dropout_rate=0.1)
  mesh = partitioning.make_mesh(FLAGS.mesh)
  shardings = partitioning.Shardings(enct5.param_specs(cfg), mesh)
  params, opt_state = loop.init_train_state(cfg, 'enct5', shardings, jax.random.PRNGKey(0))
  step = loop.make_train_step(cfg, shardings, evaluation.MODELS['enct5'].loss, 1e-3, seed=0)
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
  app.run(main)
