"""GoEmotions with train.py's default multi-label path: thresholds chosen on validation, scored
on rows they were not chosen on.

  python -m experiments.goemotions_thresholds --output_dir=runs/goemotions_tiny

GoEmotions' labelled test split is not in ../shared, so dev is cut in two by row parity: half A
is the run's validation file (checkpoint selection and the thresholds train.py chooses), half B
is held out. The run is the one a user gets with no threshold flag: `train.py --multi_label
--size=tiny --train_steps=600 --batch_size=32 --max_input_length=128` (resumed if it stopped).
Both halves are then labelled with --mode=predict, and each half scored (micro- and macro-F1)
at 0.5, at the global threshold chosen on A, and at the per-label thresholds the run applies
(`metrics.choose_thresholds`), beside always predicting the most frequent training label.
"""
import collections
import csv
import json
import os
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

import finetune
import metrics
import readers
import tasks

flags.DEFINE_string('output_dir', 'runs/goemotions_tiny', 'The run, the dev halves and the '
                    'predictions.')
flags.DEFINE_string('goemotions_dir', os.path.join(tasks.SHARED, 'goemotions'), 'GoEmotions\' '
                    'train.tsv, dev.tsv and labels.txt.')
flags.DEFINE_integer('train_steps', 600, 'train.py --train_steps.')
FLAGS = flags.FLAGS


def split_dev(dev_file, data_dir):
  """dev.tsv's rows cut by parity into data_dir/dev_a.tsv (even) and dev_b.tsv (odd)."""
  os.makedirs(data_dir, exist_ok=True)
  with open(dev_file, newline='', encoding='utf-8') as f:
    header, *rows = list(csv.reader(f, delimiter='\t'))
  paths = [os.path.join(data_dir, f'dev_{half}.tsv') for half in 'ab']
  for parity, path in enumerate(paths):
    with open(path, 'w', newline='', encoding='utf-8') as f:
      csv.writer(f, delimiter='\t', lineterminator='\n').writerows([header, *rows[parity::2]])
  return paths


def train_py(*argv):
  command = [sys.executable, 'train.py', *argv]
  print('+', ' '.join(command), flush=True)
  subprocess.run(command, check=True)


def scores(gold, decisions):
  return (metrics.micro_f1(gold, decisions), metrics.macro_f1(gold, decisions))


def main(argv):
  del argv
  start = time.time()
  out, goemotions = FLAGS.output_dir, FLAGS.goemotions_dir
  halves = split_dev(os.path.join(goemotions, 'dev.tsv'), os.path.join(out, 'data'))
  run = os.path.join(out, 'run')
  train_py(f'--train_file={goemotions}/train.tsv', f'--validation_file={halves[0]}',
           '--multi_label', f'--labels={goemotions}/labels.txt', '--labels_by_index',
           '--size=tiny', f'--train_steps={FLAGS.train_steps}', '--batch_size=32',
           '--max_input_length=128', f'--output_dir={run}')
  task = tasks.task_from_json(finetune.read_run_record(run)['task'])
  gold, probabilities, applied = {}, {}, {}
  for half, path in zip('ab', halves):
    predictions = os.path.join(out, f'dev_{half}.jsonl')
    train_py('--mode=predict', f'--output_dir={run}', f'--input_file={path}',
             f'--predictions_file={predictions}')
    with open(predictions) as f:
      rows = [json.loads(line) for line in f]
    gold[half] = metrics.multi_hot([e.label for e in readers.read_file(task, path)],
                                   task.num_classes)
    probabilities[half] = np.array([[row['probabilities'][n] for n in task.label_names]
                                    for row in rows])
    applied[half] = metrics.multi_hot([[task.label_names.index(n) + 1 for n in row['labels']]
                                       for row in rows], task.num_classes)
  global_threshold, per_label = metrics.choose_thresholds(task, gold['a'], probabilities['a'])
  assert (applied['b'] == (probabilities['b'] >= per_label)).all(), 'not the run\'s thresholds'
  counts = collections.Counter(label for e in readers.read_file(task, f'{goemotions}/train.tsv')
                               for label in e.label)
  constant = counts.most_common(1)[0][0]

  print(f'\nGoEmotions dev: half A {len(gold["a"]):,} rows (validation: selection and '
        f'thresholds), half B {len(gold["b"]):,} rows (held out); wall {time.time() - start:.0f} s')
  print(f'thresholds chosen on A: global {global_threshold:.2f}; per label '
        f'{per_label.min():.2f}..{per_label.max():.2f} (median {np.median(per_label):.2f}), '
        f'{np.sum(gold["a"].sum(0) >= metrics.MIN_THRESHOLD_SUPPORT)} of {task.num_classes} '
        'labels with their own')
  print('| decisions | A micro-F1 | A macro-F1 | B micro-F1 | B macro-F1 |')
  print('| --- | ---: | ---: | ---: | ---: |')
  for name, decide in ((f'always "{task.label_names[constant - 1]}"', lambda p: np.eye(
      task.num_classes, dtype=np.int32)[np.full(len(p), constant - 1)]),
                       ('threshold 0.5', lambda p: p >= 0.5),
                       (f'global threshold chosen on A ({global_threshold:.2f})',
                        lambda p: p >= global_threshold),
                       ('per-label thresholds chosen on A (the run\'s)', lambda p: p >= per_label)):
    cells = [f'{s:.1f}' for half in 'ab' for s in scores(gold[half], decide(probabilities[half]))]
    print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  app.run(main)
