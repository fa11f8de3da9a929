"""The paper's Table 1 in miniature: T5, 1decT5 and EncT5 fine-tuned from one T5.1.1 checkpoint,
and EncT5 from random init, on CoLA, SST-2, MRPC, STS-B and RTE: `python -m experiments.table1`
from the repository's root.

  python -m experiments.table1 --checkpoint=runs/pretrain/checkpoints/checkpoint_N
  python -m experiments.table1 --checkpoint=... --rows=EncT5,EncT5-rand --tasks=rte,mrpc
  python -m experiments.table1 --checkpoint=... --print_only     # the results so far
  python -m experiments.table1 --print_only --average_over=DIR0,DIR1,DIR2   # the mean of grids
                                                                  # run with --seed=0, 1, 2

Every cell is one `python train.py ...` subprocess writing OUTPUT_DIR/<row>/<task>/ (its log in
train.log there, starting with the exact command). All rows of a task get the same steps, batch,
input length, learning rate (paper §4.1: Adafactor, constant 1e-3), seed and eval cadence; a
cell's number is its best dev evaluation (the paper picks the best checkpoint on validation).
Re-running the same command skips finished cells (metrics.jsonl reached the cell's last step)
and resumes interrupted ones (train.py resumes from OUTPUT_DIR/<row>/<task>/checkpoints).
Results go to OUTPUT_DIR/results.json as each cell finishes.

Rows (paper Table 1, scaled down):
  T5          --model=t5 --checkpoint=CKPT      the full encoder-decoder, labels as text
  1decT5      --model=1dect5 --checkpoint=CKPT  the first decoder layer only (§4.3)
  EncT5       --model=enct5 --checkpoint=CKPT   the encoder + pooling block + projection
  EncT5-rand  --model=enct5, random init of CKPT's shape and vocabulary (EncT5.1.1-base-rand)
Metrics as Table 1: CoLA Matthews corr., SST-2 accuracy, MRPC F1/accuracy, STS-B
Pearson/Spearman, RTE accuracy; Avg is the mean of the tasks' scores (metrics.task_score: a task's
metrics averaged first, as T5's GLUE average; here over the 5 tasks, not GLUE's 8). Wall time
per row is the sum of its cells' wall times (whole train.py runs: start-up, packing, training,
evaluations and checkpoints).
"""
import contextlib
import datetime
import fcntl
import glob
import json
import os
import re
import shlex
import signal
import sys
import time

from absl import app, flags

from experiments import cells
import enct5
import fileio
import finetune
import tasks
import vocabularies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Row name -> (train.py --model, fine-tuned from --checkpoint?), in Table 1's order.
ROWS = {'T5': ('t5', True), '1decT5': ('1dect5', True), 'EncT5': ('enct5', True),
        'EncT5-rand': ('enct5', False)}
TASKS = ('cola', 'sst2', 'mrpc', 'stsb', 'rte')  # Table 1's columns we have data for
SHAPE_FLAGS = finetune.SHAPE_FIELDS

flags.DEFINE_string('checkpoint', None, 'The T5.1.1 checkpoint in T5X format (a '
                    'checkpoint_<step> directory) that T5, 1decT5 and EncT5 fine-tune from, and '
                    'whose shape EncT5-rand copies. Required.')
flags.DEFINE_string('vocab', None, 'SentencePiece model of the checkpoint (default '
                    'CHECKPOINT/sentencepiece.model); every row uses it.')
flags.DEFINE_string('glue_dir', os.path.relpath(os.path.join(tasks.SHARED, 'glue')), 'GLUE data: '
                    'task dirs CoLA, SST-2, MRPC, STS-B, RTE with train.tsv and dev.tsv.')
flags.DEFINE_string('output_dir', 'runs/table1', 'OUTPUT_DIR/<row>/<task>/ per cell, and '
                    'OUTPUT_DIR/results.json.')
flags.DEFINE_list('rows', list(ROWS), f'Rows to run: any of {", ".join(ROWS)} (the table '
                  'always shows all, missing cells as -).')
flags.DEFINE_list('tasks', list(TASKS), f'Tasks (columns) to run: any of {", ".join(TASKS)}.')
flags.DEFINE_integer('train_steps', 1000, 'Fine-tuning steps per cell (same for every row).')
flags.DEFINE_string('task_steps', '', 'Per-task steps instead of --train_steps, e.g. '
                    'sst2:2000,rte:500.')
