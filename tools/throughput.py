"""Train-step throughput of EncT5 on this machine, and its share of the measured matmul peak.

  python tools/throughput.py --size=small --batch_size=8 --length=512

Times the jitted train step of train.py (forward, backward, Adafactor) on full packed rows
(8 examples of length/8 tokens each, dropout on), after one warm-up step (best and median of
--steps); FLOPs from XLA's cost analysis of the compiled step. The peak is the best float32
[2048, 2048] @ [2048, 2048] rate, measured before and after the steps.
Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import numpy as np
import jax
import jax.numpy as jnp

import enct5
import train


def matmul_peak(n=2048, repeats=10):
  """Best float32 FLOP/s of one n x n matmul."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def packed_batch(cfg, rows, length, per_row=8, slots=62):
  rng = np.random.default_rng(0)
  size = length // per_row
  segment = np.repeat(np.arange(1, per_row + 1), size)
  positions = np.tile(np.arange(size), per_row)
  return {'inputs': rng.integers(2, cfg.vocab_size, (rows, length)).astype(np.int32),
          'inputs_segment_ids': np.tile(segment, (rows, 1)).astype(np.int32),
          'inputs_positions': np.tile(positions, (rows, 1)).astype(np.int32),
          'targets': np.pad(rng.integers(1, 3, (rows, per_row)),
                            ((0, 0), (0, slots - per_row))).astype(np.int32)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', default='small')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  cfg = enct5.get_config(args.size, num_classes=2)
  shardings = train.Shardings(cfg, train.make_mesh('1x1', jax.devices()[:1]))
  params, opt_state = train.init_train_state(cfg, shardings, jax.random.PRNGKey(0))
  batch = train.global_batch(packed_batch(cfg, args.batch_size, args.length), shardings.batch)
  step = train.make_train_step(cfg, shardings, 1e-3, seed=0)
  flops = step.lower(params, opt_state, batch).compile().cost_analysis()['flops']
  peak_before = matmul_peak()
  params, opt_state, metrics = step(params, opt_state, batch)  # warm-up (compiles)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = min(times)
  peak = max(peak_before, matmul_peak())  # the machine is shared: the best of both
  tokens = args.batch_size * args.length
  print(json.dumps({'size': args.size, 'batch': f'{args.batch_size}x{args.length}',
                    'step_s': [round(t, 3) for t in times], 'tokens_per_s': tokens / seconds,
                    'median_tokens_per_s': tokens / float(np.median(times)),
                    'step_gflop': flops / 1e9, 'achieved_gflops': flops / seconds / 1e9,
                    'matmul_peak_gflops': peak / 1e9, 'share_of_peak': flops / seconds / peak,
                    'devices': str(jax.devices()), 'cpus': os.cpu_count()}))


if __name__ == '__main__':
  main()
