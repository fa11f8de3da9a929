"""Plan the paper's pod runs without a pod: compile `loop.make_train_step` for simulated
meshes.

The paper fine-tuned up to T5.1.1-xxl on 128 TPU v3 chips (16 GiB each), 2048 rows of 512
tokens per batch. Here XLA:CPU compiles the real sharded train step for a mesh of simulated CPU
devices, from abstract inputs (`jax.ShapeDtypeStruct`s with shardings: nothing is allocated),
and its analyses give per device: parameter, optimizer-state and batch bytes, the temporaries
(activations, gradients), FLOPs and the bytes that collectives move, and the compile time.

  python -m experiments.plan_pod --sizes=small --meshes=32x4,8x1   # a few minutes
  python -m experiments.plan_pod --memory_only                     # what fits where
  python -m experiments.plan_pod                                   # small..xxl: hours, 2 cores

Memory is XLA's for the step with `scan_layers` (rematerialization frees memory on XLA:CPU
only inside a scan, see `plan`); FLOPs and collectives for the unrolled step.

Prints one table row per (size, model, mesh) as it goes, then the EncT5 / T5 ratios per size,
and with --json the rows. The figures are XLA:CPU's for simulated devices, not measurements on
TPUs: XLA:TPU fuses and schedules differently, so read them as estimates.
"""
import os
import sys

if __name__ == '__main__':  # the simulated devices, before jax is imported
  _count = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--devices=')), '128')
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={_count}'
  os.environ['JAX_PLATFORMS'] = 'cpu'
import json
import re
import time

from absl import app, flags
import numpy as np
import jax

import adafactor
import enct5
import evaluation
import loop
import partitioning

flags.DEFINE_integer('devices', 128, 'Simulated CPU devices.')
flags.DEFINE_list('sizes', ['small', 'base', 'large', 'xl', 'xxl'], 'T5.1.1 sizes.')
flags.DEFINE_list('models', ['enct5', 't5', '1dect5'], 'Models.')
flags.DEFINE_list('meshes', ['32x4', '16x8', '8x16', '8x1'], 'DATAxMODEL; a mesh of fewer '
                  'devices takes the first ones.')
flags.DEFINE_integer('batch_size', 2048, 'Rows (paper: 2048).')
flags.DEFINE_integer('input_length', 512, 'Tokens per row.')
flags.DEFINE_enum('dtype', 'bfloat16', ['float32', 'bfloat16'], 'Activations (T5X on TPUs: '
                  'bfloat16).')
flags.DEFINE_enum('remat_policy', 'full', ['none', 'minimal', 'full'], 'Rematerialization.')
flags.DEFINE_bool('memory_only', False, 'Compile only the scanned step (memory, fit): no FLOPs '
                  'or collectives, several times faster for the large sizes.')
flags.DEFINE_string('json', None, 'Also write the rows here.')
FLAGS = flags.FLAGS

GIB = 2**30
# Lengths of the paper's batches (§4.1): 512 input tokens; 62 EncT5 slots; T5's targets as T5X
# pre-training's 114 tokens (labels as text, packed).
TARGET_LENGTH = {'enct5': 62, 't5': 114, '1dect5': 114}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_COLLECTIVE = re.compile(r'= (\([^=]*?\)|[^\s(]+) (' + '|'.join(COLLECTIVES) + r')(-start)?\(')
_ARRAY = re.compile(r'\b(pred|[suf]\d+|bf16)\[([\d,]*)\]')


def abstract(shapes, shardings):
  """The ShapeDtypeStructs `shapes` laid out by `shardings`: arrays as the compiler sees
  them, with nothing allocated."""
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      shapes, shardings)