flags.DEFINE_integer('eval_every', 200, 'Steps between dev evaluations (and checkpoints); the '
                     'last step is always evaluated.')
flags.DEFINE_integer('batch_size', 32, 'Packed rows per batch.')
flags.DEFINE_integer('max_input_length', 128, 'Tokens per packed row.')
flags.DEFINE_float('learning_rate', 1e-3, 'Adafactor\'s constant learning rate (paper §4.1).')
flags.DEFINE_integer('seed', 0, 'train.py --seed of every cell.')
flags.DEFINE_string('train_flags', '', 'More train.py flags for every cell, e.g. '
                    '"--max_target_length=32 --dtype=bfloat16".')
flags.DEFINE_bool('print_only', False, 'Print the table of OUTPUT_DIR/results.json; run nothing.')
flags.DEFINE_list('average_over', [], 'With --print_only: the OUTPUT_DIRs of grids that differ '
                  'only in --seed. Prints the table of their mean scores (a cell where every '
                  'grid has it) and each row\'s average in each grid.')

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------------------------
# results.json: {"cells": {"<row>/<task>": record}}; read-modify-write under a lock, atomically.
# ----------------------------------------------------------------------------------------------

def _results_path(output_dir=None):
  return os.path.join(output_dir or FLAGS.output_dir, 'results.json')


def read_results(output_dir=None):
  path = _results_path(output_dir)
  if not os.path.isfile(path):
    return {'cells': {}}
  with open(path) as f:
    return json.load(f)


@contextlib.contextmanager
def _locked():
  """One writer at a time (two pieces of the grid may run side by side)."""
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, '.results.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def update_cell(key, record):
  with _locked():
    results = read_results()
    results['cells'][key] = record
    fileio.write_atomically(_results_path(),
                            (json.dumps(results, indent=1, sort_keys=True) + '\n').encode())


# ----------------------------------------------------------------------------------------------
# One cell.
# ----------------------------------------------------------------------------------------------

def task_steps():
  steps = {task: FLAGS.train_steps for task in TASKS}
  for item in filter(None, (s.strip() for s in FLAGS.task_steps.split(','))):
    task, _, value = item.partition(':')
    if task not in TASKS or not value.isdigit() or int(value) < 1:
      raise app.UsageError(f'--task_steps: {item!r} is not TASK:STEPS with TASK one of '
                           f'{", ".join(TASKS)}')
    steps[task] = int(value)
  return steps


def cell_dir(row, task):
  return os.path.join(FLAGS.output_dir, row, task)


def cell_command(row, task, steps, shape):
  """The train.py command of a cell (argv, python first). `shape`: the checkpoint's shape."""
  model, pretrained = ROWS[row]
  script = os.path.relpath(os.path.join(REPO, 'train.py'))
  argv = ['python', script, f'--model={model}', f'--task={task}',
          f'--data_dir={os.path.join(FLAGS.glue_dir, tasks.TASKS[task].dir_name)}',
          f'--vocab={FLAGS.vocab}']
  if pretrained:
    argv.append(f'--checkpoint={FLAGS.checkpoint}')
  else:
    # Random init of exactly the checkpoint's shape (train.py sizes the embedding from the
    # vocabulary: its pieces rounded up to a multiple of 128; see check_rand_vocab).
    argv += [f'--{name}={shape[name]}' for name in SHAPE_FLAGS]
  argv += [f'--train_steps={steps}', f'--eval_every={min(FLAGS.eval_every, steps)}',
           f'--log_every={min(50, steps)}', f'--batch_size={FLAGS.batch_size}',
           f'--max_input_length={FLAGS.max_input_length}',
           f'--learning_rate={FLAGS.learning_rate:g}', f'--seed={FLAGS.seed}',
           *shlex.split(FLAGS.train_flags), f'--output_dir={cell_dir(row, task)}']
  return argv


def read_metrics(directory):
  path = os.path.join(directory, 'metrics.jsonl')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def cell_result(directory, steps):
  """The best dev evaluation up to `steps` if the cell reached its last step, else None."""
  history = read_metrics(directory)
  if not history or max(r['step'] for r in history) < steps:
    return None
  best = max((r for r in history if r['step'] <= steps), key=lambda r: r['score'])
  return dict(score=best['score'], scores=best['scores'], best_step=best['step'],
              evals=[[r['step'], round(r['score'], 2)] for r in history if r['step'] <= steps])


