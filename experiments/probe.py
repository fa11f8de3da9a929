"""Linear probes of a T5.1.1 checkpoint's frozen encoder: does it hold what GLUE asks for?

  python -m experiments.probe --checkpoint=runs/pretrain3_all/checkpoint_12000 \
      --tasks=sst2,cola,stsb

Before any fine-tuning: each example's feature is the mean over its tokens of the encoder
output (and, as a control, of its token embeddings), from the checkpoint and from random inits
of the same shape (`enct5.init_params`, seeds --random_seeds). A ridge regression (features
standardized on the train split) is fit on the train split, one-vs-rest on the classes
(STS-B: on the score), and scored on the dev split with the task's GLUE metrics. If the
pre-trained features score no better than random ones, fine-tuning has nothing to inherit.
"""
import functools
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import enct5
import load_ckpt
import metrics
import packing
import preprocessing
import readers
import t5_layers
import tasks
import vocabularies

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags. Defined when run as a script, not on import: test_probe.py
  imports this module beside train.py, whose --checkpoint and --vocab these would repeat."""
  flags.DEFINE_string('checkpoint', None, 'The T5.1.1 checkpoint (T5X format) to probe.',
                      required=True)
  flags.DEFINE_string('vocab', None, 'Its SentencePiece model (default '
                      'CHECKPOINT/sentencepiece.model).')
  flags.DEFINE_string('glue_dir', os.path.relpath(os.path.join(tasks.SHARED, 'glue')),
                      'GLUE data root.')
  flags.DEFINE_list('tasks', ['sst2', 'cola', 'stsb'], 'GLUE tasks (train and dev).')
  flags.DEFINE_integer('max_train_examples', 8000, 'The first N train examples fit the probe.')
  flags.DEFINE_integer('max_input_length', 128, 'Tokens per packed row (longer examples are '
                       'truncated, as train.py).')
  flags.DEFINE_float('ridge', 1.0, 'The ridge penalty on the standardized features.')
  flags.DEFINE_list('random_seeds', ['0', '1', '2'], 'Seeds of the random inits compared with '
                    '(empty: the checkpoint alone).')


@functools.partial(jax.jit, static_argnums=(1, 4))
def _slot_means(params, cfg, inputs, segment_ids, num_slots):
  """Per row and slot: the mean encoder output and the mean token embedding of the slot's
  example, [B, T, D] each (zeros for an empty slot)."""
  mask = t5_layers.pooling_mask(segment_ids, num_slots)[:, 0].astype(jnp.float32)
  count = jnp.maximum(mask.sum(-1, keepdims=True), 1.0)  # [B, T, 1]
  encoded = enct5.encode(params, cfg, inputs, segment_ids)  # [B, L, D]
  embedded = params['token_embedder']['embedding'][inputs]
  return mask @ encoded / count, mask @ embedded / count


def mean_features(params, cfg, packed, batch_size=64):
  """Per example, in id order: (ids, the mean of its encoder outputs [N, D], the mean of its
  token embeddings [N, D])."""
  encoded, embedded = [], []
  for batch in packing.eval_batches(packed, batch_size):
    e, b = _slot_means(params, cfg, batch['inputs'], batch['inputs_segment_ids'],
                       packed['example_ids'].shape[1])
    encoded.append(np.asarray(e))
    embedded.append(np.asarray(b))
  ids, encoded = packing.per_example(packed['example_ids'], np.concatenate(encoded))
  _, embedded = packing.per_example(packed['example_ids'], np.concatenate(embedded))
  return ids, encoded, embedded


def ridge_predict(x_train, y_train, x_eval, penalty):
  """Ridge regression on features standardized on x_train, with an unpenalized intercept:
  predictions for x_eval. y_train [N] or [N, K] (K targets fit at once)."""
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  x = (x_train - mean) / std  # centered, so the intercept is y's mean
  weights = np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]),
                            x.T @ (y_train - y_train.mean(0)))
  return (x_eval - mean) / std @ weights + y_train.mean(0)


def probe_score(task, split, train, dev, penalty):
  """The task's score (metrics.task_score) of a ridge probe: train and dev are (features,
  labels)."""
  (x, labels), (x_dev, labels_dev) = train, dev
  if task.is_regression:
    predictions = ridge_predict(x, labels.astype(np.float64), x_dev, penalty)
  else:
    one_hot = np.eye(task.num_classes)[labels - 1]  # class ids 1..n
    predictions = ridge_predict(x, one_hot, x_dev, penalty).argmax(1) + 1
  scores = metrics.compute_metrics(task, split, list(labels_dev), predictions)
  return metrics.task_score(task, scores)


def probe_data(task, vocab):
  """{part: (packed rows, {example id: label})} of the task's first --max_train_examples train
  examples and of its dev split."""
  data = {}
  for part in ('train', next(iter(task.eval_names))):
    examples = readers.read_split(task, FLAGS.glue_dir, part)
    if part == 'train':
      examples = examples[:FLAGS.max_train_examples]
    packed = preprocessing.pack_split(task, examples, vocab, FLAGS.max_input_length, 62,
                                      path=readers.split_path(task, FLAGS.glue_dir, part))
    data[part] = packed, {e.idx: e.label for e in examples}
  return data


def probe_features(params, cfg, data):
  """{part: {'encoder mean' or 'embedding mean': (features, labels)}} of `probe_data`."""
  features = {}
  for part, (packed, labels) in data.items():
    ids, encoded, embedded = mean_features(params, cfg, packed)
    y = np.array([labels[i] for i in ids])
    features[part] = {'encoder mean': (encoded, y), 'embedding mean': (embedded, y)}
  return features


def main(argv):
  del argv
  vocab_path = FLAGS.vocab or os.path.join(FLAGS.checkpoint, 'sentencepiece.model')
  for path, flag in ((FLAGS.checkpoint, '--checkpoint'), (vocab_path, '--vocab')):
    if not os.path.exists(path):
      raise app.UsageError(f'{flag} {path} not found')
  unknown = [name for name in FLAGS.tasks if name not in tasks.TASKS]
  if unknown:
    raise app.UsageError(f'unknown tasks {unknown}; expected some of {", ".join(tasks.TASKS)}')
  vocab = vocabularies.load_vocab(vocab_path)
  shape = load_ckpt.config_from_checkpoint(FLAGS.checkpoint)
  seeds = [int(seed) for seed in FLAGS.random_seeds]
  print('| Task | Features | Pre-trained | Random init (mean; min..max of '
        f'{len(seeds)} seeds) |\n|---|---|---|---|', flush=True)
  for name in FLAGS.tasks:
    task = tasks.get_task(name)
    cfg = enct5.get_config('small', **shape, num_classes=task.num_classes)
    split = next(iter(task.eval_names))
    data = probe_data(task, vocab)
    inits = {'pre-trained': load_ckpt.load_params(FLAGS.checkpoint, cfg, jax.random.PRNGKey(0))}
    inits.update({seed: enct5.init_params(jax.random.PRNGKey(seed), cfg) for seed in seeds})
    scores = {}  # (features, init) -> score
    for init, params in inits.items():
      features = probe_features(params, cfg, data)
      for kind in ('encoder mean', 'embedding mean'):
        scores[kind, init] = probe_score(task, split, features['train'][kind],
                                         features[split][kind], FLAGS.ridge)
    for kind in ('encoder mean', 'embedding mean'):
      random = [scores[kind, seed] for seed in seeds]
      spread = f'{np.mean(random):.1f}; {min(random):.1f}..{max(random):.1f}' if seeds else '-'
      print(f'| {name} | {kind} | {scores[kind, "pre-trained"]:.1f} | {spread} |', flush=True)
  print(f'\nRidge probes ({FLAGS.ridge:g}) on the first {FLAGS.max_train_examples} train '
        'examples, scored on dev: the task score (its metrics averaged, as Table 1).', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