def bytes_per_device(tree):
  """Bytes of one device's shard of every array in a tree of sharded ShapeDtypeStructs."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def collective_bytes(hlo_text):
  """{collective: bytes of its results}, summed over the collectives in the text of the
  compiled per-device program (one inside a loop counts once)."""
  found = dict.fromkeys(COLLECTIVES, 0)
  for result, op, _ in _COLLECTIVE.findall(hlo_text):
    for dtype, dims in _ARRAY.findall(result):
      itemsize = 1 if dtype == 'pred' else (2 if dtype == 'bf16' else int(dtype[1:]) // 8)
      found[op] += itemsize * int(np.prod([int(d) for d in dims.split(',') if d]))
  return found


def compile_step(cfg, mesh, model, batch_size, input_length):
  """`model`'s train step for config `cfg`, lowered from abstract inputs laid out on `mesh` and
  compiled. Returns (compiled, compile seconds, the abstract params, opt_state and batch)."""
  shardings = partitioning.Shardings(enct5.param_specs(cfg, model), mesh)
  step = loop.make_train_step(cfg, shardings, evaluation.MODELS[model].loss, 1e-3, seed=0)
  shapes = jax.tree.map(lambda spec: jax.ShapeDtypeStruct(spec.shape, np.float32),
                        enct5.param_specs(cfg, model),
                        is_leaf=lambda x: isinstance(x, enct5.ParamSpec))
  params = abstract(shapes, shardings.params)
  opt_state = abstract(jax.eval_shape(adafactor.init, params), shardings.opt_state)
  lengths = {key: input_length if key.startswith('inputs') else TARGET_LENGTH[model]
             for key in evaluation.MODELS[model].train_keys}
  batch = {key: jax.ShapeDtypeStruct((batch_size, length), np.int32, sharding=shardings.batch)
           for key, length in lengths.items()}
  start = time.time()
  compiled = step.lower(params, opt_state, batch).compile()
  return compiled, time.time() - start, params, opt_state, batch


def plan(size, model, mesh, batch_size, input_length, *, count_flops=True, **options):
  """Compile `model`'s train step (T5.1.1 `size`, config `options`) on `mesh` for a
  [batch_size, input_length] batch: with `scan_layers` for memory, unrolled for FLOPs.

  Memory comes from the step with `scan_layers`: unrolled, XLA:CPU recomputes what
  `jax.checkpoint` asks but drops its optimization barriers and keeps the activations alive
  anyway (measured, EncT5-small, 8 rows of 512 a device, float32: 'full' adds 26% FLOPs,
  temporaries 2.28 GiB against 2.40 with 'none'); in a scan the backward pass can only
  recompute, as on TPUs (bfloat16: 'full' 0.62 GiB against 3.05). FLOPs and collectives come
  from the unrolled step (`count_flops`), since XLA counts a scan's body once.

  Returns per-device figures: the shards of params, opt_state and batch (bytes); XLA's memory
  analysis (arguments, outputs, aliased, temporaries: activations and gradients; `peak` =
  arguments + temporaries + outputs not aliased to a donated argument); FLOPs of the step on
  all devices; the bytes of collective results; and the compile times. `params_total`: all
  parameters' bytes.
  """
  cfg = enct5.get_config(size, **dict(options, scan_layers=True))
  compiled, compile_s, params, opt_state, batch = compile_step(cfg, mesh, model, batch_size,
                                                               input_length)
  memory = compiled.memory_analysis()
  row = {'size': size, 'model': model, 'batch': f'{batch_size}x{input_length}',
         'mesh': f"{mesh.shape['data']}x{mesh.shape['model']}",
         'params_total': sum(x.size * 4 for x in jax.tree.leaves(params)),
         'params': bytes_per_device(params), 'opt_state': bytes_per_device(opt_state),
         'batch_bytes': bytes_per_device(batch),
         'arguments': memory.argument_size_in_bytes, 'outputs': memory.output_size_in_bytes,
         'aliased': memory.alias_size_in_bytes, 'temp': memory.temp_size_in_bytes,
         'peak': (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                  + memory.output_size_in_bytes - memory.alias_size_in_bytes),
         'flops': None, 'collectives': None, 'compile_s': compile_s}
  if count_flops:
    cfg = enct5.get_config(size, **dict(options, scan_layers=False))
    compiled, compile_s, *_ = compile_step(cfg, mesh, model, batch_size, input_length)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    # XLA's count is for one device's program.
    row.update(flops=float(cost.get('flops', 0.0)) * mesh.size,
               collectives=collective_bytes(compiled.as_text()),
               compile_s=row['compile_s'] + compile_s)
  return row


def print_row(row):
  """One line of the table; GiB per device."""
  gib = lambda key: f'{row[key] / GIB:8.3f}'
  fits = ' '.join('yes' if row['peak'] <= limit * GIB else 'no ' for limit in (16, 32))
  costs = (f"{row['flops'] / 1e12:10.2f} {sum(row['collectives'].values()) / GIB:9.2f}"
           if row['flops'] is not None else f"{'-':>10} {'-':>9}")
  print(f"{row['size']:6} {row['model']:6} {row['mesh']:6} {gib('params')} {gib('opt_state')} "
        f"{gib('temp')} {gib('peak')}   {fits}  {costs} {row['compile_s']:8.1f}", flush=True)


def print_ratios(rows):
  """EncT5 / T5 per size and mesh: memory per device and FLOPs per step."""
  by_key = {(r['size'], r['mesh'], r['model']): r for r in rows}
  print('\nEncT5 / T5, per device          peak memory   FLOPs per step')
  for (size, mesh, model), row in by_key.items():
    t5_row = by_key.get((size, mesh, 't5'))
    if model == 'enct5' and t5_row:
      flops = (f'{row["flops"] / t5_row["flops"]:16.2f}' if row['flops'] is not None
               else f'{"-":>16}')
      print(f'{size:6} {mesh:6}                   {row["peak"] / t5_row["peak"]:11.2f} {flops}')


def main(argv):
  del argv
  options = dict(dtype=FLAGS.dtype, remat_policy=FLAGS.remat_policy, num_classes=3)
  print(f'{FLAGS.batch_size}x{FLAGS.input_length} tokens, activations {FLAGS.dtype}, remat '
        f'{FLAGS.remat_policy}; per device (GiB, from the step with scan_layers): params, '
        'optimizer state, temporaries (activations, gradients), peak; fits 16/32 GiB; TFLOPs '
        'per step (all devices) and collective GiB per device (from the unrolled step); '
        'compile seconds')
  print(f"{'size':6} {'model':6} {'mesh':6} {'params':>8} {'opt':>8} {'temp':>8} {'peak':>8}   "
        f"16  32   {'TFLOPs':>10} {'collect.':>9} {'compile':>8}")
  rows = []
  for size in FLAGS.sizes:
    for model in FLAGS.models:
      for shape in FLAGS.meshes:
        data, model_axis = (int(n) for n in shape.split('x'))
        mesh = partitioning.make_mesh(shape, jax.devices()[:data * model_axis])
        row = plan(size, model, mesh, FLAGS.batch_size, FLAGS.input_length,
                   count_flops=not FLAGS.memory_only, **options)
        print_row(row)
        rows.append(row)
  print_ratios(rows)
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