def logged_params(directory):
  """The parameter count train.py logs ('...: 1,234 parameters; mesh ...'), last run's."""
  path = os.path.join(directory, 'train.log')
  if not os.path.isfile(path):
    return None
  with open(path, errors='replace') as f:
    found = re.findall(r'([\d,]+) parameters', f.read())
  return int(found[-1].replace(',', '')) if found else None


def counted_params(row, task, shape):
  """The parameter count from the model's shapes, if train.py's log did not give it."""
  try:
    model, pretrained = ROWS[row]
    if not pretrained:  # train.py's from-scratch embedding; EncT5 keeps one decoder layer
      pieces = vocabularies.load_vocab(FLAGS.vocab).GetPieceSize()
      shape = dict(shape, vocab_size=enct5.padded_vocab_size(pieces), num_decoder_layers=1)
    cfg = enct5.get_config('small', num_classes=tasks.TASKS[task].num_classes, **shape)
    return enct5.count_params(cfg, model)
  except Exception as e:  # noqa: BLE001  (a count is not worth failing a finished cell for)
    print(f'  (no parameter count for {row}: {e!r})', flush=True)
    return None


def run_cell(row, task, steps, shape, index, total):
  """Runs (or resumes, or skips) one cell; returns True unless train.py failed."""
  key, directory = f'{row}/{task}', cell_dir(row, task)
  argv = cell_command(row, task, steps, shape)
  command = shlex.join(argv)
  previous = read_results()['cells'].get(key, {})
  done = cell_result(directory, steps)
  if previous.get('command') not in (None, command):
    print(f'[{index}/{total}] {key}: WARNING: flags differ from its earlier run (delete '
          f'{directory} to redo it)\n  was: {previous["command"]}\n  now: {command}',
          flush=True)
  if done and previous.get('status') == 'done' and previous.get('steps') == steps:
    print(f'[{index}/{total}] {key}: done earlier: {done["score"]:.2f} '
          f'({cells.duration(previous["wall_s"]) if previous.get("wall_s") is not None else "?"})',
          flush=True)
    return True
  wall = previous.get('wall_s') or 0.0
  if done is None:
    resuming = bool(glob.glob(os.path.join(directory, 'checkpoints', 'checkpoint_*')))
    print(f'[{index}/{total}] {key}: {"resuming" if resuming else "start"} '
          f'({steps} steps) -> {directory}/train.log', flush=True)
    log_path = os.path.join(directory, 'train.log')
    start = time.time()
    returncode = None
    try:
      returncode = cells.run_logged(argv, log_path, f'table1 cell {key}:\n{command}')
    finally:
      # Also when interrupted: the time spent so far counts towards the cell's wall time.
      wall += time.time() - start
      if returncode != 0:
        update_cell(key, dict(row=row, task=task, status='incomplete', steps=steps,
                              wall_s=round(wall, 1), command=command))
    done = cell_result(directory, steps)
    if done is None:
      with open(log_path, errors='replace') as f:
        tail = ''.join(f.readlines()[-15:])
      print(f'[{index}/{total}] {key}: FAILED (exit {returncode}) after {cells.duration(wall)}; '
            f'{log_path} ends:\n{tail}', flush=True)
      return False
  else:
    print(f'[{index}/{total}] {key}: finished earlier (metrics.jsonl); recording it', flush=True)
  record = dict(row=row, task=task, status='done', steps=steps, wall_s=round(wall, 1),
                params=logged_params(directory) or counted_params(row, task, shape),
                command=command,
                finished=datetime.datetime.now().isoformat(timespec='seconds'), **done)
  update_cell(key, record)
  print(f'[{index}/{total}] {key}: done: {format_cell(task, record)} (score {done["score"]:.2f}, '
        f'best at step {done["best_step"]} of {steps}), {cells.duration(wall)}', flush=True)
  return True


# ----------------------------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------------------------

def format_cell(task, record):
  """Table 1's number(s) of a task: 'F1/accuracy' for MRPC, 'Pearson/Spearman' for STS-B."""
  scores = record['scores']
  return '/'.join(f'{scores[key]:.1f}' for key in tasks.TASKS[task].metric_keys)


def _params(count):
  if count is None:
    return '-'
  return f'{count / 1e6:.1f}M' if count >= 1e6 else f'{count / 1e3:.0f}K'


