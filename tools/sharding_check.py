"""Train steps on meshes 1x1, 4x2 and 8x1 of 8 CPU devices agree (run by test_train.py):
`python -m tools.sharding_check` from the repository's root.

Prints one JSON line: per mesh, the losses and the largest parameter difference to 1x1.
"""
import os
if __name__ == '__main__':  # before jax is imported
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  os.environ['JAX_PLATFORMS'] = 'cpu'
import json

import numpy as np
import jax

import adafactor
import enct5
import evaluation
import loop
import partitioning


def synthetic_batch(rng, cfg, rows=8, length=32, slots=4):
  """Packed rows of 1..slots examples with random tokens and labels."""
  batch = {k: np.zeros((rows, length), np.int32) for k in ('inputs', 'inputs_segment_ids')}
  batch['targets'] = np.zeros((rows, slots), np.int32)
  for r in range(rows):
    start = 0
    for seg in range(1, rng.integers(1, slots + 1) + 1):
      n = int(rng.integers(2, length // slots + 1))
      batch['inputs'][r, start:start + n] = rng.integers(2, cfg.vocab_size, n)
      batch['inputs_segment_ids'][r, start:start + n] = seg
      batch['targets'][r, seg - 1] = rng.integers(1, cfg.num_classes + 1)
      start += n
  return batch


def run(cfg, mesh, params0, batches):
  shardings = partitioning.Shardings(enct5.param_specs(cfg), mesh)
  params = jax.device_put(params0, shardings.params)
  opt_state = jax.jit(adafactor.init, out_shardings=shardings.opt_state)(params)
  step = loop.make_train_step(cfg, shardings, evaluation.MODELS['enct5'].loss, 1e-3, seed=0)
  losses = []
  for batch in batches:
    batch = partitioning.global_batch(batch, shardings.batch)
    params, opt_state, metrics = step(params, opt_state, batch)
    losses.append(float(metrics['loss']))
  eval_step = evaluation.make_eval_step(cfg, shardings)
  logits = eval_step(params, partitioning.global_batch(batches[0], shardings.batch), 0)
  wo_state = opt_state['param_states']['encoder']['layers_0']['mlp']['wo']['kernel']
  specs = {'embedding': str(params['token_embedder']['embedding'].sharding.spec),
           'wo': str(params['encoder']['layers_0']['mlp']['wo']['kernel'].sharding.spec),
           'wo_v_col': str(wo_state['v_col'].sharding.spec),
           'rel_embedding': str(params['encoder']['relpos_bias']['rel_embedding'].sharding.spec)}
  return losses, jax.device_get(params), np.asarray(logits), jax.device_get(opt_state), specs


def main():
  assert jax.device_count() == 8, jax.devices()
  # vocab 256 and d_ff 256 divide by 2; 3 heads do not (replicated: the fallback path);
  # d_model 128 makes the embedding and FFN kernels factored in Adafactor.
  cfg = enct5.get_config('tiny', num_classes=3, vocab_size=256, d_model=128, d_ff=256,
                         num_heads=3, head_dim=16, dropout_rate=0.1)
  params0 = jax.device_get(enct5.init_params(jax.random.PRNGKey(0), cfg))
  rng = np.random.default_rng(0)
  batches = [synthetic_batch(rng, cfg) for _ in range(2)]
  ref = run(cfg, partitioning.make_mesh('1x1', jax.devices()[:1]), params0, batches)
  result = {}
  for shape in ('4x2', '8x1'):
    out = run(cfg, partitioning.make_mesh(shape), params0, batches)
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    # Second moments scale with the square of the summed loss: compared relative to each
    # array's largest value.
    relative_diff = lambda a, b: max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(y)), 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    result[shape] = {'losses': out[0], 'ref_losses': ref[0], 'param_diff': diff(out[1], ref[1]),
                     'logits_diff': float(np.max(np.abs(out[2] - ref[2]))),
                     'opt_diff': relative_diff(out[3], ref[3]), 'specs': out[4]}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
