"""Measures the paper's efficiency claims on this machine, printing one table.

EncT5 (Liu et al. 2021) claims under half of T5's parameters (Figure 2) and training more than
1.3x faster (§4.3). Everything below is measured side by side in one run; each time is the
median of several rounds after warm-up, a round running each contender once in turn, so
background load hits all of them alike; the spread is min..max over the rounds. Other jobs on
the machine still move the numbers: the table ends with the load average.

  python bench.py --quick          # under 3 minutes on a 2-core CPU
  python bench.py                  # more rounds, bigger batches, all of SST-2 dev
  python bench.py --compare_hf     # also against Hugging Face's PyTorch T5 (train, predict)

Sections: params, train (EncT5 vs T5 vs 1decT5 step, tokens/s, FLOP/s vs matmul peak, memory),
infer (packed vs unpacked), pack (packing an SST-2-sized train set), ckpt (load time and bytes),
hf (--compare_hf: the train step at 8 x 128 and 4 x 512 tokens against EncT5 built from HF's
modules, float32 and bfloat16, tokens/s and the share of the matmul peak; prediction on SST-2
and RTE dev lengths in 512-token rows against that and HF's T5ForSequenceClassification), user
(the path users take: a run made by train.py, SST-2 and RTE dev rows labelled by
`predict.Labeler` and `--mode=predict`'s `label_file`, against the model alone and HF's EncT5,
float32 and bfloat16).

  python bench.py --quick --sections= --compare_hf   # the 512-token table alone, ~4 minutes
  python bench.py --sections=user                    # the user's path against HF's
"""
import collections
import dataclasses
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import adafactor
import enct5
import evaluation
import hf_ckpt
import load_ckpt
import loop
import packing
import partitioning
import predict
import preprocessing
import readers
import save_ckpt
import tasks
import vocabularies

REPO = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ('params', 'train', 'infer', 'pack', 'ckpt', 'hf', 'user')
LEARNING_RATE = 1e-3  # the paper's constant rate (§4.1)
LABEL_TOKENS = 2  # T5 writes a GLUE label as text: ~2 SentencePiece tokens, then EOS

flags.DEFINE_bool('quick', False, 'Fewer rounds, smaller batches.')
flags.DEFINE_bool('compare_hf', False, 'Also time EncT5 built from Hugging Face PyTorch T5 '
                  'modules (needs torch and transformers, test-only).')
flags.DEFINE_list('sections', ['params', 'train', 'infer', 'pack', 'ckpt'], f'Of {SECTIONS} '
                  '(hf is added by --compare_hf).')
flags.DEFINE_integer('rounds', None, 'Timed rounds after warm-up (default 3 with --quick, 7).')
flags.DEFINE_integer('length', 128, 'L, tokens per packed row.')
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------
# Timing and the table.
# ---------------------------------------------------------------------------------------------

def round_robin(fns, rounds, warmup=1):
  """({name: [wall seconds]}, {name: [CPU seconds of this process]}), one entry per round;
  each round runs every fn once, in turn, after `warmup` rounds."""
  for _ in range(warmup):
    for fn in fns.values():
      jax.block_until_ready(fn())
  wall, cpu = {name: [] for name in fns}, {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return wall, cpu


def med(xs):
  return statistics.median(xs)


def spread(xs, fmt='{:.3f}'):
  return f'{fmt.format(min(xs))}..{fmt.format(max(xs))} (n={len(xs)})'


class Table:
  """Rows of (section, item, value, spread, note), printed once at the end."""

  def __init__(self):
    self.rows = []

  def add(self, section, item, value, spread_='', note=''):
    self.rows.append((section, item, value, spread_, note))
    print(f'  [{section}] {item}: {value} {spread_} {note}', flush=True)

  def print(self):
    header = ('section', 'item', 'value', 'spread (min..max)', 'note')
    widths = [max(len(str(r[i])) for r in self.rows + [header]) for i in range(4)]
    line = lambda r: ' | '.join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + ' | ' + r[4]
    print('\n' + line(header))
    print('-+-'.join('-' * w for w in widths) + '-+-' + '-' * 20)
    for row in self.rows:
      print(line(row))


# ---------------------------------------------------------------------------------------------
# Data: packed rows with SST-2's length distribution.
# ---------------------------------------------------------------------------------------------

# Task -> (GLUE directory, text columns, T5 prefix + EOS tokens, synthetic words per example:
# log-normal median and sigma, used only when the data is not there).
LENGTH_SOURCES = {'sst2': ('SST-2', (0,), 6, (7.5, 0.7)), 'rte': ('RTE', (1, 2), 9, (45.0, 0.5))}


def glue_lengths(task, split, num, rng, max_length=512):
  """Token counts of `num` examples of a GLUE task (sampled without replacement from
  `split`), at most `max_length` (T5 truncates at 512).

  NOTE: no T5 SentencePiece model ships with this repo, so lengths are estimated from word
  counts: ceil(1.2 * words) + the task's prefix and EOS ('sst2 sentence:', 'rte sentence1:
  ... sentence2:'). Without the data, a log-normal of the task's typical word count is used
  and the table says so.
  """
  directory, columns, extra, (median, sigma) = LENGTH_SOURCES[task]
  path = os.path.join(tasks.SHARED, 'glue', directory, f'{split}.tsv')
  if os.path.exists(path):
    with open(path) as f:
      rows = [line.split('\t') for line in f.read().splitlines()[1:]]
    words = np.array([sum(len(row[c].split()) for c in columns) for row in rows])
    source = f'{directory} {split} word counts'
  else:
    words = np.maximum(1, rng.lognormal(np.log(median), sigma, 10000).astype(int))
    source = f'synthetic ({directory} not found at {path})'
  words = rng.choice(words, size=min(num, len(words)), replace=False)
  return np.minimum(np.ceil(1.2 * words).astype(int) + extra, max_length), source


def random_examples(lengths, cfg, rng):
  """(tokens ending in EOS, class label 1..2) per length; ids are random (speed only)."""
  return [(np.append(rng.randint(2, cfg.vocab_size, n - 1), vocabularies.EOS_ID),
           int(rng.randint(1, 3))) for n in lengths]


def pack(examples, length, method='best_fit', block_length=None):
  """packing.pack_examples with the paper's 62 target slots (§4.1)."""
  packed = packing.pack_examples(examples, length, 62, method=method, block_length=block_length)
  return {k: packed[k] for k in ('inputs', 'inputs_segment_ids', 'targets')}


def take_rows(packed, rows):
  """Rows `rows` of a packed set, target slots trimmed to the most of them any row uses: the
  tightest T for EncT5, and for T5 (whose target length follows T)."""
  packed = {k: v[rows] for k, v in packed.items()}
  used = int((packed['targets'] > 0).sum(axis=1).max())
  return dict(packed, targets=packed['targets'][:, :used])


def t5_targets(rows):
  """T5X-style packed targets for the same rows: each example's label as LABEL_TOKENS tokens
  plus EOS, packed in slot order, so Ld = (LABEL_TOKENS + 1) * T: the tightest fixed length."""
  per = LABEL_TOKENS + 1
  batch, slots = rows['targets'].shape
  label = np.arange(LABEL_TOKENS) + 100  # any ids; only shapes matter for speed
  tokens = np.tile(np.append(label, vocabularies.EOS_ID), slots)[None].repeat(batch, 0)
  segments = np.repeat(np.arange(1, slots + 1), per)[None].repeat(batch, 0)
  real = np.repeat(rows['targets'] > 0, per, axis=1)
  targets = np.where(real, tokens, 0).astype(np.int32)
  inputs = np.where(np.arange(slots * per)[None] % per == 0, 0, np.roll(targets, 1, axis=1))
  return {'inputs': rows['inputs'], 'inputs_segment_ids': rows['inputs_segment_ids'],
          'decoder_input_tokens': inputs.astype(np.int32), 'decoder_target_tokens': targets,
          'decoder_segment_ids': np.where(real, segments, 0).astype(np.int32)}


# ---------------------------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------------------------

def bench_params(table):
  """Figure 2: EncT5 keeps under half of T5's parameters."""
  for size in ('small', 'base', 'large', 'xl', 'xxl'):
    cfg = enct5.get_config(size)
    counts = {m: enct5.count_params(cfg, m) for m in ('t5', '1dect5', 'enct5')}
    table.add('params', f'{size}: T5 / 1decT5 / EncT5',
              ' / '.join(f'{counts[m] / 1e6:,.1f}M' for m in ('t5', '1dect5', 'enct5')),
              note=f'EncT5 = {counts["enct5"] / counts["t5"]:.1%} of T5')


class Trainer:
  """A compiled train step and its (donated, hence replaced) state: call to take one step."""

  def __init__(self, cfg, model, batch):
    mesh = partitioning.make_mesh('1x1', jax.devices()[:1])
    shardings = partitioning.Shardings(enct5.param_specs(cfg, model), mesh)
    self.params, self.opt_state = loop.init_train_state(cfg, model, shardings,
                                                        jax.random.PRNGKey(0))
    self.batch = partitioning.global_batch(batch, shardings.batch)
    step = loop.make_train_step(cfg, shardings, evaluation.MODELS[model].loss, LEARNING_RATE,
                                seed=0)
    self.compiled = step.lower(self.params, self.opt_state, self.batch).compile()

  def __call__(self):
    self.params, self.opt_state, metrics = self.compiled(self.params, self.opt_state,
                                                         self.batch)
    return metrics['loss']

  def flops(self):
    analysis = self.compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get('flops', float('nan')))

  def memory(self):
    """(arguments, temporaries) in bytes from XLA's buffer assignment."""
    stats = self.compiled.memory_analysis()
    return stats.argument_size_in_bytes, stats.temp_size_in_bytes