def row_average(results, row, task_names):
  """The row's Avg: the mean of its task scores, or None unless every task is done."""
  records = [results['cells'].get(f'{row}/{task}') for task in task_names]
  if not all(r and r.get('status') == 'done' for r in records):
    return None
  return sum(r['score'] for r in records) / len(records)


def table(results, rows, task_names):
  """Table 1 as markdown: rows x (params, tasks, average, wall time); missing cells '-'."""
  header = (['Model', 'Params'] + [tasks.TASKS[t].dir_name for t in task_names]
            + ['Avg', 'Wall time'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    records = [results['cells'].get(f'{row}/{task}') for task in task_names]
    records = [r if r and r.get('status') == 'done' else None for r in records]
    done = [r for r in records if r]
    # The count of a 2-class head (the most common one); STS-B's 1-output head differs by a few.
    counts = [r['params'] for r in done if r.get('params')]
    params = max(set(counts), key=lambda c: (counts.count(c), c)) if counts else None
    average = row_average(results, row, task_names)
    average = '-' if average is None else f'{average:.1f}'
    walls = [r['wall_s'] for r in done if r.get('wall_s') is not None]
    complete = len(walls) == len(task_names)
    wall = cells.duration(sum(walls)) + ('' if complete else '*') if walls else '-'
    columns = [format_cell(t, r) if r else '-' for t, r in zip(task_names, records)]
    lines.append('| ' + ' | '.join([row, _params(params), *columns, average, wall]) + ' |')
  return '\n'.join(lines)


def print_table(results, source, rows=tuple(ROWS), task_names=TASKS):
  """The whole grid (all rows and tasks, whatever --rows and --tasks ran)."""
  print(f'\nTable 1 in miniature ({source}):\n')
  print(table(results, rows, task_names))
  print('\nCoLA: Matthews corr.; SST-2, RTE: accuracy; MRPC: F1/accuracy; STS-B: '
        'Pearson/Spearman (dev, best evaluation). Avg: mean of the task scores (a task\'s '
        'metrics averaged first) over the 5 tasks. Wall time: sum of the row\'s cells '
        '(* = some cells missing).', flush=True)
  settings, steps = {}, {}
  for row in rows:
    for task in task_names:
      r = results['cells'].get(f'{row}/{task}')
      if r and r.get('status') == 'done':
        steps.setdefault(task, set()).add(r['steps'])
        settings.setdefault(task, {})[row] = shared_flags(r['command'])
  if steps:
    print('Steps: ' + ', '.join(f'{t} {"/".join(map(str, sorted(s)))}'
                                for t, s in steps.items()), flush=True)
  for task, by_row in settings.items():
    if len(set(by_row.values())) > 1:
      print(f'WARNING: the rows of {task} ran with different training flags:\n' + '\n'.join(
          f'  {row}: {" ".join(flags_)}' for row, flags_ in by_row.items()), flush=True)


def _mean(values):
  return sum(values) / len(values)


def mean_results(grids):
  """results.json's cells averaged over grids ({OUTPUT_DIR: results}) that differ only in
  --seed: each cell where every grid has it, with its mean score, metrics and wall time."""
  output_dirs = list(grids)
  cells = {}
  for key in grids[output_dirs[0]]['cells']:
    records = [results['cells'].get(key) for results in grids.values()]
    if not all(r and r.get('status') == 'done' for r in records):
      continue
    commands = {d: tuple(a for a in shlex.split(r['command'])
                         if not a.startswith(('--seed=', '--output_dir=')))
                for d, r in zip(output_dirs, records)}
    if len(set(commands.values())) > 1:
      raise app.UsageError(f'--average_over: {key} differs in more than --seed:\n' + '\n'.join(
          f'  {d}: {" ".join(argv)}' for d, argv in commands.items()))
    walls = [r.get('wall_s') for r in records]
    cells[key] = dict(
        records[0], score=_mean([r['score'] for r in records]),
        scores={m: _mean([r['scores'][m] for r in records]) for m in records[0]['scores']},
        wall_s=None if None in walls else _mean(walls))
  return {'cells': cells}


def print_mean_table(output_dirs, rows=tuple(ROWS), task_names=TASKS):
  """The table of the grids' mean scores, then each row's Avg in each grid."""
  grids = {d: read_results(d) for d in output_dirs}
  print_table(mean_results(grids), f'the mean of {len(output_dirs)} grids', rows, task_names)
  print('Wall time: the mean of the grids\'. Avg in each grid:', flush=True)
  for row in rows:
    averages = [row_average(results, row, task_names) for results in grids.values()]
    if any(a is not None for a in averages):
      print(f'  {row}: ' + ', '.join(f'{d} {"-" if a is None else f"{a:.1f}"}'
                                      for d, a in zip(output_dirs, averages)), flush=True)


def shared_flags(command):
  """The flags of a cell's command that every row of a task must share (not the model, its
  checkpoint or shape, or the output dir)."""
  own = ('--model=', '--checkpoint=', '--output_dir=') + tuple(f'--{n}=' for n in SHAPE_FLAGS)
  return tuple(a for a in shlex.split(command)[2:] if not a.startswith(own))


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def check_rand_vocab(shape):
  """EncT5-rand gets train.py's from-scratch embedding: the vocabulary's pieces rounded up to a
  multiple of 128. Warns when that differs from the checkpoint's embedding rows."""
  vocab = vocabularies.load_vocab(FLAGS.vocab)
  rows = enct5.padded_vocab_size(vocab.GetPieceSize())
  if rows != shape['vocab_size']:
    print(f'WARNING: EncT5-rand will embed {rows} rows ({vocab.GetPieceSize()} pieces of '
          f'{FLAGS.vocab}, rounded up to 128) but the checkpoint embeds {shape["vocab_size"]}: '
          f'its parameter count differs by {abs(rows - shape["vocab_size"]) * shape["d_model"]:,} '
          '(rows no GLUE text uses); train.py has no flag for the embedding size.', flush=True)


def _terminated(signum, frame):
  raise SystemExit(128 + signum)  # unwinds run_cell: the cell's time is recorded, train.py ends


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  rows = [r for r in ROWS if r in FLAGS.rows]
  task_names = [t for t in TASKS if t in FLAGS.tasks]
  unknown = sorted(set(FLAGS.rows) - set(ROWS)) + sorted(set(FLAGS.tasks) - set(TASKS))
  if unknown:
    raise app.UsageError(f'unknown rows or tasks {unknown}; rows: {", ".join(ROWS)}; tasks: '
                         f'{", ".join(TASKS)}')
  if FLAGS.average_over and not FLAGS.print_only:
    raise app.UsageError('--average_over goes with --print_only (run each grid on its own)')
  if FLAGS.print_only:
    missing = [d for d in FLAGS.average_over if not os.path.isfile(_results_path(d))]
    if missing:
      raise app.UsageError(f'--average_over: no results.json in {", ".join(missing)}')
    if FLAGS.average_over:
      print_mean_table(FLAGS.average_over)
    else:
      print_table(read_results(), _results_path())
    return
  if not FLAGS.checkpoint:
    raise app.UsageError('--checkpoint is required (a T5.1.1 checkpoint_<step> directory)')
  if FLAGS.vocab is None:
    FLAGS.vocab = os.path.join(FLAGS.checkpoint, 'sentencepiece.model')
  for path, what in ((FLAGS.checkpoint, '--checkpoint'), (FLAGS.vocab, '--vocab')):
    if not os.path.exists(path):
      raise app.UsageError(f'{what} {path} not found')
  for task in task_names:
    directory = os.path.join(FLAGS.glue_dir, tasks.TASKS[task].dir_name)
    if not os.path.isfile(os.path.join(directory, 'train.tsv')):
      raise app.UsageError(f'no {directory}/train.tsv (--glue_dir={FLAGS.glue_dir})')
  steps = task_steps()
  signal.signal(signal.SIGTERM, _terminated)
  import load_ckpt  # jax and tensorstore: only when cells run
  shape = load_ckpt.config_from_checkpoint(FLAGS.checkpoint)
  print(f'checkpoint {FLAGS.checkpoint}: ' + ', '.join(f'{k} {v}' for k, v in shape.items()),
        flush=True)
  if 'EncT5-rand' in rows:
    check_rand_vocab(shape)
  cells = [(row, task) for task in task_names for row in rows]  # a task's rows side by side
  failed = []
  for i, (row, task) in enumerate(cells, 1):
    if not run_cell(row, task, steps[task], shape, i, len(cells)):
      failed.append(f'{row}/{task}')
  print_table(read_results(), _results_path())
  if failed:
    print(f'\nFAILED cells (see their train.log): {", ".join(failed)}', flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
