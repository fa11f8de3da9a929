"""A float32-trained run predicting in float32 and in bfloat16, side by side: speed and agreement.

  python -m experiments.predict_dtypes --output_dir=runs/sst2_tiny \
      --input_file=glue/SST-2/dev.tsv

The same run loaded twice (`predict.Labeler(run, dtype=...)`), labelling the same texts of
FILE in alternating rounds (background load hits both alike): rows per second of each, their
ratio, and how far bfloat16's outputs are from float32's: the share of rows given the same
label, the largest difference of a probability (classification) or a value (regression), and
each one's accuracy where FILE has labels.
"""
import os
import time

from absl import app, flags
import numpy as np

import fileio
import predict
import readers

flags.DEFINE_string('output_dir', None, 'A run trained in float32 (train.py --output_dir).',
                    required=True)
flags.DEFINE_string('input_file', None, 'Rows to label, with labels for accuracy.',
                    required=True)
flags.DEFINE_integer('rounds', 3, 'Rounds of both dtypes in turn.')
FLAGS = flags.FLAGS
DTYPES = ('float32', 'bfloat16')


def outputs(task, rows):
  """Labeler's output rows -> (labels or None, [rows, n] probabilities or [rows] values)."""
  if task.is_regression:
    return None, np.array([row['value'] for row in rows])
  key = 'labels' if task.is_multi_label else 'label'
  return ([row[key] for row in rows],
          np.array([[row['probabilities'][name] for name in task.label_names] for row in rows]))


def main(argv):
  del argv
  labelers = {dtype: predict.Labeler(FLAGS.output_dir, dtype=dtype) for dtype in DTYPES}
  task = labelers['float32'].inference.task
  texts = readers.text_rows(task, FLAGS.input_file)
  try:
    gold = [e.label for e in readers.read_file(task, FLAGS.input_file)]
  except fileio.DataError:
    gold = None  # no labels
  results = {dtype: labeler(texts) for dtype, labeler in labelers.items()}  # and compiled
  rates = {dtype: [] for dtype in DTYPES}
  for _ in range(FLAGS.rounds):
    for dtype, labeler in labelers.items():
      start = time.perf_counter()
      labeler(texts)
      rates[dtype].append(len(texts) / (time.perf_counter() - start))

  config = labelers['float32'].config
  print(f'{len(texts):,} rows of {FLAGS.input_file}, batch {config.batch_size} x '
        f'{config.max_input_length}; load average {os.getloadavg()[0]:.1f}')
  print('| dtype | rows/s (median; min..max) | / float32 |\n| --- | ---: | ---: |')
  for dtype, values in rates.items():
    print(f'| {dtype} | {np.median(values):,.1f} ({min(values):,.1f}..{max(values):,.1f}) | '
          f'{np.median(values) / np.median(rates["float32"]):.2f} |')
  (labels32, out32), (labels16, out16) = (outputs(task, results[d]) for d in DTYPES)
  print(f'\nlargest |bfloat16 - float32| of a {"value" if labels32 is None else "probability"}: '
        f'{np.max(np.abs(out16 - out32)):.4f}')
  if labels32 is not None:
    print(f'rows with the same label: {np.mean([a == b for a, b in zip(labels32, labels16)]):.2%}')
  if gold is not None and not task.is_multi_label:
    truth = (np.array(gold, np.float64) if task.is_regression
             else [task.label_names[label - 1] for label in gold])
    for dtype, (labels, out) in zip(DTYPES, (outputs(task, results[d]) for d in DTYPES)):
      if task.is_regression:
        print(f'{dtype}: Pearson r {np.corrcoef(out, truth)[0, 1]:.4f}')
      else:
        print(f'{dtype}: accuracy {np.mean([a == b for a, b in zip(labels, truth)]):.2%}')


if __name__ == '__main__':
  app.run(main)
