"""Tests of experiments/multitask.py's table: each task's best evaluation, the mixture's one
best checkpoint, and the mean over seeds, from metrics.jsonl files written by hand (the
train.py cells themselves are tested in test_mixtures.py)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _write_metrics(directory, records):
  os.makedirs(directory)
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    for step, rte, stsb in records:
      scores = {'rte/accuracy': rte, 'stsb/pearson_corrcoef': stsb,
                'stsb/spearman_corrcoef': stsb - 2}
      # the record's score: the mean of the tasks' scores, as mixtures.mixture_score
      f.write(json.dumps(dict(step=step, scores=scores, score=(rte + stsb - 1) / 2)) + '\n')


def test_table_takes_each_tasks_best_and_the_mixtures_best_checkpoint(tmp_path):
  for seed, shift in ((0, 0.0), (1, 2.0)):
    grid = tmp_path / f'seed_{seed}'
    # The mixture: rte is best at step 10, stsb at step 20; the best average is step 20, not
    # the last.
    _write_metrics(grid / 'mixture' / 'rte+stsb',
                   [(10, 60.0 + shift, 10.0), (20, 50.0, 40.0), (30, 45.0, 20.0)])
    for row in ('single', 'mixture+ft'):
      _write_metrics(grid / row / 'rte', [(5, 55.0, 0.0), (15, 51.0, 0.0)])
      _write_metrics(grid / row / 'stsb', [(5, 0.0, 20.0 + shift), (15, 0.0, 30.0)])
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.multitask', '--print_only', '--tasks=rte,stsb',
       '--seeds=0,1', '--steps=15', f'--output_dir={tmp_path}'],
      cwd=HERE, capture_output=True, text=True, check=True).stdout
  rows = {line.split(' | ')[0].strip('| '): line.split(' | ')[1:] for line in out.splitlines()
          if line.startswith('| ') and not line.startswith('| Row')}
  # rte's best: 60 and 62 (mean 61); stsb's best: 40/38 in both seeds.
  assert rows['mixture'][:2] == ['61.0', '40.0/38.0']
  assert rows['mixture'][2:5] == ['50.0', '49.5', '50.5']  # (60 + 39) / 2, (62 + 39) / 2
  # One checkpoint: step 20's scores, the best average, in both seeds.
  assert rows['mixture, one checkpoint'][:3] == ['50.0', '40.0/38.0', '44.5']
  assert rows['single'][:3] == ['55.0', '30.0/28.0', '42.0']
