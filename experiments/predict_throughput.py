"""The user's prediction paths against the model alone, side by side, and where their time goes.

  python -m experiments.predict_throughput --output_dir=runs/rte_small --input_file=FILE \
      [--dtype=bfloat16]

On the same rows of FILE, the same run and batch size, in alternating rounds (background load
hits all alike), rows per second of:
  model alone, whole rows   the eval steps over the rows packed beforehand, self-attention over
                            whole rows (what evaluation and prediction ran before issue 34);
  model alone, blocks       the same, the encoder in the blocks the rows allow (bench.py's
                            packed inference);
  Labeler                   `predict.Labeler(texts)` on the file's texts, read beforehand:
                            tokenizing, packing, the eval steps and the output rows;
  label_file                `predict.label_file` (`--mode=predict` once the model is loaded):
                            reading, tokenizing, packing, labelling and writing the file.
Then one profiled `label_file`: the share of its time in each stage.
"""
import cProfile
import os
import pstats
import tempfile
import time

from absl import app, flags
import numpy as np

import bench  # its flags too: --rounds (default 3 here)
import predict
import readers

flags.DEFINE_string('output_dir', None, 'A trained run (train.py --output_dir).', required=True)
flags.DEFINE_string('input_file', None, 'Rows to label.', required=True)
flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Activations (default: the run\'s).')
FLAGS = flags.FLAGS

# (stage, the functions whose cumulative time is that stage's) for the profile of label_file.
STAGES = (('read the file', ('readers.py', 'stream_file')),
          ('tokenize', ('preprocessing.py', 'tokenize')),
          ('pack', ('packing.py', 'pack_examples')),
          ('eval steps (dispatch and wait)', ('evaluation.py', 'infer')),
          ('output rows', ('predict.py', 'prediction_row')),
          ('write', ('predict.py', 'write')))


def profile(fn):
  """Seconds of each STAGE in one profiled call of `fn`, and the total."""
  profiler = cProfile.Profile()
  start = time.perf_counter()
  profiler.runcall(fn)
  total = time.perf_counter() - start
  stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
  seconds = {}
  for stage, (file, name) in STAGES:
    seconds[stage] = sum(ct for (path, _, function), (_, _, _, ct, _) in stats.items()
                         if path.endswith(file) and function == name)
  return seconds, total


def main(argv):
  del argv
  labeler = predict.Labeler(FLAGS.output_dir, dtype=FLAGS.dtype)
  config, inference = labeler.config, labeler.inference
  examples = readers.read_file(inference.task, FLAGS.input_file, labeled=False)
  texts = readers.text_rows(inference.task, FLAGS.input_file)
  assert len(texts) == len(examples), 'a row the readers skip or split'
  whole, _, _ = bench.model_alone(labeler, examples, blocks=False)
  blocks, block_rows, _ = bench.model_alone(labeler, examples, blocks=True)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'predictions.jsonl')
    label_file = lambda: predict.label_file(config, inference, labeler.params, labeler.vocab,
                                            FLAGS.input_file, out)
    paths = {'model alone, whole rows': whole, 'model alone, blocks': blocks,
             'Labeler': lambda: labeler(texts), 'label_file': label_file}
    for fn in paths.values():
      fn()  # compiled
    rates = {name: [] for name in paths}
    for _ in range(FLAGS.rounds or 3):
      for name, fn in paths.items():
        start = time.perf_counter()
        fn()
        rates[name].append(len(examples) / (time.perf_counter() - start))
    seconds, total = profile(label_file)
  print(f'{len(examples):,} rows, batch {config.batch_size} x {config.max_input_length}, '
        f'packed rows by block length {block_rows}, {config.dtype}; '
        f'load average {os.getloadavg()[0]:.1f}')
  print('| path | rows/s (median; min..max) | / model alone, blocks |\n| --- | ---: | ---: |')
  reference = np.median(rates['model alone, blocks'])
  for name, values in rates.items():
    print(f'| {name} | {np.median(values):,.1f} ({min(values):,.1f}..{max(values):,.1f}) | '
          f'{np.median(values) / reference:.2f} |')
  print(f'\nprofiled label_file: {total:.2f} s\n| stage | s | share |\n| --- | ---: | ---: |')
  for stage, s in seconds.items():
    print(f'| {stage} | {s:.3f} | {s / total:.0%} |')


if __name__ == '__main__':
  app.run(main)
