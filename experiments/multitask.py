"""Multi-task EncT5 against one run a task, from random init: `python -m experiments.multitask`
from the repository's root.

  python -m experiments.multitask                          # rte,mrpc,stsb,cola; seeds 0 and 1
  python -m experiments.multitask --tasks=rte,mrpc --seeds=0 --steps=100
  python -m experiments.multitask --print_only             # the table of what has finished

Three rows on the same tasks, shape, vocabulary, batch, rate and seed (Raffel et al. 2020 §3.5):
  single       one `train.py --task=T` run a task, STEPS steps each.
  mixture      one `train.py --task=T1,T2,...` run (`mixtures`) of STEPS x tasks steps: the
               single-task runs' total. Examples-proportional mixing (--mixing_flags to change).
               A task's number is its best evaluation, as T5 reports each task at its own best
               checkpoint; 'mixture, one checkpoint' is every task at the evaluation whose
               average is best, the checkpoint the run keeps in best/.
  mixture+ft   each task fine-tuned STEPS more steps from the mixture's last checkpoint, its
               own head and task embedding carried over (T5's "multi-task pre-training +
               fine-tuning"); twice the single-task steps in all.
Every cell is one `python train.py ...` subprocess writing OUTPUT_DIR/seed_<s>/<row>/<task>/
(its output in train.log there, after the exact command); the same evaluations (every
--eval_every steps a task, the last step included) pick each cell's best. The vocabulary is the
one the mixture trains on all the tasks' texts, given to every other cell with --vocab.
Re-running the same command skips finished cells and resumes interrupted ones; a cell's wall
time (whole train.py runs: start-up, packing, compiling, evaluations) is kept in its wall_s.
"""
import os
import shlex
import signal
import sys
import time

from absl import app, flags
import numpy as np

from experiments import cells
import load_ckpt
import loop
import metrics
import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ('single', 'mixture', 'mixture, one checkpoint', 'mixture+ft')

flags.DEFINE_list('tasks', ['rte', 'mrpc', 'stsb', 'cola'], 'GLUE tasks of the mixture.')
flags.DEFINE_list('seeds', ['0', '1'], 'train.py --seed of every cell; a grid per seed.')
flags.DEFINE_integer('steps', 200, 'Steps of a single-task run (the mixture: this x tasks).')
flags.DEFINE_integer('eval_every', 50, 'Steps between evaluations of a single-task run (the '
                     'mixture: this x tasks, so every row is evaluated as often).')
flags.DEFINE_string('size', 'tiny', 'train.py --size of every cell (random init).')
flags.DEFINE_integer('batch_size', 32, 'Packed rows per batch.')
flags.DEFINE_integer('max_input_length', 128, 'Tokens per packed row.')
flags.DEFINE_float('learning_rate', 1e-2, 'Adafactor\'s constant rate (1e-2: the better of '
                   '1e-3 and 1e-2 from random init, experiments/table1.md).')
flags.DEFINE_string('mixing_flags', '', 'More flags of the mixture run, e.g. '
                    '"--mixing_temperature=2 --mixing_cap=4000".')
flags.DEFINE_string('glue_dir', os.path.relpath(os.path.join(tasks.SHARED, 'glue')), 'GLUE data: '
                    'the tasks\' dirs (RTE, MRPC, ...) with train.tsv and dev.tsv.')
flags.DEFINE_string('output_dir', 'runs/multitask', 'OUTPUT_DIR/seed_<s>/<row>/<task>/ a cell.')
flags.DEFINE_bool('print_only', False, 'Print the table of the finished cells; run nothing.')

FLAGS = flags.FLAGS


def cell_dir(seed, row, task):
  return os.path.join(FLAGS.output_dir, f'seed_{seed}', row, task)


def mixture_name():
  return '+'.join(FLAGS.tasks)


def vocab_path(seed):
  """The vocabulary the mixture run trains (`finetune.vocab_file`) and every cell uses."""
  return os.path.join(cell_dir(seed, 'mixture', mixture_name()), 'vocab', f'{mixture_name()}.model')


def cell_command(seed, row, task):
  """(argv, python first; steps) of one cell."""
  steps = FLAGS.steps * (len(FLAGS.tasks) if row == 'mixture' else 1)
  every = FLAGS.eval_every * (len(FLAGS.tasks) if row == 'mixture' else 1)
  argv = ['python', os.path.relpath(os.path.join(REPO, 'train.py')),
          f'--task={",".join(FLAGS.tasks) if row == "mixture" else task}',
          f'--data_dir={FLAGS.glue_dir}', f'--size={FLAGS.size}', f'--train_steps={steps}',
          f'--eval_every={every}', f'--log_every={min(50, every)}',
          f'--batch_size={FLAGS.batch_size}', f'--max_input_length={FLAGS.max_input_length}',
          f'--learning_rate={FLAGS.learning_rate:g}', f'--seed={seed}']
  if row == 'mixture':
    argv += shlex.split(FLAGS.mixing_flags)
  else:
    argv.append(f'--vocab={vocab_path(seed)}')
  if row == 'mixture+ft':
    argv.append(f'--checkpoint={last_checkpoint(seed)}')
  return argv + [f'--output_dir={cell_dir(seed, row, task)}'], steps


def last_checkpoint(seed):
  return load_ckpt.latest_checkpoint(
      os.path.join(cell_dir(seed, 'mixture', mixture_name()), 'checkpoints'))


