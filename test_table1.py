"""Tests of experiments/table1.py, end to end in a tiny setting: a tiny T5.1.1 checkpoint written by
train.py, then two rows of the grid (EncT5 from it, EncT5-rand of its shape) on 64 RTE examples, the
table, and a re-run that redoes nothing."""
import json
import os
import subprocess
import sys

import pytest

import tasks
import testutil

RTE = os.path.join(testutil.SHARED, 'glue', 'RTE')
TINY = ['--max_input_length=64', '--batch_size=4', '--max_target_length=8']


def _run(argv, cwd):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_table1_grid_and_resume(tmp_path):
  if not os.path.isfile(os.path.join(RTE, 'train.tsv')):
    pytest.skip(f'GLUE RTE data not found at {RTE} (set ENCT5_SHARED)')
  glue_dir = tmp_path / 'glue'
  (glue_dir / 'RTE').mkdir(parents=True)
  for name, lines in (('train.tsv', 65), ('dev.tsv', 33)):  # header + 64 / 32 examples
    with open(os.path.join(RTE, name)) as f:
      (glue_dir / 'RTE' / name).write_text(''.join(f.readlines()[:lines]))
  # A tiny T5.1.1 checkpoint (the whole encoder-decoder tree, Adafactor state) and its vocab.
  pre = tmp_path / 'pre'
  _run(['train.py', '--model=t5', '--task=rte', f'--data_dir={glue_dir}/RTE', '--train_steps=2',
        '--eval_every=2', '--vocab_size=300', '--d_model=32', '--d_ff=64', '--num_heads=2',
        '--head_dim=16', '--num_layers=2', f'--output_dir={pre}', *TINY], testutil.REPO)
  ckpt = pre / 'checkpoints' / 'checkpoint_2'
  assert ckpt.is_dir()

  out = tmp_path / 'table1'
  command = ['-m', 'experiments.table1', f'--checkpoint={ckpt}', f'--vocab={pre}/vocab/rte.model',
             f'--glue_dir={glue_dir}', f'--output_dir={out}', '--rows=EncT5,EncT5-rand',
             '--tasks=rte', '--train_steps=2', '--eval_every=1', '--batch_size=4',
             '--max_input_length=64', '--train_flags=--max_target_length=8']
  first = _run(command, testutil.REPO)
  assert first.count(': start (2 steps)') == 2, first
  results = json.loads((out / 'results.json').read_text())['cells']
  assert sorted(results) == ['EncT5-rand/rte', 'EncT5/rte']
  for key, record in results.items():
    assert record['status'] == 'done' and record['steps'] == 2 and record['wall_s'] > 0
    # The cell's number is its best dev evaluation (two evaluations: steps 1 and 2).
    with open(out / key / 'metrics.jsonl') as f:
      history = [json.loads(line) for line in f]
    assert [r['step'] for r in history] == [1, 2]
    assert record['score'] == max(r['score'] for r in history)
    log = (out / key / 'train.log').read_text()
    assert log.splitlines()[1] == record['command']  # the exact command heads the log
    assert record['command'].startswith('python train.py --model=enct5 --task=rte')
  assert f'--checkpoint={ckpt}' in results['EncT5/rte']['command']
  rand = results['EncT5-rand/rte']['command']
  assert '--checkpoint' not in rand
  assert all(f in rand for f in ('--d_model=32', '--num_heads=2', '--head_dim=16', '--d_ff=64',
                                 '--num_layers=2'))
  # Same shape and vocabulary: the same parameter count, random init or not.
  assert results['EncT5/rte']['params'] == results['EncT5-rand/rte']['params'] > 0

  # The table: all four rows, Table 1's five columns; cells not run are '-'.
  lines = [l for l in first.splitlines() if l.startswith('|')]
  assert lines[0] == '| Model | Params | CoLA | SST-2 | MRPC | STS-B | RTE | Avg | Wall time |'
  table = {l.split(' | ')[0][2:]: l.strip('| ').split(' | ') for l in lines[2:]}
  assert list(table) == ['T5', '1decT5', 'EncT5', 'EncT5-rand']
  assert table['T5'][1:] == ['-'] * 8
  for row in ('EncT5', 'EncT5-rand'):
    assert table[row][6] == f'{results[f"{row}/rte"]["score"]:.1f}'
    assert table[row][2:6] == ['-'] * 4 and table[row][7] == '-'  # Avg needs all five tasks

  # Re-running the same command redoes nothing; --print_only prints the same table.
  logs = {key: (out / key / 'train.log').read_text() for key in results}
  second = _run(command, testutil.REPO)
  assert second.count('done earlier') == 2 and 'start' not in second, second
  assert {key: (out / key / 'train.log').read_text() for key in results} == logs
  assert json.loads((out / 'results.json').read_text())['cells'] == results
  printed = _run(['-m', 'experiments.table1', f'--output_dir={out}', '--print_only'], testutil.REPO)
  assert [l for l in printed.splitlines() if l.startswith('|')] == lines


