"""The training loop shared by fine-tuning (`finetune.py`) and pre-training (`pretrain.py`).

One jitted step (the gradient of a loss, then one Adafactor update, paper §4.1) and one loop
around it: the batch of each step, logs with throughput and model FLOPs utilization (MFU), an
evaluation and a checkpoint every `eval_every` steps (the best one kept when the evaluation has
a score), `metrics.jsonl`, a stop on SIGTERM/SIGINT after a checkpoint, a stop on a non-finite
loss. Everything a step draws (its batch, its dropout masks) is a function of the seed and the
step alone, so a run resumed from a checkpoint ends bit for bit where an uninterrupted one does.

Reads top-down: the step; the state (fresh or restored); the loop; its log and record.
"""
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import signal
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import adafactor
import enct5
import fileio
import load_ckpt
import partitioning
import save_ckpt

METRICS_FILE = 'metrics.jsonl'  # one JSON record per evaluation, in OUTPUT_DIR


# ----------------------------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------------------------

def dropout_rng(seed, step):
  """Dropout key of a step, a function of (seed, step) only, so a resumed run is exact."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def make_train_step(cfg, shardings, loss_fn, learning_rate, seed):
  """jit((params, opt_state, batch) -> (params, opt_state, metrics)), params and state donated.

  The gradient of `loss_fn(params, cfg, batch, rng) -> (loss, aux)` (aux: a dict of scalar
  sums for the logs), then one Adafactor update; metrics = {'loss', 'learning_rate', **aux}.
  `learning_rate`: a float, or a function of the Adafactor step (a traced int32 scalar). The
  dropout key is `dropout_rng(seed, Adafactor step)`.
  """
  def train_step(params, opt_state, batch):
    step = opt_state['step']
    rng = dropout_rng(seed, step) if cfg.dropout_rate > 0 else None
    with partitioning.activation_mesh(shardings.mesh):
      grad_fn = jax.value_and_grad(lambda p: loss_fn(p, cfg, batch, rng), has_aux=True)
      (loss, aux), grads = grad_fn(params)
    rate = learning_rate(step) if callable(learning_rate) else jnp.float32(learning_rate)
    params, opt_state = adafactor.update(grads, opt_state, params, rate)
    return params, opt_state, {'loss': loss, 'learning_rate': rate, **aux}

  return jax.jit(train_step,
                 in_shardings=(shardings.params, shardings.opt_state, shardings.batch),
                 out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
                 donate_argnums=(0, 1))


# ----------------------------------------------------------------------------------------------
# The state: fresh, or restored from the run's own checkpoints.
# ----------------------------------------------------------------------------------------------

class TrainState(NamedTuple):
  params: dict
  opt_state: dict
  step: int  # steps of this run taken so far (fine-tuning counts from its checkpoint's step)


def init_train_state(cfg, model, shardings, rng):
  """Fresh parameters of `model` (`enct5.init_params`: T5X's initializers) and Adafactor state,
  born sharded (jit with out_shardings)."""
  params = jax.jit(lambda key: enct5.init_params(key, cfg, model),
                   out_shardings=shardings.params)(rng)
  opt_state = jax.jit(adafactor.init, out_shardings=shardings.opt_state)(params)
  return params, opt_state


def adafactor_step(opt_state):
  """The Adafactor step count of a state, a Python int."""
  return int(jax.device_get(opt_state['step']))


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
  """What the loop does when: steps, cadence, checkpoints kept, where."""
  train_steps: int
  eval_every: int
  log_every: int
  keep_checkpoints: int
  output_dir: str


class TrainStep(NamedTuple):
  """A jitted train step (`make_train_step`) and what the loop needs to feed and measure it."""
  fn: Callable
  keys: tuple  # the batch arrays it reads
  batch_sharding: object  # partitioning.Shardings.batch
  flops: float  # model FLOPs of one step (enct5.train_step_flops), for MFU
  dtype: object  # the activation dtype: MFU is measured against its matmul peak


class Interrupted(Exception):
  """SIGTERM or SIGINT: the loop saved a checkpoint and stopped; the same command resumes."""


class NonFiniteLoss(FloatingPointError):
  """The loss of a step is NaN or infinite; the last good checkpoint is left as it is."""


class StepTooLarge(MemoryError):
  """The compiled train step needs more memory than the device has free (before any step)."""


def compile_step(train_step, params, opt_state, batch):
  """The train step compiled for these arguments (the loop calls it with the same shapes), its
  memory logged, and checked against what a device has free (`free_memory_bytes`): a step
  that cannot fit stops here, with the largest batch that would, instead of failing to
  allocate after the data is read and the model built.

  XLA's buffer assignment (`memory_analysis`): the arguments (parameters, optimizer state,
  batch) are resident already; the step allocates its temporaries and the outputs that do not
  reuse a donated argument.
  """
  compiled = train_step.fn.lower(params, opt_state, batch).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    return compiled
  gib = lambda n: f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.0f} MiB'
  allocates = stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
  free = free_memory_bytes()
  logging.info('step memory per device: its arguments (parameters, optimizer state, batch) %s, '
               'what it allocates %s; free %s', gib(stats.argument_size_in_bytes),
               gib(allocates), gib(free) if free is not None else 'unknown')
  if free is not None and allocates > free:
    rows = batch['inputs'].shape[0]
    fits = rows * (free - (allocates - stats.temp_size_in_bytes)) / stats.temp_size_in_bytes
    suggestion = (f'--batch_size={2 ** int(np.log2(fits))} should fit (temporaries grow with '
                  'the batch)' if fits >= 1 else 'not even --batch_size=1 would fit: a smaller '
                  'model or --max_input_length')
    raise StepTooLarge(f'the train step needs {gib(allocates)} per device beyond its '
                       f'arguments and {gib(free)} are free, at {rows} rows a step: '
                       f'{suggestion}; --remat_policy=full recomputes activations instead '
                       'of keeping them')
  return compiled


def free_memory_bytes():
  """Bytes one device can still allocate: an accelerator's own count, else the host's available
  memory (/proc/meminfo's MemAvailable) shared by its CPU devices; None where unknown."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  try:
    with open('/proc/meminfo') as f:
      available = [int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:')]
  except OSError:
    return None
  return available[0] // jax.local_device_count() if available else None


def train_loop(settings, state, train_step, batches, evaluate, summarize, extra_files=None,
               watchdog=None):
  """Trains from `state.step` to `settings.train_steps`; returns the best record (or None).

  batches: an iterator of host batches, the first for step `state.step + 1`. evaluate(params)
  -> a dict for the record ({'score': ...} makes the state OUTPUT_DIR/best when it is the best
  so far). summarize(sums) -> {name: value}: the logged figures (e.g. the loss per example)
  from the step metrics summed over steps. `extra_files` ({name: bytes}) go into every
  checkpoint. `watchdog` (`hosts.HostWatchdog`, several hosts) is told each step.
  """
  params, opt_state, start = state
  ckpt_dir = os.path.join(settings.output_dir, 'checkpoints')
  history = read_metrics(settings.output_dir, until_step=start)
  best = max((r for r in history if 'score' in r), key=lambda r: r['score'], default=None)
  meter = Meter(settings, start, train_step, history[-1]['elapsed_s'] if history else 0.0)

  def save(directory, keep):
    save_ckpt.save_checkpoint(os.path.join(settings.output_dir, directory),
                              adafactor_step(opt_state), params, opt_state, keep=keep,
                              extra_files=extra_files)

  def device_batch(batch):
    return partitioning.global_batch({k: batch[k] for k in train_step.keys},
                                     train_step.batch_sharding)

  if start >= settings.train_steps:
    return best
  first = next(batches)
  batches = itertools.chain([first], batches)
  step_fn = compile_step(train_step, params, opt_state, device_batch(first))
  with stop_on_signals() as received:
    for step in range(start + 1, settings.train_steps + 1):
      batch = next(batches)
      params, opt_state, metrics = step_fn(params, opt_state, device_batch(batch))
      if watchdog:
        watchdog.step = step
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        raise NonFiniteLoss(
            f'loss is {loss} at step {step}: stopping. The last good checkpoint, '
            f'{load_ckpt.latest_checkpoint(ckpt_dir) or "(none saved yet)"}, is left as it is; '
            'try a lower --learning_rate, --dtype=float32 or another --seed.')
      meter.add(batch, metrics)
      last = step == settings.train_steps
      if step % settings.log_every == 0 or last:
        meter.log(step, summarize)
      if step % settings.eval_every == 0 or last:
        with meter.paused():
          record = dict(step=step, t5x_step=adafactor_step(opt_state),
                        **meter.since_eval(summarize), **evaluate(params))
          if 'score' in record and (best is None or record['score'] > best['score']):
            save('best', keep=1)
            best = record
          append_metrics(settings.output_dir, record)  # before its checkpoint: never lost
          save('checkpoints', settings.keep_checkpoints)
        if best:
          logging.info('eval step %d: best %.2f at step %d', step, best['score'], best['step'])
      elif received:
        save('checkpoints', settings.keep_checkpoints)
      if received:
        logging.warning('signal %d: stopped after step %d, checkpoint in %s; run the same '
                        'command again to resume', received[0], step, ckpt_dir)
        raise Interrupted(received[0])
  return best


@contextlib.contextmanager
def stop_on_signals():
  """Inside, SIGTERM and SIGINT append to the list it yields (the loop finishes its step,
  saves and raises Interrupted); the previous handlers come back after."""
  received = []
  previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
              for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


# ----------------------------------------------------------------------------------------------
# The log and the record: OUTPUT_DIR/metrics.jsonl.
# ----------------------------------------------------------------------------------------------

class Meter:
  """The training log's figures: the step metrics summed since the last log line and since the
  last evaluation, input tokens and examples per second, packing, MFU, ETA. Evaluation time is
  left out (`paused`); `elapsed_s` in the records continues across resumes."""

  def __init__(self, settings, start, train_step, elapsed):
    self.settings, self.start, self.flops_per_step = settings, start, train_step.flops
    self.peak_flops = matmul_peak_flops(train_step.dtype) * jax.device_count()
    logging.info('model FLOPs per step %.3g; matmul peak %.3g FLOP/s (%d devices, %s)',
                 self.flops_per_step, self.peak_flops, jax.device_count(),
                 jnp.dtype(train_step.dtype).name)
    self.run_start = self.interval_start = time.time()
    self.elapsed_before, self.paused_s = elapsed, 0.0
    self.interval, self.since_last_eval = {}, {}

  def add(self, batch, metrics):
    step_sums = {k: float(v) for k, v in metrics.items() if k not in ('loss', 'learning_rate')}
    step_sums.update(tokens=int((batch['inputs_segment_ids'] > 0).sum()),
                     slots=batch['inputs'].size, steps=1)
    for sums in (self.interval, self.since_last_eval):
      for key, value in step_sums.items():
        sums[key] = sums.get(key, 0) + value
    self.learning_rate = float(metrics['learning_rate'])

  def log(self, step, summarize):
    now, sums = time.time(), self.interval
    seconds = now - self.interval_start
    per_step = self.elapsed() / (step - self.start)
    figures = ' | '.join(f'{k} {v:.4f}' for k, v in summarize(sums).items())
    logging.info('step %d/%d | %s | lr %.3g | %.0f examples/s | %.0f tokens/s | packing %.2f | '
                 'MFU %.1f%% | ETA %s', step, self.settings.train_steps, figures,
                 self.learning_rate, sums.get('num_examples', 0) / seconds,
                 sums['tokens'] / seconds, sums['tokens'] / sums['slots'],
                 100 * self.flops_per_step * sums['steps'] / seconds / self.peak_flops,
                 duration(per_step * (self.settings.train_steps - step)))
    self.interval, self.interval_start = {}, now

  def since_eval(self, summarize):
    """The train figures since the last evaluation, as `train_<name>`, and `elapsed_s`."""
    figures = {f'train_{k}': v for k, v in summarize(self.since_last_eval).items()}
    self.since_last_eval = {}
    return dict(figures, elapsed_s=round(self.elapsed_before + self.elapsed(), 1))

  @contextlib.contextmanager
  def paused(self):
    start = time.time()
    yield
    self.paused_s += time.time() - start
    self.interval_start += time.time() - start

  def elapsed(self):
    """Seconds of training in this process, evaluations left out."""
    return time.time() - self.run_start - self.paused_s


def read_metrics(output_dir, until_step=None):
  """metrics.jsonl's rows; with `until_step` (resuming), the rows after it are dropped from
  the file too: the resumed run writes them again."""
  path = os.path.join(output_dir, METRICS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if until_step is None:
    return rows
  kept = [row for row in rows if row['step'] <= until_step]
  if len(kept) < len(rows) and jax.process_index() == 0:
    fileio.write_atomically(path, ''.join(json.dumps(row) + '\n' for row in kept).encode())
  return kept


def append_metrics(output_dir, record):
  if jax.process_index() == 0:
    with open(os.path.join(output_dir, METRICS_FILE), 'a') as f:
      f.write(json.dumps(record) + '\n')


def matmul_peak_fn(dtype, size=2048):
  """(fn, FLOPs): one [size, size] @ [size, size] matmul of `dtype` operands accumulated in
  float32, as the model's dense layers run (`t5_layers.dense`), compiled, and its 2n^3 FLOPs:
  what this device's practical peak is timed with (MFU here, bench.py's rounds).

  NOTE: a bfloat16-output matmul would understate the bfloat16 peak on XLA:CPU, which
  converts the operands of such a dot to float32 (experiments/speed_512.md, lever 4).
  """
  a = jax.random.normal(jax.random.PRNGKey(1), (size, size)).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(2), (size, size)).astype(dtype)
  matmul = jax.jit(functools.partial(jnp.matmul, preferred_element_type=jnp.float32)).lower(
      a, b).compile()
  return (lambda: matmul(a, b)), 2.0 * size ** 3


def matmul_peak_flops(dtype, size=2048):
  """FLOP/s of one device's best of a few `matmul_peak_fn`s: the practical peak that MFU is
  measured against."""
  matmul, flops = matmul_peak_fn(dtype, size)
  matmul().block_until_ready()
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    matmul().block_until_ready()
    best = min(best, time.perf_counter() - start)
  return flops / best


def duration(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