def adafactor_fn(cfg):
  """One jitted Adafactor update of the EncT5 tree alone (gradients fixed): the optimizer's
  share of a train step. It streams every parameter through memory a few times."""
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  grads = jax.tree.map(lambda x: x * 1e-3, params)
  state = {'params': params, 'opt_state': adafactor.init(params)}
  update = jax.jit(lambda g, o, p: adafactor.update(g, o, p, LEARNING_RATE),
                   donate_argnums=(1, 2)).lower(grads, state['opt_state'], params).compile()

  def step():
    state['params'], state['opt_state'] = update(grads, state['opt_state'], state['params'])
    return state['params']
  return step


def stream_fn(num_floats):
  """x * a + b over `num_floats` float32: one read and one write of that many parameters."""
  x = jnp.ones((num_floats,), jnp.float32)
  axpy = jax.jit(lambda x: x * 1.0001 + 1e-7).lower(x).compile()
  return lambda: axpy(x)


def bench_train(table, args, rng):
  """EncT5 vs T5 vs 1decT5 train step on the same packed batch (§4.3: EncT5 >= 1.3x faster).

  Fair by construction: the same packed input rows (same examples, same tokens); each model's
  own loss (T5X's summed token cross-entropy + z-loss for T5 and 1decT5, the per-example mean
  for EncT5); dropout 0.1; the same jitted grad + adafactor.update with donated buffers.
  T5 gets its targets packed as T5X packs them, as tight as they can be: each example's label
  is LABEL_TOKENS tokens + EOS, so Ld = 3T for T examples a row; EncT5 has T slots.
  Each table row sits next to the measurement it reports; step memory: `memory_rows`.
  """
  lengths, source = glue_lengths('sst2', 'train', 4000, rng)
  peak_fn, peak_flops = loop.matmul_peak_fn(jnp.float32, args.matmul_size)
  table.add('train', 'setup', 'same rows', note='same packed inputs; T5 targets packed as '
            'T5X does, 2 label tokens + EOS per example (Ld = 3T); EncT5 T slots; dropout 0.1; '
            'jit(grad + adafactor.update), donated params and state')
  for size, num_rows in (('tiny', args.tiny_rows), ('small', args.small_rows)):
    cfg = enct5.get_config(size, dropout_rate=0.1)
    # NOTE: best-fit decreasing fills its first rows with the longest examples: a batch is
    # rows drawn at random from all of them, as a shuffled epoch would give.
    packed = pack(random_examples(lengths, cfg, rng), args.length)
    rows = take_rows(packed, np.sort(rng.choice(len(packed['inputs']), num_rows, replace=False)))
    slots = rows['targets'].shape[1]
    t5_batch = t5_targets(rows)
    num_examples = int((rows['targets'] > 0).sum())
    real_tokens = int((rows['inputs_segment_ids'] > 0).sum())
    compile_start = time.perf_counter()
    trainers = {'EncT5': Trainer(cfg, 'enct5', rows), 'T5': Trainer(cfg, 't5', t5_batch),
                '1decT5': Trainer(cfg, '1dect5', t5_batch)}
    compile_s = time.perf_counter() - compile_start
    num_params = enct5.count_params(cfg)
    times, cpu = round_robin({**trainers, 'matmul': peak_fn, 'adafactor': adafactor_fn(cfg),
                               'stream': stream_fn(num_params)}, args.rounds)
    shape = (f'{num_rows}x{args.length} packed, {num_examples} examples, '
              f'{real_tokens / (num_rows * args.length):.0%} real tokens; EncT5 T={slots} '
              f'slots, T5 Ld={t5_batch["decoder_target_tokens"].shape[1]} = '
              f'{LABEL_TOKENS + 1}T; lengths: {source}; compile {compile_s:.0f}s')
    for name in trainers:
      table.add('train', f'{size}: {name} step', f'{med(times[name]):.3f}s',
                spread(times[name]), f'{med(cpu[name]):.2f} CPU-s per step'
                + (f'; {shape}' if name == 'EncT5' else ''))
    for name in ('T5', '1decT5'):
      ratios = [a / b for a, b in zip(times[name], times['EncT5'])]
      table.add('train', f'{size}: {name} / EncT5 step time',
                f'{med(times[name]) / med(times["EncT5"]):.2f}x', spread(ratios, '{:.2f}'),
                'per-round ratios' + ('; paper: T5 / EncT5 >= 1.3x' if name == 'T5' else ''))
    step_s = med(times['EncT5'])
    table.add('train', f'{size}: EncT5 Adafactor update alone', f'{med(times["adafactor"]):.3f}s',
              spread(times['adafactor']),
              f'{med(times["adafactor"]) / med(times["EncT5"]):.0%} of the EncT5 step, '
              f'{num_params / 1e6:.1f}M params; memory-bound: reading and writing them once '
              f'(x*a+b) takes {med(times["stream"]):.3f}s')
    table.add('train', f'{size}: EncT5 tokens/s', f'{num_rows * args.length / step_s:,.0f}',
              note=f'{real_tokens / step_s:,.0f} real (non-padding) tokens/s')
    model_flops = enct5.train_step_flops(cfg, 'enct5', num_rows, args.length, slots)
    flops_rows(table, size, args, model_flops, trainers['EncT5'].flops(), times, peak_flops)
    memory_rows(table, size, trainers)
    del trainers


