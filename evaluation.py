"""What differs between EncT5 and the paper's baselines T5 and 1decT5 (§4.3), and how packed
rows are labelled and scored: the models table (`MODELS`: the batch each step reads, the loss,
the eval step's outputs and their predictions), the eval step, a split's rows for inference,
`infer` (per-example results of packed rows) and `evaluate_sets` (a task's metrics).
Fine-tuning (`finetune`), multi-task training (`mixtures`) and prediction (`predict`) build on
it; it reads no config class, only a config's fields.
"""
import dataclasses
import logging
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import enct5
import metrics
import packing
import partitioning
import preprocessing
import readers
import t5
import tasks


# ----------------------------------------------------------------------------------------------
# The models: EncT5 and the paper's baselines T5 and 1decT5 (§4.3). All that differs between
# them is in `MODELS`; the rest is shared.
# ----------------------------------------------------------------------------------------------

class Model(NamedTuple):
  name: str
  labels_as_text: bool  # targets are the labels as T5 text (LabelText), decoded at evaluation
  train_keys: tuple     # the batch arrays the train step reads
  eval_keys: tuple      # ... and the eval step
  loss: Callable        # (params, cfg, batch, rng) -> (loss, {'loss_sum', 'num_examples', ..})
  outputs: Callable     # (params, cfg, batch, decode_length) -> the eval step's outputs
  predictions: Callable  # (outputs, Inference) -> per-slot predictions, numpy [B, slots, ..]


def _seq2seq_model(name, model):
  """T5 or 1decT5: teacher-forced training on packed rows, greedy decoding of one example per
  row, the decoded text mapped back to a label."""
  def loss(params, cfg, batch, rng):
    return t5.loss_fn(params, cfg, batch, rng, model=model)

  def outputs(params, cfg, batch, decode_length):
    return t5.greedy_decode(params, cfg, batch['inputs'], batch['inputs_segment_ids'],
                            max_length=decode_length, model=model)  # [B, decode_length]

  return Model(name=name, labels_as_text=True,
               train_keys=('inputs', 'inputs_segment_ids', 'decoder_input_tokens',
                           'decoder_target_tokens', 'decoder_segment_ids'),
               eval_keys=('inputs', 'inputs_segment_ids'), loss=loss, outputs=outputs,
               predictions=lambda tokens, inference: inference.labels.parse(tokens)[:, None])


_ENCT5_KEYS = ('inputs', 'inputs_segment_ids', 'targets')
MODELS = {
    'enct5': Model(
        name='EncT5', labels_as_text=False, train_keys=_ENCT5_KEYS, eval_keys=_ENCT5_KEYS,
        loss=enct5.loss_fn,
        outputs=lambda params, cfg, batch, _: enct5.apply(params, cfg, batch),  # [B, T, n+1]
        predictions=lambda logits, inference: np.asarray(  # [B, T] (multi-label [B, T, n])
            enct5.predict(logits, inference.cfg, threshold=inference.thresholds))),
    't5': _seq2seq_model('T5', 't5'),
    '1dect5': _seq2seq_model('1decT5', '1dect5'),
}


def make_eval_step(cfg, shardings, model='enct5', decode_length=None, outputs=None):
  """jit((params, batch, block_length) -> outputs), replicated on every host: EncT5's logits
  [B, T, n+1] (regression [B, T]); T5's and 1decT5's greedily decoded tokens [B,
  decode_length]; or `outputs(params, cfg, batch, decode_length)`'s. The encoder's
  self-attention runs in blocks of `block_length` tokens, which the rows must allow
  (`packing.rows_block_length`): whole rows' outputs, faster."""
  outputs = outputs or MODELS[model].outputs

  def eval_step(params, batch, block_length):
    block_cfg = dataclasses.replace(cfg, attention_block_length=block_length)
    with partitioning.activation_mesh(shardings.mesh):
      return outputs(params, block_cfg, batch, decode_length)
  return jax.jit(eval_step, static_argnums=2, in_shardings=(shardings.params, shardings.batch),
                 out_shardings=shardings.replicated)


# ----------------------------------------------------------------------------------------------
# Inference and evaluation: EncT5's packed inference, the padding class ignored
# (enct5.predict); T5's and 1decT5's greedy decoding, the text mapped back to a label.
# ----------------------------------------------------------------------------------------------

def on_bad_rows(config):
  return 'skip' if config.skip_bad_rows else 'raise'


