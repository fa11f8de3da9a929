"""A training run in one of several processes under `hosts.HostWatchdog`, to play a lost host
(run by test_host_loss.py): `python -m tools.host_loss_check --num_processes=N --process_id=i
--coordinator_address=127.0.0.1:PORT --output_dir=DIR` from the repository's root.

A softmax regression (it compiles in a moment; the watchdog does not care what is trained)
with Adafactor, data-parallel over the processes (gloo), checkpointed with
`save_ckpt.save_checkpoint` every --checkpoint_every steps and at the end. Each step's batch is
a function of its number, so running the same command again resumes exactly. The process
given --die_at_step=K sends itself --die_by (SIGKILL; SIGSTOP plays a host that froze or
vanished without closing its connections, so that the others' collectives hang rather than
fail) at step K, after printing `dying at <time>`; with --die_while_saving, inside the
checkpoint save of step K, once its own slices are written.
--slow_step: one step sleeps --slow_s. --fail_at_step: the step raises, after printing
`failing at <time>`. Exit statuses: 0 done, 1 an error, hosts.HOST_LOST.
"""
import os
import shlex
import signal
import sys
import time

from absl import app, flags
import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import adafactor
import hosts
import load_ckpt
import partitioning
import save_ckpt

flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', 1, 'Processes of the run.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index.')
flags.DEFINE_string('output_dir', None, 'Checkpoints go to OUTPUT_DIR/checkpoints.',
                    required=True)
flags.DEFINE_integer('train_steps', 9, 'Steps of the run.')
flags.DEFINE_integer('checkpoint_every', 3, 'Steps between checkpoints.')
flags.DEFINE_float('host_timeout', 5, 'The watchdog\'s timeout, seconds.')
flags.DEFINE_integer('die_at_step', None, 'This process dies at this step.')
flags.DEFINE_enum('die_by', 'SIGKILL', ['SIGKILL', 'SIGSTOP'], 'How it dies.')
flags.DEFINE_bool('die_while_saving', False, 'Die inside the checkpoint save of --die_at_step.')
flags.DEFINE_integer('fail_at_step', None, 'This step raises.')
flags.DEFINE_integer('slow_step', None, 'This step sleeps --slow_s.')
flags.DEFINE_float('slow_s', 0, 'Seconds that --slow_step sleeps.')
args = flags.FLAGS


def die(where):
  print(f'dying at {time.time()} ({where}, {args.die_by})', flush=True)
  os.kill(os.getpid(), getattr(signal, args.die_by))


def die_while_saving(step):
  """`die` inside `save_ckpt.save_checkpoint` of `step`, once this process's slices are written
  and before the barrier after which process 0 writes the index and renames."""
  barrier = save_ckpt._barrier

  def dying_barrier(name):
    if name.startswith('written') and f'checkpoint_{step}.tmp-' in name:
      die(f'saving checkpoint_{step}')
    barrier(name)
  save_ckpt._barrier = dying_barrier


def main(argv):
  del argv
  hosts.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                               host_timeout_s=args.host_timeout)
  if args.die_while_saving:
    die_while_saving(args.die_at_step)
  ckpt_dir = os.path.join(args.output_dir, 'checkpoints')

  def describe_resume():
    last = load_ckpt.latest_checkpoint(ckpt_dir) or '(none yet)'
    command = shlex.join([sys.executable, '-m', 'tools.host_loss_check', *sys.argv[1:]])
    return (f'Last complete checkpoint: {last}; to resume, run the same command in every '
            f'process: {command}')

  with hosts.HostWatchdog(args.host_timeout, describe_resume) as watchdog:
    train_loop(watchdog, ckpt_dir)
  print(f'done at step {args.train_steps}', flush=True)


def loss_fn(params, batch):
  """Softmax regression: a model small enough to compile in a moment."""
  logits = batch['x'] @ params['kernel'] + params['bias']  # [B, C]
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, batch['y'][:, None], axis=1))


def make_train_step(mesh, params):
  """jit((params, opt_state, batch) -> (params, opt_state)): the gradient over the global batch
  (an all-reduce across the processes, gloo), then one Adafactor update."""
  replicated = NamedSharding(mesh, P())
  param_shardings = jax.tree.map(lambda _: replicated, params)
  opt_shardings = partitioning.opt_state_shardings(param_shardings,
                                                   jax.tree.map(np.shape, params))

  def train_step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    return adafactor.update(grads, opt_state, params, 1e-2)
  step = jax.jit(train_step, in_shardings=(param_shardings, opt_shardings, None),
                 out_shardings=(param_shardings, opt_shardings), donate_argnums=(0, 1))
  return step, param_shardings, opt_shardings


def global_batch(step, mesh):
  """The global batch of a step (a function of the step only: resuming is exact), 6 rows
  (divisible by 1, 2 or 3 processes) on 'data'."""
  rng = np.random.default_rng(step)
  batch = {'x': rng.normal(size=(6, 16)).astype(np.float32), 'y': rng.integers(0, 4, 6)}
  return partitioning.global_batch(batch, NamedSharding(mesh, P('data')))


def train_loop(watchdog, ckpt_dir):
  """Resume from the last checkpoint (or start), train to --train_steps, checkpointing."""
  mesh = partitioning.make_mesh()
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(16, 4)).astype(np.float32) * 0.1,
            'bias': np.zeros(4, np.float32)}
  train_step, param_shardings, opt_shardings = make_train_step(mesh, params)
  restored = load_ckpt.restore_checkpoint(ckpt_dir, shardings=param_shardings,
                                          opt_shardings=opt_shardings)
  if restored is None:
    params = jax.device_put(params, param_shardings)
    opt_state = jax.jit(adafactor.init, out_shardings=opt_shardings)(params)
  else:
    params, opt_state = restored
  for step in range(int(jax.device_get(opt_state['step'])) + 1, args.train_steps + 1):
    watchdog.step = step
    if step == args.die_at_step and not args.die_while_saving:
      die(f'step {step}')
    if step == args.slow_step:
      time.sleep(args.slow_s)
    params, opt_state = train_step(params, opt_state, global_batch(step, mesh))
    if step == args.fail_at_step:
      print(f'failing at {time.time()}', flush=True)
      raise FloatingPointError(f'loss is nan at step {step} (planted)')
    if step % args.checkpoint_every == 0 or step == args.train_steps:
      save_ckpt.save_checkpoint(ckpt_dir, step, params, opt_state)


if __name__ == '__main__':
  app.run(main)
