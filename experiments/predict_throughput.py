"""`train.py --mode=predict --input_file` end to end against the model alone, side by side.

  python -m experiments.predict_throughput --output_dir=runs/goemotions --input_file=FILE

(a) The model alone, as bench.py's packed inference measures it: the file's rows read,
tokenized and packed once, beforehand; then only the eval steps over all the packed batches
are timed. (b) `predict.predict_file` on the same file, the same run and batch size: reading,
tokenizing, packing and writing a chunk at a time, all of it timed. Rows per second of each
and their ratio; the rounds alternate (a), (b), so background load hits both alike.
"""
import os
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

import finetune
import packing
import partitioning
import predict
import preprocessing
import readers

flags.DEFINE_string('output_dir', None, 'A trained run (train.py --output_dir).', required=True)
flags.DEFINE_string('input_file', None, 'Rows to label.', required=True)
flags.DEFINE_integer('rounds', 3, 'Rounds of (a) then (b).')
FLAGS = flags.FLAGS


def model_alone(labeler, examples):
  """() -> rows labelled: the eval steps over `examples` packed beforehand (bench.py's way)."""
  config, inference = labeler.config, labeler.inference
  packed = preprocessing.pack_split(inference.task, examples, labeler.vocab,
                                    config.max_input_length, config.max_target_length)
  batches = [partitioning.global_batch({k: b[k] for k in finetune._ENCT5_KEYS},
                                       inference.shardings.batch)
             for b in packing.eval_batches(packed, config.batch_size)]

  def run():
    for batch in batches:
      out = inference.eval_step(labeler.params, batch)
    jax.block_until_ready(out)
    return len(examples)
  return run


def main(argv):
  del argv
  labeler = predict.Labeler(FLAGS.output_dir)
  examples = readers.read_file(labeler.inference.task, FLAGS.input_file, labeled=False)
  alone = model_alone(labeler, examples)
  alone()  # compiled
  rates = {'model alone (bench.py)': [], 'predict_file': []}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'predictions.jsonl')
    predict.predict_file(labeler.config, FLAGS.input_file, out)  # compiled
    for _ in range(FLAGS.rounds):
      start = time.perf_counter()
      rows = alone()
      rates['model alone (bench.py)'].append(rows / (time.perf_counter() - start))
      start = time.perf_counter()
      predict.predict_file(labeler.config, FLAGS.input_file, out)
      rates['predict_file'].append(rows / (time.perf_counter() - start))
  for name, values in rates.items():
    print(f'{name}: {np.median(values):,.0f} rows/s ({min(values):,.0f}..{max(values):,.0f})')
  ratios = [b / a for a, b in zip(*rates.values())]
  print(f'predict_file / model alone: {np.median(ratios):.2f} ({min(ratios):.2f}..'
        f'{max(ratios):.2f}), {len(examples):,} rows, batch {labeler.config.batch_size} x '
        f'{labeler.config.max_input_length}, load average {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  app.run(main)