def flops_rows(table, size, args, model_flops, xla_flops, times, peak_flops):
  """EncT5's achieved FLOP/s (analytic model FLOPs / step time) and its share of the float32
  matmul peak timed in the same rounds."""
  achieved = [model_flops / t for t in times['EncT5']]
  peaks = [peak_flops / t for t in times['matmul']]
  table.add('train', f'{size}: EncT5 achieved FLOP/s', f'{med(achieved) / 1e9:.1f} GFLOP/s',
            spread([a / 1e9 for a in achieved], '{:.1f}'),
            f'analytic matmul FLOPs {model_flops / 1e9:.2f}G per step (XLA cost_analysis: '
            f'{xla_flops / 1e9:.2f}G)')
  table.add('train', f'{size}: share of matmul peak', f'{med(achieved) / med(peaks):.0%}',
            note=f'best rounds: {max(achieved) / max(peaks):.0%}; peak = {args.matmul_size}^2 '
                 f'float32 matmul in the same rounds: median {med(peaks) / 1e9:.0f}, best '
                 f'{max(peaks) / 1e9:.0f} GFLOP/s')


def memory_rows(table, size, trainers):
  """Each train step's memory (XLA's arguments + temporaries), against EncT5's."""
  memory = {name: trainer.memory() for name, trainer in trainers.items()}
  for name, (arguments, temp) in memory.items():
    total = arguments + temp
    table.add('train', f'{size}: {name} step memory', f'{total / 2**20:,.0f} MiB',
              note=f'arguments {arguments / 2**20:,.0f} + temporaries {temp / 2**20:,.0f} MiB '
                   f'(XLA memory_analysis); {total / sum(memory["EncT5"]):.2f}x EncT5')


def bench_infer(table, args, rng):
  """EncT5 inference on SST-2 dev-like lengths: packed rows vs one example per row."""
  cfg = enct5.get_config(args.infer_size)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  lengths, source = glue_lengths('sst2', 'dev', args.infer_examples, rng)
  examples = random_examples(lengths, cfg, rng)
  unpacked_length = int(math.ceil(max(lengths) / 8) * 8)  # the longest example, rounded up
  batches = {}
  for name, length, method, rows_per_batch in (
      ('packed', args.length, 'best_fit', args.infer_rows),
      ('unpacked', unpacked_length, 'unpacked', args.infer_rows * args.length // unpacked_length)):
    rows = take_rows(pack(examples, length, method), slice(None))
    num = len(rows['inputs'])
    pad = -num % rows_per_batch  # empty rows: every batch has the same shape
    rows = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in rows.items()}
    batches[name] = [jax.device_put({k: v[i:i + rows_per_batch] for k, v in rows.items()})
                     for i in range(0, num + pad, rows_per_batch)]
    table.add('infer', f'{name} batches', f'{len(batches[name])} x {rows_per_batch}x{length}',
              note=f'T={rows["targets"].shape[1]}; '
                   f'{(rows["inputs_segment_ids"] > 0).mean():.0%} real tokens')
  apply = jax.jit(lambda p, b: enct5.apply(p, cfg, b))

  def run(name):
    return lambda: [apply(params, b) for b in batches[name]]

  times, _ = round_robin({name: run(name) for name in batches}, args.rounds)
  for name in batches:
    rates = [len(examples) / t for t in times[name]]
    table.add('infer', f'{args.infer_size}: EncT5 {name} examples/s', f'{med(rates):,.0f}',
              spread(rates, '{:,.0f}'), f'{len(examples)} examples, lengths: {source}')
  ratios = [u / p for p, u in zip(times['packed'], times['unpacked'])]
  table.add('infer', 'packed speedup', f'{med(times["unpacked"]) / med(times["packed"]):.2f}x',
            spread(ratios, '{:.2f}'), f'unpacked rows padded to {unpacked_length} (longest)')


def bench_packing(table, args, rng):
  """Host-side packing (packing.pack_examples) of an SST-2-train-sized set into rows of L
  tokens and 62 slots: the cost paid once before training."""
  lengths, source = glue_lengths('sst2', 'train', 67_349, rng)
  examples = [(np.append(np.full(n - 1, 3), vocabularies.EOS_ID), 1) for n in lengths]
  fns = {method: (lambda method=method: packing.pack_examples(examples, args.length, 62,
                                                              method=method))
         for method in ('next_fit', 'best_fit')}
  times, _ = round_robin(fns, args.rounds, warmup=0)
  for method in fns:
    efficiency = packing.efficiency(fns[method]())
    table.add('pack', f'{method}: s per {len(examples):,} examples', f'{med(times[method]):.2f}',
              spread(times[method], '{:.2f}'), f'efficiency {efficiency:.3f}; lengths: {source}')


def tree_bytes(tree):
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def bench_checkpoint(table, args):
  """Load a T5.1.1-small-shaped T5X checkpoint (full T5 tree + Adafactor state) as EncT5
  (only the kept parameters) and in full."""
  cfg = enct5.get_config('small')
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, 't5')
  opt_state = adafactor.init(params)
  with tempfile.TemporaryDirectory(prefix='enct5_bench_') as directory:
    start = time.perf_counter()
    path = save_ckpt.save_checkpoint(directory, 0, params, opt_state)
    write_s = time.perf_counter() - start
    del params, opt_state
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)
    kept = [name for name in load_ckpt.flatten(enct5.param_specs(cfg))
            if name not in load_ckpt.FRESH_PARAMS]
    loads = {
        'EncT5': lambda: load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0),
                                               with_optimizer_state=True),
        'EncT5 leaves, read only': lambda: load_ckpt.read_t5x(
            path, [f'target/{n}' for n in kept] + [f'state/param_states/{n}' for n in kept]),
        'T5 (full tree)': lambda: load_ckpt.read_t5x(path)}
    loaded_bytes = {name: tree_bytes(fn()) for name, fn in loads.items()}
    times, _ = round_robin(loads, args.rounds, warmup=0)
  notes = {'EncT5': 'load_ckpt.load_params(with_optimizer_state=True)',
           'EncT5 leaves, read only': 'read_t5x of the same leaves: the I/O part of the above',
           'T5 (full tree)': 'read_t5x of everything'}
  for name in loads:
    table.add('ckpt', f'small: load {name}', f'{med(times[name]):.2f}s',
              spread(times[name], '{:.2f}'),
              f'{loaded_bytes[name] / 2**20:,.0f} MiB of params + Adafactor state; {notes[name]}')
  table.add('ckpt', 'small: checkpoint on disk', f'{disk / 2**20:,.0f} MiB',
            note=f'written in {write_s:.1f}s to a temp dir; loads read it from the page cache')


