"""tools/table1.py end to end in a tiny setting: a tiny T5.1.1 checkpoint written by train.py,
then two rows of the grid (EncT5 from it, EncT5-rand of its shape) on 64 RTE examples, the
table, and a re-run that redoes nothing."""
import json
import os
import subprocess
import sys

import pytest

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
  command = ['tools/table1.py', f'--checkpoint={ckpt}', f'--vocab={pre}/vocab/rte.model',
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
  printed = _run(['tools/table1.py', f'--output_dir={out}', '--print_only'], testutil.REPO)
  assert [l for l in printed.splitlines() if l.startswith('|')] == lines