def finished(directory, steps):
  """metrics.jsonl's evaluations if the cell reached its last step, else None."""
  history = loop.read_metrics(directory)
  return history if history and max(r['step'] for r in history) >= steps else None


def run_cell(seed, row, task, index, total):
  """Runs (or resumes, or skips) one cell; -> True unless train.py failed."""
  directory = cell_dir(seed, row, task)
  argv, steps = cell_command(seed, row, task)
  label = f'[{index}/{total}] seed {seed} {row}/{task}'
  if finished(directory, steps):
    print(f'{label}: done earlier', flush=True)
    return True
  print(f'{label}: {steps} steps -> {directory}/train.log', flush=True)
  wall_file = os.path.join(directory, 'wall_s')
  start, returncode = time.time(), None
  try:
    returncode = cells.run_logged(argv, os.path.join(directory, 'train.log'),
                                  f'multitask cell {row}/{task}:\n{shlex.join(argv)}')
  finally:  # also when interrupted: the time so far counts towards the cell's
    wall = read_wall(directory) + time.time() - start
    with open(wall_file, 'w') as f:
      f.write(f'{wall:.1f}\n')
  if not finished(directory, steps):
    print(f'{label}: FAILED (exit {returncode}); see {directory}/train.log', flush=True)
    return False
  print(f'{label}: done in {cells.duration(wall)}', flush=True)
  return True


def read_wall(directory):
  path = os.path.join(directory, 'wall_s')
  if not os.path.isfile(path):
    return 0.0
  with open(path) as f:
    return float(f.read())


# ----------------------------------------------------------------------------------------------
# The table: per row and task the score of the best evaluation; the mean over the seeds.
# ----------------------------------------------------------------------------------------------

def row_scores(seed, row):
  """{task: (its metrics, its score)} of one row of one seed's grid, for finished cells."""
  if row.startswith('mixture') and row != 'mixture+ft':
    name = mixture_name()
    history = finished(cell_dir(seed, 'mixture', name), FLAGS.steps * len(FLAGS.tasks))
    if not history:
      return {}
    if row == 'mixture, one checkpoint':
      history = [max(history, key=lambda r: r['score'])]
    return {task: best(tasks.get_task(task), history) for task in FLAGS.tasks}
  found = {}
  for task in FLAGS.tasks:
    history = finished(cell_dir(seed, row, task), FLAGS.steps)
    if history:
      found[task] = best(tasks.get_task(task), history)
  return found


def best(task, history):
  """The task's metrics and score at its best evaluation in `history`."""
  scores = max((r['scores'] for r in history), key=lambda s: metrics.task_score(task, s))
  return scores, metrics.task_score(task, scores)


def row_wall(seed, row):
  if row == 'mixture, one checkpoint':
    return None
  names = [mixture_name()] if row == 'mixture' else FLAGS.tasks
  return sum(read_wall(cell_dir(seed, row, name)) for name in names)


def print_table():
  seeds = FLAGS.seeds
  header = ['Row'] + [tasks.get_task(t).name.upper() for t in FLAGS.tasks] + ['Avg'] + [
      f'Avg, seed {s}' for s in seeds] + ['Wall time (seed 0)']
  print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
  for row in ROWS:
    by_seed = [row_scores(seed, row) for seed in seeds]
    columns = []
    for name in FLAGS.tasks:
      task = tasks.get_task(name)
      got = [found[name][0] for found in by_seed if name in found]
      columns.append('/'.join(f'{np.mean([s[key] for s in got]):.1f}'
                              for key in task.metric_keys) if len(got) == len(seeds) else '-')
    averages = [np.mean([found[t][1] for t in FLAGS.tasks]) if len(found) == len(FLAGS.tasks)
                else None for found in by_seed]
    mean = f'{np.mean(averages):.1f}' if None not in averages else '-'
    wall = row_wall(seeds[0], row)
    print('| ' + ' | '.join([row, *columns, mean] + [
        '-' if a is None else f'{a:.1f}' for a in averages] + [
        cells.duration(wall) if wall else '-']) + ' |')
  print(f'\nDev sets, the mean over seeds {",".join(seeds)}; CoLA Matthews corr., MRPC '
        'F1/accuracy, STS-B Pearson/Spearman, the rest accuracy. Avg: the mean of the tasks\' '
        'scores (a task\'s metrics averaged first).', flush=True)


def _terminated(signum, frame):
  raise SystemExit(128 + signum)  # unwinds run_cell: its time is kept, train.py ends


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  unknown = [t for t in FLAGS.tasks if t not in tasks.TASKS]
  if unknown or len(FLAGS.tasks) < 2:
    raise app.UsageError(f'--tasks: two or more of {", ".join(tasks.TASKS)}')
  if not FLAGS.print_only:
    signal.signal(signal.SIGTERM, _terminated)
    grid = [(seed, row, task) for seed in FLAGS.seeds for row, task in
            [('mixture', mixture_name())] + [(row, task) for row in ('single', 'mixture+ft')
                                             for task in FLAGS.tasks]]
    failed = []
    for i, (seed, row, task) in enumerate(grid, 1):
      if f'seed {seed} mixture/{mixture_name()}' in failed:  # its vocabulary and checkpoint
        print(f'[{i}/{len(grid)}] seed {seed} {row}/{task}: skipped (no mixture)', flush=True)
      elif not run_cell(seed, row, task, i, len(grid)):
        failed.append(f'seed {seed} {row}/{task}')
    if failed:
      print(f'FAILED cells (see their train.log): {", ".join(failed)}', flush=True)
  print_table()
  if not FLAGS.print_only and failed:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