HF_DIFFERENCES = (
    "transformers' Adafactor(lr=1e-3, scale_parameter=True, relative_step=False, beta1=None, "
    'decay_rate=-0.8, clip_threshold=1.0, eps=(1e-30, 1e-3)) is T5X\'s update except that it '
    'factors every matrix (T5X only when the second-largest dim >= 128: the relpos table and '
    'the head differ); its dropout masks are not shared along the length axis')


def hf_config(cfg, **overrides):
  """transformers' T5Config of an EncT5Config's shape (T5.1.1: gated GELU, untied head)."""
  from transformers import T5Config
  return T5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim,
                  d_ff=cfg.d_ff, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                  num_decoder_layers=cfg.num_decoder_layers,
                  relative_attention_num_buckets=cfg.num_buckets,
                  relative_attention_max_distance=cfg.max_distance,
                  dropout_rate=cfg.dropout_rate, feed_forward_proj='gated-gelu',
                  tie_word_embeddings=False, pad_token_id=0, eos_token_id=vocabularies.EOS_ID,
                  decoder_start_token_id=0, **overrides)


def hf_enct5_modules(cfg):
  """EncT5 from Hugging Face's own T5 modules: T5EncoderModel, then a learned query (`bos`)
  through T5LayerCrossAttention and T5LayerFF, a final T5LayerNorm and a linear head."""
  import torch
  from transformers import T5EncoderModel
  from transformers.models.t5 import modeling_t5
  config = hf_config(cfg)
  encoder = T5EncoderModel(config)
  modules = torch.nn.ModuleDict({
      'encoder': encoder,
      'cross': modeling_t5.T5LayerCrossAttention(encoder.config, layer_idx=0),
      'ff': modeling_t5.T5LayerFF(config),
      'norm': modeling_t5.T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon),
      'head': torch.nn.Linear(config.d_model, cfg.num_outputs)})
  modules.bos = torch.nn.Parameter(torch.randn(config.d_model))
  return modules


def hf_tensors(params):
  """Our parameter tree -> {Hugging Face name: torch tensor} (hf_ckpt's name map)."""
  import torch
  return {hf_ckpt.hf_name(name): torch.tensor(np.asarray(x).T if hf_ckpt.is_transposed(name)
                                               else np.asarray(x))
          for name, x in load_ckpt.flatten(params).items() if hf_ckpt.hf_name(name)}


def load_hf_enct5(modules, params):
  """Our EncT5 weights into `hf_enct5_modules` (strict: every HF tensor gets one)."""
  import torch
  tensors = hf_tensors(params)
  encoder = {name: t for name, t in tensors.items() if name.startswith(('shared.', 'encoder.'))}
  encoder['encoder.embed_tokens.weight'] = encoder['shared.weight']
  modules['encoder'].load_state_dict(encoder)
  for module, prefix in (('cross', 'decoder.block.0.layer.1.'), ('ff', 'decoder.block.0.layer.2.')):
    modules[module].load_state_dict({name[len(prefix):]: t for name, t in tensors.items()
                                     if name.startswith(prefix)})
  modules['norm'].load_state_dict({'weight': tensors['decoder.final_layer_norm.weight']})
  projection = params['decoder']['class_projection']
  modules['head'].load_state_dict({'weight': torch.tensor(np.asarray(projection['kernel']).T),
                                   'bias': torch.tensor(np.asarray(projection['bias']))})
  with torch.no_grad():
    modules.bos.copy_(torch.tensor(np.asarray(params['decoder']['bos_embedding'])))


def hf_enct5_logits(modules, ids, segment_ids, num_slots, dropout):
  """EncT5's forward pass through `hf_enct5_modules` on packed rows: [B, L] ids and segment ids
  (1, 2, ... per example, 0 = padding) -> [B, T, n+1] logits, slot j for segment j+1.

  Packing as Hugging Face allows it: additive 4-D masks (a token sees its own example; slot
  j's query sees segment j+1), full [L, L] attention. One example a row (segment ids 1 on its
  tokens, T = 1) is the usual unpacked batch.
  """
  import torch
  blocked = torch.finfo(torch.float32).min

  def additive(allowed):  # bool [B, q, k] -> float [B, 1, q, k]: 0 where allowed
    return torch.where(allowed, 0.0, blocked)[:, None]
  real = segment_ids > 0
  if num_slots == 1:  # one example a row: the [B, L] padding mask, as Hugging Face users pass
    self_mask = real.long()
  else:
    self_mask = additive((segment_ids[:, :, None] == segment_ids[:, None, :])
                         & real[:, :, None] & real[:, None, :])  # [B, 1, L, L]
  encoded = modules['encoder'](input_ids=ids, attention_mask=self_mask).last_hidden_state
  slots = torch.arange(1, num_slots + 1)
  cross_mask = additive(slots[None, :, None] == segment_ids[:, None, :])  # [B, 1, T, L]
  query = dropout(modules.bos.expand(ids.shape[0], num_slots, -1))  # [B, T, D]
  query = modules['cross'](query, encoded, attention_mask=cross_mask)[0]
  pooled = dropout(modules['norm'](modules['ff'](query)))
  return modules['head'](pooled)


class HFTrainer:
  """EncT5 from Hugging Face's PyTorch T5 modules: T5EncoderModel, then a learned query through
  T5LayerCrossAttention and T5LayerFF, final T5LayerNorm, dropout, a linear head; call to take
  one train step on packed rows (the summed cross-entropy of the real slots, as ours;
  backward; transformers' Adafactor)."""

  def __init__(self, cfg, batch):
    import torch  # optional: only with --compare_hf
    from transformers.optimization import Adafactor
    torch.manual_seed(0)
    modules = hf_enct5_modules(cfg)
    self.attention = modules['encoder'].config._attn_implementation
    self.modules, self.dropout = modules.train(), torch.nn.Dropout(cfg.dropout_rate)
    self.ids = torch.tensor(batch['inputs'], dtype=torch.long)
    self.segment_ids = torch.tensor(batch['inputs_segment_ids'], dtype=torch.long)
    self.targets = torch.tensor(batch['targets'], dtype=torch.long)  # [B, T], 0 = no example
    self.optimizer = Adafactor(modules.parameters(), lr=LEARNING_RATE, scale_parameter=True,
                               relative_step=False, warmup_init=False, beta1=None)
    self.torch = torch

  def __call__(self):
    logits = hf_enct5_logits(self.modules, self.ids, self.segment_ids, self.targets.shape[1],
                             self.dropout)
    loss = self.torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.targets.flatten(),
                                                  ignore_index=0, reduction='sum')
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)