def packing_block_length(config):
  """`preprocessing.pack_split`'s block_length for --attention_block_length: unset, 'fit' (the
  smallest block that holds the longest example); 0, None (whole rows); else that block."""
  if config.attention_block_length is None:
    return 'fit'
  return config.attention_block_length or None


def pack_for_inference(config, task, examples, vocab, path='<examples>'):
  """The rows that evaluation and prediction label: EncT5's packed rows, up to
  max_target_length examples each; one example a row unpacked, and for T5 and 1decT5, which
  decode greedily. With --attention_block_length unset, each example in rows of the shortest
  block that holds it (`packing.pack_examples(block_length='by_block')`), else as training packs
  (`packing_block_length`): `infer` runs the encoder in the blocks the rows allow, with the
  outputs of whole rows."""
  target_length, method = 1, 'unpacked'
  if config.pack and not MODELS[config.model].labels_as_text:
    target_length, method = config.max_target_length, 'best_fit'
  block_length = ('by_block' if config.attention_block_length is None
                  else packing_block_length(config))
  return preprocessing.pack_split(task, examples, vocab, config.max_input_length, target_length,
                                  method=method, path=path, block_length=block_length)


def load_eval_split(config, task, split, vocab):
  """(examples, rows) of a split as the eval step reads them (`pack_for_inference`)."""
  examples = readers.read_split(task, config.data_dir, split, on_error=on_bad_rows(config))
  return examples, pack_for_inference(config, task, examples, vocab,
                                      readers.split_path(task, config.data_dir, split))


class Inference(NamedTuple):
  """What labels packed rows with given parameters."""
  task: tasks.Task
  cfg: enct5.EncT5Config
  shardings: partitioning.Shardings
  eval_step: Callable  # make_eval_step's
  labels: object  # the t5.LabelText that T5 and 1decT5 decode with, else None
  thresholds: object  # multi-label: a label is predicted when its probability >= its
  # threshold (one for all, or [n]); None: chosen on validation (`evaluate_sets`)
  tasks: tuple = ()  # one pass for the tasks of one text (`mixtures.every_task_inference`):
  # each labelled by its head, `thresholds` {task name: its thresholds}; `task` reads the text


CPU_INFERENCE_ACTIVATION_BYTES = 4 * 2**20  # FFN hidden activations of a CPU inference batch


def inference_batch_size(config, d_ff, row_length, data_axis):
  """Rows per evaluation and prediction batch: --eval_batch_size; unset, the training batch,
  on a CPU cut to CPU_INFERENCE_ACTIVATION_BYTES of hidden FFN activations (`d_ff` x tokens in
  the run's dtype; EncT5-small: 1024 tokens in float32, 2 rows of 512; 2048 in bfloat16), a
  multiple of the data axis.

  NOTE (speed, CPU only): inference needs no large batch, and smaller ones ran faster. On an
  AVX2 EPYC, EncT5-small in float32 labelled RTE dev 1.5x and SST-2 dev 1.27x as fast in 2 rows
  of 512 as in 16; on an Intel Xeon with AMX, float32 was fastest in 2 rows, bfloat16 in 4
  (SST-2 dev 1.18x as fast as in 2) (predict_speed.md). Measured at that size only; a tiny
  model's batches stay whole (their activations are small; more batches cost more dispatches).
  """
  if config.eval_batch_size:
    return config.eval_batch_size
  if jax.default_backend() != 'cpu':
    return config.batch_size
  tokens = CPU_INFERENCE_ACTIVATION_BYTES // (d_ff * jnp.dtype(config.dtype).itemsize)
  rows = tokens // row_length // data_axis * data_axis
  return min(config.batch_size, max(data_axis, rows))


def inference_batches(config, inference, packed):
  """(block length, batch) pairs covering a split's rows once, as `infer` runs them: the rows
  of each block length (`packing.row_blocks`, or --attention_block_length's when given) in
  batches of `inference_batch_size` rows. Rows past a length's last full batch run with the
  next longer length among the rows that it divides (they allow it too), so that only the last
  such length has a short batch, of only the rows it needs (`packing.tail_batch_size`): fewer
  shapes, fewer compilations.
  """
  length = packed['inputs'].shape[1]
  if config.attention_block_length is None:
    blocks = packing.row_blocks(packed['inputs_segment_ids'])
  else:
    blocks = np.full(len(packed['inputs']), config.attention_block_length)
  data_axis = inference.shardings.mesh.shape['data']
  batch_size = inference_batch_size(config, inference.cfg.d_ff, length, data_axis)
  block_lengths = np.unique(blocks).tolist()
  for i, block_length in enumerate(block_lengths):
    rows = np.flatnonzero(blocks == block_length)
    longer = [b for b in block_lengths[i + 1:] if b % block_length == 0]
    if longer:
      full = len(rows) // batch_size * batch_size
      blocks[rows[full:]], rows = longer[0], rows[:full]
    for batch in packing.eval_batches(packing.take_rows(packed, rows), batch_size, data_axis):
      yield block_length, batch