def _grid(directory, seed, scores, learning_rate='0.01'):
  """A results.json as table1.py writes it: EncT5 and EncT5-rand on the five tasks, each cell's
  metrics as given; `scores[row][task]` is a tuple of the task's metrics, or None (not run)."""
  cells = {}
  for row, by_task in scores.items():
    for task, metrics in by_task.items():
      if metrics is None:
        continue
      cells[f'{row}/{task}'] = dict(
          row=row, task=task, status='done', steps=600, wall_s=60.0 * (seed + 1), params=2400000,
          score=sum(metrics) / len(metrics),
          scores=dict(zip(tasks.TASKS[task].metric_keys, metrics)),
          command=f'python train.py --model=enct5 --task={task} --learning_rate={learning_rate} '
                  f'--seed={seed} --output_dir={directory}/{row}/{task}')
  directory.mkdir()
  (directory / 'results.json').write_text(json.dumps({'cells': cells}))


def test_table1_average_over_seeds(tmp_path):
  """--print_only --average_over: the mean of grids that differ only in --seed (hand-worked
  means), '-' where a grid lacks a cell, and an error when they differ in more."""
  first = {'EncT5': dict(cola=(10.0,), sst2=(80.0,), mrpc=(82.0, 70.0), stsb=(20.0, 18.0),
                         rte=(54.0,)),
           'EncT5-rand': dict(cola=(0.0,), sst2=(70.0,), mrpc=(80.0, 68.0), stsb=(10.0, 12.0),
                              rte=(50.0,))}
  second = {'EncT5': dict(cola=(4.0,), sst2=(82.0,), mrpc=(84.0, 74.0), stsb=(30.0, 26.0),
                          rte=(58.0,)),
            'EncT5-rand': dict(cola=(6.0,), sst2=(74.0,), mrpc=(80.0, 68.0), stsb=(14.0, 16.0),
                               rte=None)}
  _grid(tmp_path / 'seed0', 0, first)
  _grid(tmp_path / 'seed1', 1, second)
  printed = _run(['-m', 'experiments.table1', '--print_only',
                  f'--average_over={tmp_path}/seed0,{tmp_path}/seed1'], testutil.REPO)
  table = {l.split(' | ')[0][2:]: l.strip('| ').split(' | ')
           for l in printed.splitlines() if l.startswith('| ') and not l.startswith('| Model')}
  # EncT5: the tasks' means 7.0, 81.0, 83.0/72.0 (77.5), 25.0/22.0 (23.5), 56.0; Avg 49.0.
  assert table['EncT5'][1:] == ['2.4M', '7.0', '81.0', '83.0/72.0', '25.0/22.0', '56.0', '49.0',
                                '7m30s']
  # EncT5-rand: RTE is missing from the second grid, so it and the Avg are '-'.
  assert table['EncT5-rand'][2:8] == ['3.0', '72.0', '80.0/68.0', '12.0/14.0', '-', '-']
  # Each grid's own Avg: EncT5 (10 + 80 + 76 + 19 + 54) / 5 = 47.8, (4 + 82 + 79 + 28 + 58) / 5.
  assert f'EncT5: {tmp_path}/seed0 47.8, {tmp_path}/seed1 50.2' in printed
  assert f'EncT5-rand: {tmp_path}/seed0 ' in printed and f'{tmp_path}/seed1 -' in printed

  _grid(tmp_path / 'other_rate', 2, first, learning_rate='0.001')
  out = subprocess.run([sys.executable, '-m', 'experiments.table1', '--print_only',
                        f'--average_over={tmp_path}/seed0,{tmp_path}/other_rate'],
                       cwd=testutil.REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'differs in more than --seed' in out.stderr and '--learning_rate=0.001' in out.stderr