def _hf_worker(conn, cfg, batch):
  """Child process: one HFTrainer; each request runs one step, then answers."""
  trainer = HFTrainer(cfg, batch)
  conn.send(trainer.attention)
  while conn.recv():
    trainer()
    conn.send(True)


BF16_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo flags of bfloat16 dot units


def cpu_flags():
  """The CPU's feature flags (/proc/cpuinfo), empty where unknown."""
  try:
    with open('/proc/cpuinfo') as f:
      return set(next(line for line in f if line.startswith('flags')).split(':', 1)[1].split())
  except (OSError, StopIteration):
    return set()


def hf_step_fn(cfg, batch):
  """(step, attention implementation, close): one Hugging Face train step on `batch` in a
  child process, timed there.

  NOTE: PyTorch runs in its own process (steps still alternate, never overlap): in one process
  XLA's and PyTorch's thread pools interfere and PyTorch's steps slow down many times over.
  """
  context = multiprocessing.get_context('spawn')
  conn, child_conn = context.Pipe()
  worker = context.Process(target=_hf_worker, args=(child_conn, cfg, batch), daemon=True)
  worker.start()
  child_conn.close()  # the child's end: if the child dies, recv raises EOFError, not hangs
  attention = conn.recv()

  def step():
    conn.send(True)
    return conn.recv()

  def close():
    conn.send(False)
    worker.join()
  return step, attention, close


def bench_hf(table, args):
  """Training at 128 and at the paper's 512 tokens a row (§4.1) against the same EncT5 built
  from Hugging Face's PyTorch modules, on the same packed rows (SST-2 lengths), side by side:
  step times, tokens/s, the share of the float32 matmul peak, and bfloat16 against float32
  where the CPU has bfloat16 dot units.

  Ours computes self-attention within blocks of `packing.block_length_for` the examples
  (the same outputs: `t5_layers.attention_blocks`); Hugging Face, as it can, over whole rows
  with a block-diagonal mask. Both: dropout 0.1, Adafactor, summed cross-entropy.
  """
  try:
    import torch
    import transformers
  except ImportError as e:
    table.add('hf', 'skipped', '-', note=f'torch/transformers not importable: {e}')
    return
  flags = sorted(cpu_flags() & set(BF16_FLAGS))
  table.add('hf', 'bfloat16 dot units', ', '.join(flags) or 'none',
            note='CPU flags' + ('' if flags else f': none of {BF16_FLAGS}; float32 only'))
  lengths, source = glue_lengths('sst2', 'train', 4000, np.random.RandomState(0))
  peak_fn, peak_flops = loop.matmul_peak_fn(jnp.float32, args.matmul_size)
  tokens_per_s = {}
  for num_rows, length in ((8, 128), (4, 512)):
    shape = f'{num_rows}x{length}'
    block = packing.block_length_for(lengths, length)
    cfg = enct5.get_config('small', dropout_rate=0.1, attention_block_length=block)
    packed = pack(random_examples(lengths, cfg, np.random.RandomState(1)), length,
                  block_length=block)
    rows = take_rows(packed, np.sort(np.random.RandomState(2).choice(len(packed['inputs']),
                                                                     num_rows, replace=False)))
    dtypes = ('float32', 'bfloat16') if flags else ('float32',)
    ours = {dtype: Trainer(dataclasses.replace(cfg, dtype=dtype), 'enct5', rows)
            for dtype in dtypes}
    hf, attention, close = hf_step_fn(cfg, rows)
    fns = {**{f'ours {dtype}': trainer for dtype, trainer in ours.items()}, 'HF': hf,
           'matmul': peak_fn}
    times, _ = round_robin(fns, args.rounds, warmup=2)  # PyTorch's first steps are slow
    hf_times = times.pop('HF')  # timed here: a step and a pipe round trip (~0.1 ms)
    close()
    _hf_step_rows(table, args, shape, rows, cfg, times, hf_times, peak_flops, source,
                  f'torch {torch.__version__} ({torch.get_num_threads()} threads, {attention} '
                  f'attention), transformers {transformers.__version__}')
    tokens_per_s[length] = num_rows * length / med(times['ours float32'])
  table.add('hf', 'ours float32 tokens/s at 512 / at 128',
            f'{tokens_per_s[512] / tokens_per_s[128]:.0%}', note='target >= 80%')


def _hf_step_rows(table, args, shape, rows, cfg, times, hf_times, peak_flops, source, versions):
  """The table rows of one shape of `bench_hf`."""
  num_rows, length = rows['inputs'].shape
  slots = rows['targets'].shape[1]
  flops = enct5.train_step_flops(cfg, 'enct5', num_rows, length, slots)
  note = (f'{int((rows["targets"] > 0).sum())} examples packed, '
          f'{(rows["inputs_segment_ids"] > 0).mean():.0%} real tokens, T={slots}, attention '
          f'blocks of {cfg.attention_block_length}; lengths: {source}')
  for name in [n for n in times if n.startswith('ours')]:
    peaks = [peak_flops / t for t in times['matmul']]
    table.add('hf', f'{shape}: {name} step', f'{med(times[name]):.3f}s', spread(times[name]),
              f'{num_rows * length / med(times[name]):,.0f} tokens/s; '
              f'{flops / med(times[name]) / 1e9:.0f} GFLOP/s = '
              f'{flops / med(times[name]) / med(peaks):.0%} of the float32 matmul peak '
              f'({med(peaks) / 1e9:.0f} GFLOP/s, {args.matmul_size}^2, same rounds)'
              + (f'; {note}' if name == 'ours float32' else ''))
  table.add('hf', f'{shape}: HF float32 step', f'{med(hf_times):.3f}s', spread(hf_times),
            f'{versions}; {HF_DIFFERENCES}')
  ratios = [h / o for o, h in zip(times['ours float32'], hf_times)]
  table.add('hf', f'{shape}: HF / ours float32 step time',
            f'{med(hf_times) / med(times["ours float32"]):.2f}x', spread(ratios, '{:.2f}'),
            'per-round ratios; target >= 1.5x at 4x512')
  if 'ours bfloat16' in times:
    ratios = [f / b for f, b in zip(times['ours float32'], times['ours bfloat16'])]
    table.add('hf', f'{shape}: ours float32 / bfloat16 step time',
              f'{med(times["ours float32"]) / med(times["ours bfloat16"]):.2f}x',
              spread(ratios, '{:.2f}'), 'parameters and Adafactor in float32 (T5X); target '
              '>= 1.6x')