def infer(config, inference, params, packed, outputs=None):
  """Per-example results of a split's rows -> (example ids ascending, results): the model's
  predictions (`Model.predictions`), or `outputs(eval step outputs, inference)`.

  The encoder attends within each row's blocks (`inference_batches`). Every batch is
  dispatched before the first result is read: the device computes while the host prepares the
  next batch (JAX dispatches asynchronously).
  """
  model = MODELS[config.model]
  outputs = outputs or model.predictions
  batches = list(inference_batches(config, inference, packed))
  dispatched = [inference.eval_step(params, partitioning.global_batch(
      {k: batch[k] for k in model.eval_keys}, inference.shardings.batch), block_length)
                for block_length, batch in batches]
  results = [outputs(jax.tree.map(np.asarray, out), inference) for out in dispatched]
  example_ids = np.concatenate([batch['example_ids'] for _, batch in batches])
  return packing.per_example(example_ids, np.concatenate(results))


def label_outputs(logits, inference):
  """EncT5's eval-step logits -> every label's probability [B, T, n] (`enct5.probabilities`);
  regression: the values [B, T]."""
  if inference.cfg.is_regression:
    return logits
  return np.asarray(enct5.probabilities(logits, inference.cfg))


def evaluate_sets(config, inference, params, eval_sets):
  """The task's metrics on its validation split(s) -> (scores {'<eval name>/<metric>': value},
  the multi-label thresholds applied or None). `eval_sets`: split -> (examples, rows), as
  `load_eval_split`.

  Multi-label: each label is decided at `inference.thresholds`; when they are None (training
  without --threshold) they are chosen on the first split (`metrics.choose_thresholds`), and
  the split's micro- and macro-F1 at 0.5 are added as '<metric>@0.5'.

  NOTE: every model is scored against the file's labels; for STS-B that is the raw score, where
  T5 compares with its rounded target strings.
  """
  task, scores, thresholds = inference.task, {}, inference.thresholds
  for split, (examples, packed) in eval_sets.items():
    gold = {example.idx: example.label for example in examples}
    if task.is_multi_label:
      ids, probabilities = infer(config, inference, params, packed, label_outputs)
      gold = metrics.multi_hot([gold[i] for i in ids], task.num_classes)
      if thresholds is None:
        global_threshold, thresholds = metrics.choose_thresholds(task, gold, probabilities)
        logging.info('%s: thresholds chosen for %s: %.2f for all, per label %.2f..%.2f (%d of %d '
                     'labels true >= %d times)', split, '+'.join(task.selection_metrics),
                     global_threshold, thresholds.min(), thresholds.max(),
                     np.sum(gold.sum(axis=0) >= metrics.MIN_THRESHOLD_SUPPORT),
                     task.num_classes, metrics.MIN_THRESHOLD_SUPPORT)
      scores.update(metrics.compute_metrics(task, split, gold, decide(probabilities, thresholds)))
      at_half = metrics.compute_metrics(task, split, gold, decide(probabilities, 0.5))
      scores.update({f'{key}@0.5': at_half[key] for key in task.metric_keys if key in at_half})
      continue
    ids, predictions = infer(config, inference, params, packed)
    gold = [gold[i] for i in ids]
    invalid = predictions == metrics.INVALID_PREDICTION
    if inference.labels and invalid.any():
      logging.info('%s: %d of %d decoded strings are no label; counted wrong', split,
                   invalid.sum(), len(predictions))
    scores.update(metrics.compute_metrics(task, split, gold, predictions))
  return scores, thresholds


def decide(probabilities, thresholds):
  """Multi-label decisions: multi-hot [..., n], 1 where a probability is >= its threshold
  (as `enct5.predict`)."""
  return (np.asarray(probabilities) >= thresholds).astype(np.int32)