class HFPredictor:
  """Prediction as Hugging Face users do it: examples sorted by length, batches of
  `batch_size` padded to their longest (dynamic padding), `torch.inference_mode`. Call with
  'enct5' (`hf_enct5_modules` holding our EncT5 weights) or 'seqcls' (HF's
  T5ForSequenceClassification holding our T5 weights: the whole encoder-decoder, the decoder
  reading the input shifted right, its own head) and a list of token arrays -> logits
  [examples, classes]."""

  def __init__(self, cfg, enct5_params, t5_params, batch_size):
    import torch
    from transformers import T5ForSequenceClassification
    torch.manual_seed(0)
    self.torch, self.batch_size = torch, batch_size
    self.enct5 = hf_enct5_modules(cfg).eval()
    load_hf_enct5(self.enct5, enct5_params)
    self.num_outputs = {'enct5': cfg.num_classes, 'seqcls': cfg.num_classes}
    if t5_params is None:  # EncT5 alone
      return
    self.seqcls = T5ForSequenceClassification(hf_config(cfg, num_labels=cfg.num_classes)).eval()
    tensors = {f'transformer.{name}': t for name, t in hf_tensors(t5_params).items()
               if name != 'lm_head.weight'}
    for stack in ('encoder', 'decoder'):
      tensors[f'transformer.{stack}.embed_tokens.weight'] = tensors['transformer.shared.weight']
    missing, unexpected = self.seqcls.load_state_dict(tensors, strict=False)
    if unexpected or any(not name.startswith('classification_head.') for name in missing):
      raise RuntimeError(f'T5ForSequenceClassification: missing {missing}, unexpected '
                         f'{unexpected}')

  def __call__(self, variant, examples, dtype='float32'):
    """dtype 'bfloat16': under `torch.autocast`, as Hugging Face users run bfloat16 on CPU."""
    torch = self.torch
    lengths = np.array([len(x) for x in examples])
    order = np.argsort(lengths, kind='stable')
    logits = np.zeros((len(examples), self.num_outputs[variant]), np.float32)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16,
                                                enabled=dtype == 'bfloat16'):
      for begin in range(0, len(order), self.batch_size):
        chosen = order[begin:begin + self.batch_size]
        ids = np.zeros((len(chosen), lengths[chosen].max()), np.int64)
        for row, i in enumerate(chosen):
          ids[row, :lengths[i]] = examples[i]
        ids = torch.from_numpy(ids)
        mask = (ids != 0).long()
        if variant == 'enct5':
          no_dropout = lambda x: x
          # [:, 1:]: class 0, the padding class, dropped.
          logits[chosen] = hf_enct5_logits(self.enct5, ids, mask, 1,
                                           no_dropout)[:, 0, 1:].float().numpy()
        else:
          logits[chosen] = self.seqcls(input_ids=ids, attention_mask=mask).logits.float().numpy()
    return logits


def _hf_predict_worker(conn, cfg, enct5_params, t5_params, batch_size, datasets):
  """Child process: one HFPredictor; each request (variant, task, dtype) answers (wall
  seconds, logits) for all of that task's examples."""
  import torch
  import transformers
  predictor = HFPredictor(cfg, enct5_params, t5_params, batch_size)
  conn.send(f'torch {torch.__version__} ({torch.get_num_threads()} threads), transformers '
            f'{transformers.__version__}')
  while (request := conn.recv()) is not None:
    variant, task, dtype = request
    start = time.perf_counter()
    logits = predictor(variant, datasets[task], dtype)
    conn.send((time.perf_counter() - start, logits))


class EncT5Predictor:
  """Our EncT5's logits (enct5.apply, jitted; the padding class dropped) of a list of examples:
  'packed' (best-fit rows of 512 tokens, the paper's, `tokens_per_batch` tokens a batch, the
  examples packed into attention blocks of `packing.block_length_for` their lengths) or
  'sorted' (one example a row, length-sorted batches of `batch_size` padded to a multiple of
  32: one compiled shape per bucket, all compiled in the warm-up)."""

  def __init__(self, cfg, params, examples, tokens_per_batch, batch_size, row_length=512):
    self.params = params
    labeled = [(x, 1) for x in examples]
    lengths = np.array([len(x) for x in examples])
    block = packing.block_length_for(lengths, row_length)
    blocked = dataclasses.replace(cfg, attention_block_length=block)
    self.apply = {'packed': jax.jit(lambda p, b: enct5.apply(p, blocked, b)[..., 1:]),
                  'sorted': jax.jit(lambda p, b: enct5.apply(p, cfg, b)[..., 1:])}
    packed = packing.pack_examples(labeled, row_length, 62, block_length=block)
    rows = max(1, tokens_per_batch // row_length)
    self.batches = {'packed': [jax.device_put(b) for b in packing.eval_batches(packed, rows)]}
    self.shapes = {'packed': f'{rows}x{row_length} rows, attention blocks of {block}, '
                             f'{packing.efficiency(packed):.0%} real tokens'}
    order = np.argsort(lengths, kind='stable')
    sorted_batches = []
    for begin in range(0, len(order), batch_size):
      chosen = order[begin:begin + batch_size]
      bucket = 32 * int(math.ceil(lengths[chosen].max() / 32))
      rows = packing.pack_examples([labeled[i] for i in chosen], bucket, 1, method='unpacked',
                                   ids=chosen)
      sorted_batches.append(jax.device_put(rows))
    self.batches['sorted'] = sorted_batches
    self.shapes['sorted'] = (f'{batch_size} a batch, '
                             f'{len({b["inputs"].shape for b in sorted_batches})} shapes')

  def __call__(self, variant):
    keys = ('inputs', 'inputs_segment_ids', 'targets')
    outputs = [(b['example_ids'], self.apply[variant](self.params, {k: b[k] for k in keys}))
               for b in self.batches[variant]]
    _, logits = packing.per_example(np.concatenate([ids for ids, _ in outputs]),
                                    np.concatenate([np.asarray(x) for _, x in outputs]))
    return logits  # examples 0, 1, ... in order: every id occurs once


def bench_hf_predict(table, args):
  """Prediction throughput (examples/s) on SST-2 and RTE dev lengths: ours packed and sorted
  vs Hugging Face's EncT5 from its own modules and T5ForSequenceClassification, on the same
  weights (its head aside), side by side; the predictions of the two EncT5s are compared."""
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:
    table.add('hf', 'prediction skipped', '-', note=f'torch/transformers not importable: {e}')
    return
  cfg = enct5.get_config('small')
  rng = np.random.RandomState(0)
  enct5_params = jax.device_get(enct5.init_params(jax.random.PRNGKey(0), cfg))
  t5_params = jax.device_get(enct5.init_params(jax.random.PRNGKey(0), cfg, 't5'))
  datasets, sources = {}, {}
  for task in ('sst2', 'rte'):
    lengths, sources[task] = glue_lengths(task, 'dev', args.predict_examples[task], rng)
    datasets[task] = [tokens for tokens, _ in random_examples(lengths, cfg, rng)]
  context = multiprocessing.get_context('spawn')
  conn, child_conn = context.Pipe()
  worker = context.Process(target=_hf_predict_worker, daemon=True, args=(
      child_conn, cfg, enct5_params, t5_params, args.hf_batch_size, datasets))
  worker.start()
  child_conn.close()  # the child's end: if the child dies, recv raises EOFError, not hangs
  versions = conn.recv()

  def hf(variant, task):
    def run():
      conn.send((variant, task, 'float32'))
      return conn.recv()[1]
    return run

  for task, examples in datasets.items():
    ours = EncT5Predictor(cfg, enct5_params, examples, args.predict_tokens, args.hf_batch_size)
    fns = {'ours packed': lambda: ours('packed'), 'ours sorted': lambda: ours('sorted'),
           'HF EncT5': hf('enct5', task), 'HF T5ForSequenceClassification': hf('seqcls', task)}
    ours_logits, hf_logits = ours('packed'), hf('enct5', task)()
    difference = np.abs(ours_logits - hf_logits).max() / np.abs(hf_logits).max()
    times, _ = round_robin(fns, args.rounds)
    rates = {name: [len(examples) / t for t in ts] for name, ts in times.items()}
    notes = {'ours packed': ours.shapes['packed'], 'ours sorted': ours.shapes['sorted'],
             'HF EncT5': f'{args.hf_batch_size} a batch, T5EncoderModel + T5LayerCrossAttention'
                         f' + T5LayerFF from HF; {versions}',
             'HF T5ForSequenceClassification': f'{args.hf_batch_size} a batch, whole '
                                                'encoder-decoder'}
    for name in fns:
      table.add('hf', f'{task} dev: {name} examples/s', f'{med(rates[name]):,.1f}',
                spread(rates[name], '{:,.1f}'), notes[name])
    best = max(('ours packed', 'ours sorted'), key=lambda name: med(rates[name]))
    for other in ('HF EncT5', 'HF T5ForSequenceClassification'):
      ratios = [a / b for a, b in zip(rates[best], rates[other])]
      table.add('hf', f'{task} dev: {best} / {other}',
                f'{med(rates[best]) / med(rates[other]):.2f}x', spread(ratios, '{:.2f}'),
                ('target >= 2x (RTE: long text)' if task == 'rte' else 'target >= 1.3x')
                if other == 'HF EncT5' else '')
    table.add('hf', f'{task} dev: ours vs HF EncT5 logits', f'{difference:.1e}',
              note=f'max |difference| / max |logit| over {len(examples)} examples (same '
                   f'weights, random init); lengths: {sources[task]}')
  conn.send(None)
  worker.join()


def model_alone(labeler, examples, blocks=True, batch_size=None):
  """(() -> rows labelled, {block length: rows}, analytic FLOPs of a call): `labeler`'s eval
  steps over `examples` packed beforehand, in the batches prediction runs them
  (`evaluation.inference_batches`: each row in its blocks, or whole rows with `blocks` False;
  `batch_size` rows a batch, default `evaluation.inference_batch_size`)."""
  config, inference = labeler.config, labeler.inference
  packed = evaluation.pack_for_inference(config, inference.task, examples, labeler.vocab)
  run_config = dataclasses.replace(config, eval_batch_size=batch_size or config.eval_batch_size,
                                   attention_block_length=None if blocks else 0)
  batches = list(evaluation.inference_batches(run_config, inference, packed))
  block_rows, flops = collections.Counter(), 0
  for block_length, batch in batches:
    rows = int((batch['inputs_segment_ids'] > 0).any(axis=1).sum())  # not the tail's empty rows
    block_rows[block_length] += rows
    flops += enct5.forward_flops(inference.cfg, 'enct5', rows, batch['inputs'].shape[1],
                                 batch['example_ids'].shape[1], block_length)
  batches = [(block_length, partitioning.global_batch(
      {k: batch[k] for k in evaluation.MODELS['enct5'].eval_keys}, inference.shardings.batch))
             for block_length, batch in batches]

  def run():
    outputs = [inference.eval_step(labeler.params, batch, block_length)
               for block_length, batch in batches]
    jax.block_until_ready(outputs)
    return len(examples)
  return run, dict(block_rows), flops


def make_user_run(task, glue_dir, output_dir, batch_size):
  """A run as a user makes it: `train.py` on the task's GLUE files, EncT5-small with rows of
  512 tokens, one step (speed does not depend on the weights)."""
  argv = [sys.executable, os.path.join(REPO, 'train.py'), f'--task={task}',
          f'--data_dir={glue_dir}', '--size=small', '--max_input_length=512',
          f'--batch_size={batch_size}', '--train_steps=1', '--eval_every=1',
          '--compilation_cache=', f'--output_dir={output_dir}']
  done = subprocess.run(argv, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'{" ".join(argv)} failed:\n{done.stderr[-2000:]}')


PEAK_SIZES = (1024, 2048, 3072)  # square matmuls timed for the user section's peak: on an
# Intel Xeon with AMX the bfloat16 one ran at 1.2-1.5 TFLOP/s at 1024 and 2048, 1.0 at 3072


def bench_user(table, args):
  """The path users take: a run made by `train.py` (`make_user_run`), the first dev rows of
  SST-2 and RTE labelled by `predict.Labeler` (texts in Python) and `predict.label_file`
  (`--mode=predict --input_file` once loaded: reading, tokenizing, packing, labelling,
  writing), against the model alone on the same rows packed beforehand (`model_alone`) and
  Hugging Face's EncT5 from its own modules (its own process, sorted batches, dynamic padding)
  on the same tokens and weights; float32, and bfloat16 where the CPU has bfloat16 dot units
  (ours its activations, a float32 run predicted in bfloat16; HF under `torch.autocast`)."""
  glue_dir = os.path.join(tasks.SHARED, 'glue')
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    with_hf = True
  except ImportError as e:
    with_hf = False
    table.add('user', 'HF skipped', '-', note=f'torch/transformers not importable: {e}')
  dtypes = ('float32', 'bfloat16') if cpu_flags() & set(BF16_FLAGS) else ('float32',)
  with tempfile.TemporaryDirectory() as tmp:
    for name in ('sst2', 'rte'):
      task = tasks.get_task(name)
      try:
        dev = readers.split_path(task, glue_dir, 'validation')
      except FileNotFoundError as e:
        table.add('user', f'{name} skipped', '-', note=str(e))
        continue
      run_dir, input_file = os.path.join(tmp, name), os.path.join(tmp, f'{name}.tsv')
      start = time.perf_counter()
      make_user_run(name, glue_dir, run_dir, args.user_batch_size)
      made = time.perf_counter() - start
      with open(dev) as f, open(input_file, 'w') as out:
        out.writelines(f.readlines()[:args.predict_examples[name] + 1])  # header + rows
      labelers = {dtype: predict.Labeler(run_dir, dtype=dtype) for dtype in dtypes}
      float32 = labelers['float32']
      examples = readers.read_file(float32.inference.task, input_file, labeled=False)
      texts = readers.text_rows(float32.inference.task, input_file)
      fns, peak_fns = {}, {}
      for dtype, labeler in labelers.items():
        out = os.path.join(tmp, f'{name}.{dtype}.jsonl')
        fns[f'model alone {dtype}'], block_rows, flops = model_alone(labeler, examples)
        for size in PEAK_SIZES:
          peak_fns[dtype, size] = loop.matmul_peak_fn(jnp.dtype(dtype), size)
        fns[f'model alone, batches of {args.user_batch_size} {dtype}'] = model_alone(
            labeler, examples, batch_size=args.user_batch_size)[0]
        fns[f'Labeler {dtype}'] = lambda labeler=labeler: labeler(texts)
        fns[f'label_file {dtype}'] = lambda labeler=labeler, out=out: predict.label_file(
            labeler.config, labeler.inference, labeler.params, labeler.vocab, input_file, out)
      if with_hf:
        tokens = [ids for ids, _ in preprocessing.tokenize(
            float32.vocab, examples, float32.config.max_input_length)[0]]
        context = multiprocessing.get_context('spawn')
        conn, child_conn = context.Pipe()
        worker = context.Process(target=_hf_predict_worker, daemon=True, args=(
            child_conn, float32.inference.cfg, jax.device_get(float32.params), None,
            args.hf_batch_size, {name: tokens}))
        worker.start()
        child_conn.close()
        versions = conn.recv()

        def hf(dtype):
          def run():
            conn.send(('enct5', name, dtype))
            return conn.recv()[1]
          return run
        for dtype in dtypes:
          fns[f'HF EncT5 {dtype}'] = hf(dtype)
        ours = np.array([list(row['probabilities'].values()) for row in float32(texts)])
        logits = hf('float32')()
        theirs = np.exp(logits - logits.max(-1, keepdims=True))
        theirs /= theirs.sum(-1, keepdims=True)
      times, _ = round_robin({**fns, **{key: fn for key, (fn, _) in peak_fns.items()}},
                             args.rounds)
      if with_hf:
        conn.send(None)
        worker.join()
      rates = {key: [len(examples) / t for t in times[key]] for key in fns}
      lengths = [len(x) for x in tokens] if with_hf else []
      table.add('user', f'{name} dev: the run', f'{made:.0f}s', note=(
          f'train.py --size=small --max_input_length=512 --batch_size={args.user_batch_size} '
          f'--train_steps=1; {len(examples)} rows labelled'
          + (f', {np.mean(lengths):.0f} tokens a row on average' if lengths else '')
          + f'; packed rows by attention block: {block_rows}'))
      for key in fns:
        table.add('user', f'{name} dev: {key} rows/s', f'{med(rates[key]):,.1f}',
                  spread(rates[key], '{:,.1f}'),
                  versions if key.startswith('HF') else '')
      for dtype in dtypes:
        for path in ('Labeler', 'label_file'):
          others = ['model alone'] + (['HF EncT5'] if with_hf else [])
          for other in others:
            ratios = [a / b for a, b in zip(rates[f'{path} {dtype}'],
                                            rates[f'{other} {dtype}'])]
            table.add('user', f'{name} dev: {path} / {other}, {dtype}',
                      f'{med(rates[f"{path} {dtype}"]) / med(rates[f"{other} {dtype}"]):.2f}x',
                      spread(ratios, '{:.2f}'),
                      'target >= 0.90x' if other == 'model alone' else 'target >= 1.0x')
      for dtype in dtypes:
        peaks = [max(peak_fns[dtype, size][1] / times[dtype, size][i] for size in PEAK_SIZES)
                 for i in range(args.rounds)]  # each round's fastest size
        for path in ('model alone', 'Labeler', 'label_file'):
          achieved = [flops / t for t in times[f'{path} {dtype}']]
          table.add('user', f'{name} dev: {path}, share of the {dtype} matmul peak',
                    f'{med(achieved) / med(peaks):.0%}',
                    note=f'{med(achieved) / 1e9:,.0f} GFLOP/s ({flops / 1e9:,.0f} GFLOP analytic, '
                         f'padding included) against the fastest {dtype} matmul of '
                         f'{"/".join(map(str, PEAK_SIZES))}^2 in the same rounds, '
                         f'{med(peaks) / 1e9:,.0f} GFLOP/s; target >= 80% at RTE lengths, '
                         f'>= 70% at SST-2')
        chosen, run = (rates[f'model alone {dtype}'],
                       rates[f'model alone, batches of {args.user_batch_size} {dtype}'])
        rows = evaluation.inference_batch_size(labelers[dtype].config,
                                               float32.inference.cfg.d_ff, 512, 1)
        table.add('user', f'{name} dev: inference batch / the run\'s batch, {dtype}',
                  f'{med(chosen) / med(run):.2f}x',
                  spread([a / b for a, b in zip(chosen, run)], '{:.2f}'),
                  f'the model alone: batches of evaluation.inference_batch_size ({rows} rows '
                  f'of 512) against {args.user_batch_size}')
      if len(dtypes) > 1:
        ratios = [b / f for f, b in zip(rates['Labeler float32'], rates['Labeler bfloat16'])]
        table.add('user', f'{name} dev: Labeler bfloat16 / float32',
                  f'{med(rates["Labeler bfloat16"]) / med(rates["Labeler float32"]):.2f}x',
                  spread(ratios, '{:.2f}'), 'a float32 run predicted in bfloat16')
      if with_hf:
        table.add('user', f'{name} dev: Labeler vs HF EncT5 probabilities, float32',
                  f'{np.abs(ours - theirs).max():.1e}',
                  note='max |difference| over the rows (same weights and tokens)')


def cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def main(argv):
  del argv
  sections = FLAGS.sections + (['hf'] if FLAGS.compare_hf else [])
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f'unknown sections {sorted(unknown)}; expected some of {SECTIONS}')
  quick = FLAGS.quick
  args = types.SimpleNamespace(
      length=FLAGS.length, rounds=FLAGS.rounds or (3 if quick else 7),
      tiny_rows=8 if quick else 16, small_rows=4 if quick else 8,
      matmul_size=2048 if quick else 3072, infer_size='small',
      infer_examples=128 if quick else 872, infer_rows=8,
      predict_examples={'sst2': 256, 'rte': 96} if quick else {'sst2': 872, 'rte': 277},
      predict_tokens=4096,  # tokens per packed prediction batch
      hf_batch_size=32,
      user_batch_size=16)  # packed rows of 512 tokens per eval step of the user's run

  start = time.perf_counter()
  load_start = os.getloadavg()
  table = Table()
  rng = np.random.RandomState(0)
  print(f'bench.py: {cpu_model()}, {os.cpu_count()} CPUs, '
        f'jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'load average {load_start[0]:.1f}', flush=True)
  if 'params' in sections:
    bench_params(table)
  if 'train' in sections:
    bench_train(table, args, rng)
  if 'infer' in sections:
    bench_infer(table, args, rng)
  if 'pack' in sections:
    bench_packing(table, args, rng)
  if 'ckpt' in sections:
    bench_checkpoint(table, args)
  if 'hf' in sections:
    bench_hf(table, args)
    bench_hf_predict(table, args)
  if 'user' in sections:
    bench_user(table, args)
  load_end = os.getloadavg()
  table.add('machine', 'host', f'{cpu_model()}, {os.cpu_count()} CPUs',
            note=f'jax {jax.__version__}; 1-min load average {load_start[0]:.1f} at start, '
                 f'{load_end[0]:.1f} at end (above the CPU count: other jobs shared the cores)')
  table.add('machine', 'GLIBC_TUNABLES', os.environ.get('GLIBC_TUNABLES', 'unset'),
            note='glibc.malloc.hugetlb=1 puts XLA:CPU\'s temporaries, mapped afresh each '
                 'step, in huge pages (experiments/speed_512.md, lever 8)')
  table.add('machine', 'wall time', f'{time.perf_counter() - start:.0f}s',
            note='--quick' if quick else '')
  table.print()


if __name__ == '__main__':
  app.run(main)
