"""Fine-tune EncT5 (Liu et al. 2021), or the paper's T5 and 1decT5 baselines, on a GLUE task:
`python train.py --flags`.

  python train.py                                    # demo: a tiny EncT5 learns a generated
                                                     # task from scratch (~1 minute on a CPU)
  python train.py --task=sst2 --data_dir=glue_data/SST-2 --size=tiny --max_input_length=128 \
      --max_target_length=32 --batch_size=32 --train_steps=3000 --eval_every=250
      # from random init with its own SentencePiece model: 79.8% dev accuracy, 10 min, 2 cores
  python train.py --task=mnli --data_dir=glue_data \
      --checkpoint=gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000 \
      --vocab=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model --output_dir=runs/mnli
  python train.py --task=rte --data_dir=glue_data --checkpoint=google/mt5-small  # a local HF dir
  python train.py --size=byt5-tiny --vocab=byt5      # the demo with ByT5's shape and bytes
  python train.py --mode=eval --output_dir=runs/mnli # metrics of OUTPUT_DIR/best
  python train.py --mode=predict --output_dir=...    # GLUE submission TSVs
  python train.py ... --model=t5                     # the T5 baseline (paper §4.3): labels as
                                                     # text, predictions decoded greedily

Re-running the same command resumes from OUTPUT_DIR/checkpoints exactly. OUTPUT_DIR/config.json
(copied into every checkpoint) records the run's flags, vocabulary and model config: resuming
with another --task, --model, --size, --vocab or shape flag stops, and --mode=eval/predict take
the training run's flags from it. Many hosts: run the same command on each with
--coordinator_address, --num_processes and --process_id.

Flags by section (each explained below, in alphabetical order):
  task and data      --task --data_dir --vocab --vocab_size --max_input_length
                     --max_target_length --pack
  model              --model --checkpoint --size --fresh_pooling_block --d_model --num_heads
                     --head_dim --d_ff --num_layers --dropout_rate --dtype --remat_policy
                     --scan_layers
  training           --batch_size --learning_rate --train_steps --eval_every --log_every
                     --keep_checkpoints --seed
  devices and hosts  --mesh --coordinator_address --num_processes --process_id
                     --compilation_cache
  run                --mode --predict_split --output_dir

Reads top-down: flags; the models (all that differs between EncT5, T5 and 1decT5); the train
and eval steps (`adafactor`, `partitioning`); the vocabulary and the model's shape; the run's
record (config.json); checkpoints; evaluation and prediction; the loop (`prepare_run`, then
`train_loop`); main. The data road is `glue`'s: read, tokenize, pack.
"""
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging as std_logging
import os
import signal
import sys
import tempfile
import time
from typing import Callable, NamedTuple

from absl import app, flags, logging
import numpy as np
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

import adafactor
import enct5
import glue
import hf_ckpt
import load_ckpt
import packing
import partitioning
import t5
import t5_layers

# ----------------------------------------------------------------------------------------------
# Flags, by section, with the paper's defaults (§4.1: T5's fine-tuning recipe, Adafactor with a
# constant learning rate 1e-3, packed rows of 512 tokens, best checkpoint on validation).
# ----------------------------------------------------------------------------------------------

# Task and data.
flags.DEFINE_string('task', None, 'GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli or rte. '
                    'Unset: the built-in demo task, generated into OUTPUT_DIR (no data needed).')
flags.DEFINE_string('data_dir', None, 'GLUE data as download_glue_data.py lays it out: the root '
                    '(holding SST-2/, MNLI/, ...) or one task folder such as glue_data/SST-2.')
flags.DEFINE_string('vocab', None, 'SentencePiece model, local or gs:// (T5: gs://t5-data/vocabs/'
                    'cc_all.32000/sentencepiece.model), or byt5 for ByT5\'s UTF-8 bytes. Unset: '
                    'the checkpoint\'s own (sentencepiece.model in a T5X checkpoint of '
                    'pretrain.py; spiece.model or ByT5\'s tokenizer_class in a Hugging Face '
                    'one), else a new one trained on the task\'s training text into '
                    'OUTPUT_DIR/vocab/ (for training from scratch).')
flags.DEFINE_integer('vocab_size', 8000, 'Pieces (at most) of the SentencePiece model trained when '
                     '--vocab is unset (default ours).')
flags.DEFINE_integer('max_input_length', 512, 'Tokens per packed input row (L; paper §4.1: '
                     '512); longer examples are truncated, keeping their EOS.')
flags.DEFINE_integer('max_target_length', 62, 'Two meanings, by --model. enct5: example slots '
                     'per packed row (T), so at most this many examples share a row (paper: '
                     '62). t5 and 1dect5: decoder tokens per packed row (T5X\'s `targets` '
                     'length), each example taking its label\'s tokens and EOS.')
flags.DEFINE_bool('pack', True, 'Pack several examples per row (paper §3); --nopack: one '
                  'example per row.')

# Model.
flags.DEFINE_enum('model', 'enct5', ['enct5', 't5', '1dect5'], 'enct5: the T5 encoder, the '
                  'pooling block and a class head (paper §3). t5: the full T5.1.1 '
                  'encoder-decoder, labels as T5 text, predictions decoded greedily and mapped '
                  'back to labels (§4.3 baseline). 1dect5: the same with only the first decoder '
                  'layer (§4.3).')
flags.DEFINE_string('checkpoint', None, 'T5.1.1, mT5 or ByT5 checkpoint: T5X\'s format, local '
                    'or gs:// (e.g. gs://t5-data/pretrained_models/t5x/t5_1_1_small/'
                    'checkpoint_1000000), or a Hugging Face model directory (config.json + '
                    'safetensors, e.g. a local copy of google/mt5-small): its '
                    'encoder and first decoder layer are loaded with their Adafactor state '
                    '(paper §4.2; --model=t5: all of it; 1dect5: all but decoder layers 1 and '
                    'up), and its shapes fix the model. Unset: random init. With '
                    '--mode=eval/predict: the checkpoint to use (default OUTPUT_DIR/best).')
flags.DEFINE_bool('load_optimizer_state', True, 'With --checkpoint: continue its Adafactor '
                  'state and step (T5X\'s default; paper §4.2). --noload_optimizer_state: '
                  'fresh Adafactor state from step 0, as with random init (T5X: an '
                  'assignment_map sending state/.* to None). Continued second moments carry '
                  'the pre-training gradients\' statistics for ~1/(1 - rho) = (step + 1)^0.8 '
                  'steps (README, Table 1).')
flags.DEFINE_enum('size', None, list(enct5.SIZES), 'T5.1.1 (small..xxl), mT5 (mt5-small..) or '
                  'ByT5 (byt5-small..) size, or a tiny one of each family. With --checkpoint: '
                  'checked against it. Without: the model to train from scratch (default tiny; '
                  'the vocabulary fixes its vocab_size).')
flags.DEFINE_bool('fresh_pooling_block', False, 'From an encoder-only checkpoint (Hugging '
                  'Face T5EncoderModel, Sentence-T5): start EncT5\'s pooling block (the first '
                  'decoder layer\'s cross-attention and FFN) from random init instead of '
                  'stopping because the checkpoint has none.')
flags.DEFINE_integer('d_model', None, 'The model dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('num_heads', None, 'The attention heads, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('head_dim', None, 'The head dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('d_ff', None, 'The FFN dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('num_layers', None, 'The encoder layers, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_float('dropout_rate', 0.1, 'Dropout while training (T5 fine-tuning: 0.1).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Activation dtype; parameters '
                  'and Adafactor state stay float32.')
flags.DEFINE_enum('remat_policy', 'none', list(t5_layers.REMAT_POLICIES), 'T5X\'s '
                  'rematerialization per layer, to fit larger batches or models: none; minimal '
                  '(keep the matmuls\' outputs, recompute the rest); full (keep only each '
                  'layer\'s input; about one more forward pass of compute). Same numbers. On '
                  'XLA:CPU it frees memory only with --scan_layers (unrolled, it recomputes but '
                  'keeps the activations alive anyway; see README).')
flags.DEFINE_bool('scan_layers', False, 'Run each stack\'s layers as one lax.scan (T5X\'s '
                  'option): compile time and program size no longer grow with depth (xl, xxl). '
                  'Same numbers; checkpoints keep one tree per layer.')

# Training.
flags.DEFINE_integer('batch_size', 128, 'Packed rows per global batch (T5: 128 rows of 512 '
                     'tokens), split over the mesh\'s data axis and the processes.')
flags.DEFINE_float('learning_rate', 1e-3, 'Adafactor\'s constant learning rate (paper §4.1).')
flags.DEFINE_integer('train_steps', 50000, 'Fine-tuning steps (paper §4.1: 50k), counted from '
                     'the start of fine-tuning, not from the checkpoint\'s step.')
flags.DEFINE_integer('eval_every', 1000, 'Evaluate on the validation split(s) and save a '
                     'checkpoint every this many steps (and at the end); default ours: 50 '
                     'evaluations over the paper\'s 50k steps.')
flags.DEFINE_integer('log_every', 100, 'Steps per training log line (default ours).')
flags.DEFINE_integer('keep_checkpoints', 2, 'Latest checkpoints kept in OUTPUT_DIR/checkpoints '
                     '(default ours: one to fall back on if the newest is damaged).')
flags.DEFINE_integer('seed', 0, 'Seed of init, data order and dropout (a function of seed and '
                     'step, so a resumed run is exact).')

# Devices and hosts.
flags.DEFINE_string('mesh', None, 'Device mesh DATAxMODEL, e.g. 4x2: batches split over DATA, '
                    'parameters partitioned over MODEL. Default: all devices on DATA.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for several hosts.')
flags.DEFINE_integer('num_processes', 1, 'Processes (hosts) running this same command.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index, 0..num_processes-1.')
flags.DEFINE_string('compilation_cache', os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'enct5', 'jax'),
    'JAX\'s persistent compilation cache: a second run of the same command loads its compiled '
    'steps from here instead of compiling them again. Empty: no cache.')

# Run.
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'train: fine-tune (resuming '
                  'from OUTPUT_DIR). eval: the task\'s metrics on the validation split(s). '
                  'predict: GLUE submission TSVs (index, prediction) in OUTPUT_DIR/predictions.')
flags.DEFINE_string('predict_split', 'test', 'Split that --mode=predict labels (test: all the '
                    'task\'s test files, e.g. MNLI-m and MNLI-mm).')
flags.DEFINE_string('output_dir', None, 'Checkpoints, best checkpoint, metrics.jsonl, the '
                    'trained vocabulary, predictions. Default: runs/TASK (demo: a new temp dir).')

FLAGS = flags.FLAGS

# Exit statuses: 0 done; 1 a programming error (with its traceback) or a non-finite loss;
# USER_ERROR a mistake in the flags, files or data (one line on stderr; ENCT5_TRACEBACK=1 shows
# the traceback); INTERRUPTED stopped by SIGTERM or SIGINT after writing a checkpoint.
USER_ERROR = 2
INTERRUPTED = 3


class UserError(Exception):
  """A mistake the user can fix (a flag, a file, the data): the message names it."""


def check_flags():
  """Numbers that cannot work stop here, before anything is read or compiled."""
  if FLAGS.task and FLAGS.task not in glue.TASKS:
    raise UserError(f'--task={FLAGS.task}: no such GLUE task; one of {sorted(glue.TASKS)}')
  for name in ('batch_size', 'train_steps', 'eval_every', 'log_every', 'keep_checkpoints',
               'max_input_length', 'max_target_length', 'vocab_size') + SHAPE_FLAGS:
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      raise UserError(f'--{name}={FLAGS[name].value}: must be at least 1')
  if not FLAGS.learning_rate > 0:
    raise UserError(f'--learning_rate={FLAGS.learning_rate}: must be positive')
  if not 0 <= FLAGS.dropout_rate < 1:
    raise UserError(f'--dropout_rate={FLAGS.dropout_rate}: must be in [0, 1)')
  if FLAGS['eval_every'].present and FLAGS.eval_every > FLAGS.train_steps:
    raise UserError(f'--eval_every={FLAGS.eval_every} is larger than --train_steps='
                    f'{FLAGS.train_steps}: the run would evaluate only at its end')

# ----------------------------------------------------------------------------------------------
# The models: EncT5 and the paper's baselines T5 and 1decT5 (§4.3). All that differs between
# them is in `MODELS`; the rest of this file is shared.
# ----------------------------------------------------------------------------------------------

class Model(NamedTuple):
  name: str
  labels_as_text: bool  # targets are the labels as T5 text (LabelText), decoded at evaluation
  train_keys: tuple     # the batch arrays the train step reads
  eval_keys: tuple      # ... and the eval step
  loss: Callable        # (params, cfg, batch, rng) -> (loss, {'loss_sum', 'num_examples'})
  outputs: Callable     # (params, cfg, batch, decode_length) -> the eval step's outputs
  predictions: Callable  # (outputs, cfg, LabelText) -> per-slot predictions, numpy [B, slots]


def _enct5_loss(params, cfg, batch, rng):
  """`enct5.loss_fn`: the mean loss per example; for the logs, its sum and the count."""
  loss, aux = enct5.loss_fn(params, cfg, batch, rng=rng)
  return loss, {'loss_sum': aux['loss_sum'], 'num_examples': aux['num_examples']}


def _enct5_outputs(params, cfg, batch, decode_length):
  return enct5.apply(params, cfg, batch)  # logits [B, T, n+1] (regression [B, T])


def _enct5_predictions(logits, cfg, labels):
  return np.asarray(enct5.predict(logits, cfg))  # class ids 1..n (or scores) [B, T]


def _seq2seq_model(name, model):
  """T5 or 1decT5: teacher-forced training on packed rows, greedy decoding of one example per
  row, the decoded text mapped back to a label."""
  def loss(params, cfg, batch, rng):
    """T5X's loss (summed token cross-entropy + z-loss) to differentiate; for the logs, its sum
    per example (each example is one decoder segment)."""
    loss, aux = t5.loss_fn(params, cfg, batch, model=model, rng=rng)
    num_examples = jnp.sum(jnp.max(batch['decoder_segment_ids'], axis=1))
    return loss, {'loss_sum': aux['loss_sum'], 'num_examples': num_examples}

  def outputs(params, cfg, batch, decode_length):
    return t5.greedy_decode(params, cfg, batch['inputs'], batch['inputs_segment_ids'],
                            max_length=decode_length, model=model)  # [B, decode_length]

  return Model(name=name, labels_as_text=True,
               train_keys=('inputs', 'inputs_segment_ids', 'decoder_input_tokens',
                           'decoder_target_tokens', 'decoder_segment_ids'),
               eval_keys=('inputs', 'inputs_segment_ids'), loss=loss, outputs=outputs,
               predictions=lambda tokens, cfg, labels: labels.parse(tokens)[:, None])


_ENCT5_KEYS = ('inputs', 'inputs_segment_ids', 'targets')
MODELS = {
    'enct5': Model(name='EncT5', labels_as_text=False, train_keys=_ENCT5_KEYS,
                   eval_keys=_ENCT5_KEYS, loss=_enct5_loss, outputs=_enct5_outputs,
                   predictions=_enct5_predictions),
    't5': _seq2seq_model('T5', 't5'),
    '1dect5': _seq2seq_model('1decT5', '1dect5'),
}


# ----------------------------------------------------------------------------------------------
# The train and eval steps: one jit each, parameters and optimizer state donated.
# ----------------------------------------------------------------------------------------------

def dropout_rng(seed, step):
  """Dropout key of a step, a function of (seed, step) only, so a resumed run is exact."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def make_train_step(cfg, shardings, loss_fn, learning_rate, seed):
  """jit((params, opt_state, batch) -> (params, opt_state, metrics)), params and state donated.

  The gradient of `loss_fn(params, cfg, batch, rng) -> (loss, aux)` (aux: a dict of scalars),
  then one Adafactor update; metrics = {'loss': loss, **aux}. `learning_rate`: a float, or a
  function of the Adafactor step (a traced int32 scalar) giving the rate. The dropout key is
  `dropout_rng(seed, Adafactor step)`.
  """
  def train_step(params, opt_state, batch):
    step = opt_state['step']
    rng = dropout_rng(seed, step) if cfg.dropout_rate > 0 else None
    with partitioning.activation_mesh(shardings.mesh):
      grad_fn = jax.value_and_grad(lambda p: loss_fn(p, cfg, batch, rng), has_aux=True)
      (loss, aux), grads = grad_fn(params)
    rate = learning_rate(step) if callable(learning_rate) else learning_rate
    params, opt_state = adafactor.update(grads, opt_state, params, rate)
    return params, opt_state, {'loss': loss, **aux}

  return jax.jit(train_step,
                 in_shardings=(shardings.params, shardings.opt_state, shardings.batch),
                 out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
                 donate_argnums=(0, 1))


def make_eval_step(cfg, shardings, model='enct5', decode_length=None):
  """jit((params, batch) -> outputs), replicated on every host: EncT5's logits [B, T, n+1]
  (regression [B, T]); T5's and 1decT5's greedily decoded tokens [B, decode_length]."""
  outputs = MODELS[model].outputs

  def eval_step(params, batch):
    with partitioning.activation_mesh(shardings.mesh):
      return outputs(params, cfg, batch, decode_length)
  return jax.jit(eval_step, in_shardings=(shardings.params, shardings.batch),
                 out_shardings=shardings.replicated)


def init_train_state(cfg, shardings, rng, model='enct5'):
  """Fresh parameters and Adafactor state, born sharded (jit with out_shardings)."""
  params = jax.jit(lambda key: enct5.init_params(key, cfg, model),
                   out_shardings=shardings.params)(rng)
  opt_state = jax.jit(adafactor.init, out_shardings=shardings.opt_state)(params)
  return params, opt_state


# ----------------------------------------------------------------------------------------------
# The vocabulary and the model's shape: from the checkpoint when there is one, else from --size
# (+ overrides).
# ----------------------------------------------------------------------------------------------

CHECKPOINT_VOCAB = 'sentencepiece.model'  # a checkpoint's own vocabulary, if it has one
SHAPE_FLAGS = ('d_model', 'num_heads', 'head_dim', 'd_ff', 'num_layers')


def vocab_file(task, train_examples, *, must_exist=False):
  """The SentencePiece model's local path (or 'byt5', for `glue.load_vocab`): --vocab (a gs://
  file is copied into OUTPUT_DIR/vocab/), else the `sentencepiece.model` inside --checkpoint
  (pretrain.py writes it there), else the one a Hugging Face --checkpoint names
  (`hf_ckpt.vocabulary`), else the model trained earlier into OUTPUT_DIR/vocab/, else one
  trained now on the task's training text. Every process uses process 0's file."""
  vocab_dir = os.path.join(FLAGS.output_dir, 'vocab')
  if FLAGS.vocab and FLAGS.vocab.startswith('gs://'):
    path = os.path.join(vocab_dir, FLAGS.vocab.rsplit('/', 1)[1])
    data = load_ckpt.read_bytes(FLAGS.vocab)
    if data is None:
      raise UserError(f'--vocab={FLAGS.vocab}: not found')
    _write_atomically(path, data)
    return path
  if FLAGS.vocab and FLAGS.vocab != glue.BYT5_VOCAB and not os.path.isfile(FLAGS.vocab):
    raise UserError(f'--vocab={FLAGS.vocab}: no such file')
  if FLAGS.vocab:
    return FLAGS.vocab
  beside_checkpoint = os.path.join(FLAGS.checkpoint or '', CHECKPOINT_VOCAB)
  if FLAGS.checkpoint and os.path.isfile(beside_checkpoint):
    logging.info('no --vocab: using the checkpoint\'s vocabulary, %s', beside_checkpoint)
    return beside_checkpoint
  if FLAGS.checkpoint and hf_ckpt.is_hf_checkpoint(FLAGS.checkpoint):
    named = hf_ckpt.vocabulary(FLAGS.checkpoint)
    if named:
      logging.info('no --vocab: using the Hugging Face checkpoint\'s vocabulary, %s', named)
      return named
  path = os.path.join(vocab_dir, f'{task.name}.model')
  if jax.process_index() == 0:
    if os.path.isfile(path):
      logging.info('no --vocab: using the SentencePiece model trained earlier, %s', path)
    elif not must_exist:
      texts = [example.text for example in train_examples]
      if MODELS[FLAGS.model].labels_as_text:  # T5 and 1decT5 read the targets' text too
        texts += [glue.label_text(task, example.label) for example in train_examples]
      logging.info('no --vocab: training a SentencePiece model (up to %d pieces) on %d '
                   'training texts of %s into %s', FLAGS.vocab_size, len(texts), task.name, path)
      os.makedirs(vocab_dir, exist_ok=True)
      glue.train_vocab(texts, path[:-len('.model')], FLAGS.vocab_size)
  if jax.process_count() > 1:
    _share_file(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no --vocab and no trained vocabulary at {path}')
  return path


def _share_file(path):
  """Process 0's copy of a file written on every process (no shared disk needed)."""
  data = b''
  if jax.process_index() == 0 and os.path.isfile(path):
    with open(path, 'rb') as f:
      data = f.read()
  size = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
  if not size:
    return
  buffer = np.frombuffer(data, np.uint8) if data else np.zeros(size, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes()
  if jax.process_index() > 0:
    _write_atomically(path, data)


def _write_atomically(path, data):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{jax.process_index()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def model_config(task, vocab, checkpoint):
  """EncT5Config for `task`; `checkpoint` (T5.1.1 or EncT5, or None) fixes the shape."""
  options = dict(num_classes=task.num_classes, dropout_rate=FLAGS.dropout_rate, dtype=FLAGS.dtype,
                 remat_policy=FLAGS.remat_policy, scan_layers=FLAGS.scan_layers)
  overrides = {name: FLAGS[name].value for name in SHAPE_FLAGS if FLAGS[name].value is not None}
  if checkpoint:
    # The checkpoint fixes the shape; --size and the shape flags, if given, must agree.
    shape = load_ckpt.config_from_checkpoint(checkpoint)
    asked = {k: (v, f'--size={FLAGS.size}') for k, v in enct5.SIZES[FLAGS.size].items()
             if k in SHAPE_FLAGS} if FLAGS.size else {}
    asked.update({k: (v, f'--{k}') for k, v in overrides.items()})
    wrong = [f'{k} {shape[k]} (checkpoint) vs {v} ({flag})'
             for k, (v, flag) in asked.items() if shape[k] != v]
    if wrong:
      raise UserError(f'the checkpoint {checkpoint} does not match the flags: '
                      + '; '.join(wrong))
    cfg = enct5.get_config(FLAGS.size or 'small', **shape, **options)
  else:
    # A from-scratch vocabulary of N pieces: N rounded up to a multiple of 128, as T5's 32128.
    # T5.1.1 has as many decoder layers as encoder layers (t5.num_decoder_layers: which are used).
    # ByT5's sizes keep their 3:1 encoder:decoder depth unless --num_layers changes it.
    vocab_size = -(-vocab.GetPieceSize() // 128) * 128
    size = enct5.SIZES[FLAGS.size or 'tiny']
    num_decoder_layers = overrides.get('num_layers', size['num_decoder_layers'])
    cfg = enct5.get_config(FLAGS.size or 'tiny', vocab_size=vocab_size,
                           num_decoder_layers=num_decoder_layers, **overrides, **options)
  glue.check_vocab_fits(vocab, cfg.vocab_size)
  return cfg


# ----------------------------------------------------------------------------------------------
# The run's record: OUTPUT_DIR/config.json, and a copy in every checkpoint, holds this run's
# flags, vocabulary file and model config. A resumed run must keep RUN_FLAGS; --mode=eval and
# --mode=predict take the training run's flags and model config from it.
# ----------------------------------------------------------------------------------------------

CONFIG_FILE = 'config.json'
RUN_FLAGS = ('task', 'model', 'size', 'vocab') + SHAPE_FLAGS
# What --mode=eval/predict choose for themselves: the run, and the devices it runs on.
NOT_RECORDED = ('mode', 'output_dir', 'checkpoint', 'predict_split', 'mesh',
                'coordinator_address', 'num_processes', 'process_id', 'compilation_cache')


def run_record(cfg, vocab_path):
  """config.json's contents (bytes): the flags of this run, its vocabulary and model config."""
  flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(__name__)}
  if vocab_path != glue.BYT5_VOCAB:  # a file; 'byt5' names ByT5's bytes
    vocab_path = os.path.abspath(vocab_path)
  record = dict(flags=flag_values, vocab_file=vocab_path,
                config=dataclasses.asdict(cfg))
  return (json.dumps(record, indent=2, sort_keys=True) + '\n').encode()


def read_run_record():
  """OUTPUT_DIR/config.json as a dict, or None for a new run."""
  path = os.path.join(FLAGS.output_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_same_run(record):
  """A run resumed in OUTPUT_DIR must be the same model, size, task and vocabulary."""
  for name in RUN_FLAGS:
    was = record['flags'].get(name)
    if FLAGS[name].value != was:
      raise app.UsageError(
          f'--{name}={FLAGS[name].value} but the run in {FLAGS.output_dir} was trained with '
          f'--{name}={was} ({os.path.join(FLAGS.output_dir, CONFIG_FILE)}): resume it with the '
          'same flags, or give another --output_dir')


def use_recorded_flags(record):
  """--mode=eval/predict: every flag not given on the command line takes the training run's
  value, and --vocab its vocabulary file."""
  for name, value in record['flags'].items():
    if name in FLAGS and name not in NOT_RECORDED and not FLAGS[name].present:
      FLAGS[name].value = value
  if not FLAGS['vocab'].present:
    FLAGS.vocab = record['vocab_file']


# ----------------------------------------------------------------------------------------------
# Checkpoints (load_ckpt.py writes T5X's layout): output_dir/checkpoints holds the latest,
# output_dir/best the best by the task's metric (paper §4.1).
# ----------------------------------------------------------------------------------------------

def _global_arrays(tree, shardings):
  """Host numpy arrays (the same on every process) -> global arrays laid out by `shardings`."""
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                                lambda index: x[index]),
                      tree, shardings)


def is_enct5_checkpoint(path):
  return 'target/decoder/class_projection/kernel' in load_ckpt.flatten(load_ckpt.read_index(path))


def checkpoint_step(path):
  """The Adafactor step stored in a checkpoint (0 if it has no optimizer state)."""
  if 'state/step' not in load_ckpt.flatten(load_ckpt.read_index(path)):
    return 0
  return int(load_ckpt.read_t5x(path, ['state/step'])['state']['step'])


def restore_latest(ckpt_dir, shardings):
  """(params, opt_state) of the newest checkpoint in `ckpt_dir` that reads back whole. A
  damaged one (e.g. a truncated array file) is said so, renamed `<name>.damaged` (kept to look
  at, out of the way of the step that saves it again) and the previous one is tried."""
  for _, path in reversed(load_ckpt.complete_checkpoints(ckpt_dir)):
    try:
      params, opt_state = load_ckpt.read_checkpoint(path, shardings=shardings.params,
                                                    opt_shardings=shardings.opt_state)
    except load_ckpt.CheckpointError as e:
      logging.warning('%s is damaged, not resuming from it (renamed %s.damaged): %s', path,
                      path, e)
      if jax.process_index() == 0:
        os.rename(path, f'{path}.damaged')
      continue
    logging.info('resuming from %s', path)
    return params, opt_state
  raise UserError(f'every checkpoint in {ckpt_dir} is damaged (see the log); remove '
                  f'{FLAGS.output_dir} to start over')


def load_checkpoint(path, cfg, shardings, *, with_optimizer_state):
  """Params (and Adafactor state) from an EncT5 checkpoint of ours or a T5.1.1 checkpoint (T5's
  and 1decT5's checkpoints of ours are T5.1.1 checkpoints)."""
  if FLAGS.model == 'enct5' and is_enct5_checkpoint(path):
    tree = load_ckpt.read_t5x(path, ['target', 'state'] if with_optimizer_state else ['target'])
    got = tree['target']['decoder']['class_projection']['bias'].shape
    if got != (cfg.num_outputs,):
      raise ValueError(f'{path}: its head has {got[0]} outputs; task needs {cfg.num_outputs}')
    params = _global_arrays(tree['target'], shardings.params)
    if not with_optimizer_state:
      return params
    return params, _global_arrays(tree['state'], shardings.opt_state)
  rng = jax.random.PRNGKey(FLAGS.seed)
  load = lambda **kwargs: load_ckpt.load_params(
      path, cfg, rng, model=FLAGS.model, shardings=shardings.params,
      fresh_pooling_block=FLAGS.fresh_pooling_block, **kwargs)
  if not with_optimizer_state:
    return load()
  if 'state/step' not in load_ckpt.flatten(load_ckpt.read_index(path)):
    logging.info('%s has no optimizer state: Adafactor starts from zeros', path)
    params = load()
    return params, jax.jit(adafactor.init, out_shardings=shardings.opt_state)(params)
  return load(with_optimizer_state=True, opt_shardings=shardings.opt_state)


# ----------------------------------------------------------------------------------------------
# Evaluation and prediction: EncT5's packed inference, the padding class ignored
# (enct5.predict); T5's and 1decT5's greedy decoding, the text mapped back to a label.
# ----------------------------------------------------------------------------------------------

def load_eval_split(task, data_dir, split, vocab):
  """(examples, rows) of a split as the eval step reads them: EncT5's packed rows (one example
  a row with --nopack); one example a row for T5 and 1decT5, which decode greedily."""
  pack = FLAGS.pack and not MODELS[FLAGS.model].labels_as_text
  return glue.load_packed(task, data_dir, split, vocab, FLAGS.max_input_length,
                          FLAGS.max_target_length if pack else 1,
                          method='best_fit' if pack else 'unpacked')


def infer(eval_step, params, packed, cfg, shardings, labels=None):
  """Per-example predictions of a split's rows -> (example ids ascending, predictions).
  `labels`: the LabelText that T5 and 1decT5 decode with."""
  model = MODELS[FLAGS.model]
  outputs = []
  for batch in packing.eval_batches(packed, FLAGS.batch_size):
    inputs = {k: batch[k] for k in model.eval_keys}
    out = eval_step(params, partitioning.global_batch(inputs, shardings.batch))
    outputs.append(model.predictions(np.asarray(out), cfg, labels))
  return packing.per_example(packed['example_ids'], np.concatenate(outputs))


def evaluate(eval_step, params, task, eval_sets, cfg, shardings, labels=None):
  """The task's GLUE metrics on its validation split(s) -> {'<eval name>/<metric>': value}.

  NOTE: every model is scored against the TSV's labels; for STS-B that is the raw score, where
  T5 compares with its rounded target strings.
  """
  scores = {}
  for split, (examples, packed) in eval_sets.items():
    ids, predictions = infer(eval_step, params, packed, cfg, shardings, labels)
    gold = {example.idx: example.label for example in examples}
    gold = [gold[i] for i in ids]
    invalid = predictions == glue.INVALID_PREDICTION
    if not task.is_regression and invalid.any():
      logging.info('%s: %d of %d decoded strings are no label; counted wrong', split,
                   invalid.sum(), len(predictions))
    scores.update(glue.compute_metrics(task, split, gold, predictions))
  return scores


def prediction_file(task, split):
  """GLUE submission names: SST-2.tsv, MNLI-m.tsv, MNLI-mm.tsv, ...; other splits get theirs."""
  if split == 'test':
    return f'{task.dir_name}.tsv'
  if split in ('test_matched', 'test_mismatched'):
    return f'{task.dir_name}-{"m" if split == "test_matched" else "mm"}.tsv'
  return f'{task.dir_name}.{split}.tsv'


def inference_checkpoint():
  """--checkpoint, else the best, else the latest checkpoint in --output_dir."""
  path = (FLAGS.checkpoint or load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir, 'best'))
          or load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir, 'checkpoints')))
  if not path:
    raise FileNotFoundError(f'--mode={FLAGS.mode}: no --checkpoint and no checkpoint in '
                            f'{FLAGS.output_dir}/best or {FLAGS.output_dir}/checkpoints')
  return path


def evaluate_or_predict(task, data_dir, mesh, record):
  """--mode=eval: the task's metrics on its validation split(s). --mode=predict: GLUE
  submission TSVs (index, prediction) for --predict_split into output_dir/predictions.
  `record`: the training run's config.json (its model config), or None."""
  path = inference_checkpoint()
  vocab = glue.load_vocab(vocab_file(task, None, must_exist=True))
  labels = glue.LabelText(task, vocab) if MODELS[FLAGS.model].labels_as_text else None
  cfg = enct5.EncT5Config(**record['config']) if record else model_config(task, vocab, path)
  shardings = partitioning.Shardings(enct5.param_specs(cfg, FLAGS.model), mesh)
  if FLAGS.model == 'enct5' and not is_enct5_checkpoint(path):
    logging.warning('%s is a T5.1.1 checkpoint: the EncT5 head is untrained', path)
  params = load_checkpoint(path, cfg, shardings, with_optimizer_state=False)
  eval_step = make_eval_step(cfg, shardings, FLAGS.model,
                             decode_length=labels.decode_length if labels else None)
  logging.info('%s with %s', FLAGS.mode, path)
  if FLAGS.mode == 'eval':
    eval_sets = {split: load_eval_split(task, data_dir, split, vocab)
                 for split in task.eval_names}
    scores = evaluate(eval_step, params, task, eval_sets, cfg, shardings, labels)
    logging.info('eval %s | %s | score %.2f', path,
                 ' '.join(f'{k} {v:.2f}' for k, v in scores.items()),
                 glue.task_score(task, scores))
    return scores
  splits = ([s for s in task.files if s.startswith('test')] if FLAGS.predict_split == 'test'
            else [FLAGS.predict_split])
  written = []
  for split in splits:
    _, packed = load_eval_split(task, data_dir, split, vocab)
    ids, predictions = infer(eval_step, params, packed, cfg, shardings, labels)
    written.append(write_predictions(task, split, ids, predictions))
  return written


def write_predictions(task, split, ids, predictions):
  """OUTPUT_DIR/predictions/<GLUE submission name>: index and predicted label per line."""
  invalid = predictions == glue.INVALID_PREDICTION
  if not task.is_regression and invalid.any():
    logging.warning('%s: %d of %d decoded strings are no label; written as %r (a submission '
                    'needs one)', split, invalid.sum(), len(predictions), task.raw_label(1))
    predictions = np.maximum(predictions, 1)
  out = os.path.join(FLAGS.output_dir, 'predictions', prediction_file(task, split))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      f.write('index\tprediction\n')
      f.writelines(f'{i}\t{task.raw_label(p)}\n' for i, p in zip(ids, predictions))
    logging.info('wrote %d predictions to %s', len(ids), out)
  return out


# ----------------------------------------------------------------------------------------------
# The loop: `prepare_run` (data, vocabulary, model, state), then `train_loop`.
# ----------------------------------------------------------------------------------------------

class Run(NamedTuple):
  """A fine-tuning run, prepared: what `train_loop` needs."""
  task: glue.Task
  cfg: enct5.EncT5Config
  shardings: partitioning.Shardings
  labels: object      # the glue.LabelText that T5 and 1decT5 train and decode with, else None
  packed: dict        # the training rows
  eval_sets: dict     # validation split -> (examples, rows)
  params: dict
  opt_state: dict
  start: int          # fine-tuning steps taken before this run (resumed), 0 for a new run
  best: dict          # the best evaluation so far (a metrics.jsonl record), or None
  record: bytes       # config.json, written into OUTPUT_DIR and every checkpoint


def prepare_run(task, data_dir, mesh):
  """Reads and packs the data, fixes the vocabulary and the model, writes config.json, and
  restores the state: the latest checkpoint in OUTPUT_DIR, else --checkpoint, else random."""
  model = MODELS[FLAGS.model]
  train_examples = glue.read_split(task, data_dir, 'train')
  vocab_path = vocab_file(task, train_examples)
  vocab = glue.load_vocab(vocab_path)
  labels = glue.LabelText(task, vocab) if model.labels_as_text else None
  ckpt_dir = os.path.join(FLAGS.output_dir, 'checkpoints')
  latest = load_ckpt.latest_checkpoint(ckpt_dir)
  cfg = model_config(task, vocab, latest or FLAGS.checkpoint)
  shardings = partitioning.Shardings(enct5.param_specs(cfg, FLAGS.model), mesh)
  logging.info('%s %s: %s parameters; mesh %s', model.name, cfg,
               f'{enct5.count_params(cfg, FLAGS.model):,}', dict(mesh.shape))
  record = run_record(cfg, vocab_path)
  if jax.process_index() == 0:
    _write_atomically(os.path.join(FLAGS.output_dir, CONFIG_FILE), record)

  # Data: the training split packed once; rows shuffled per epoch by (seed, epoch), so the
  # batch of step s is the same whether or not the run was interrupted (packing.train_batches).
  # EncT5 with --nopack: one example, one slot a row; T5's decoder rows keep their length.
  targets = FLAGS.max_target_length if FLAGS.pack or labels else 1
  packed = glue.pack_split(task, train_examples, vocab, FLAGS.max_input_length, targets,
                           method='best_fit' if FLAGS.pack else 'unpacked', labels=labels,
                           path=glue.split_path(task, data_dir, 'train'))
  eval_sets = {split: load_eval_split(task, data_dir, split, vocab)
               for split in task.eval_names}
  info = packing.stats(packed)
  logging.info('train: %d examples in %d rows of %d tokens (packing efficiency %.3f); '
               '%.1f steps per epoch', info['examples'], info['rows'], FLAGS.max_input_length,
               info['efficiency'], info['rows'] / FLAGS.batch_size)

  continued = FLAGS.checkpoint and FLAGS.load_optimizer_state
  base_step = checkpoint_step(FLAGS.checkpoint) if continued else 0
  if latest:
    params, opt_state = restore_latest(ckpt_dir, shardings)
  elif continued:
    params, opt_state = load_checkpoint(FLAGS.checkpoint, cfg, shardings,
                                        with_optimizer_state=True)
    logging.info('fine-tuning %s from Adafactor step %d', FLAGS.checkpoint, base_step)
  elif FLAGS.checkpoint:
    params = load_checkpoint(FLAGS.checkpoint, cfg, shardings, with_optimizer_state=False)
    opt_state = jax.jit(adafactor.init, out_shardings=shardings.opt_state)(params)
    logging.info('fine-tuning %s with a fresh Adafactor state (--noload_optimizer_state)',
                 FLAGS.checkpoint)
  else:
    params, opt_state = init_train_state(cfg, shardings, jax.random.PRNGKey(FLAGS.seed),
                                         FLAGS.model)
    logging.info('random init (seed %d)', FLAGS.seed)
  start = int(jax.device_get(opt_state['step'])) - base_step
  best = max(read_metrics(until_step=start), key=lambda r: r['score'], default=None)
  return Run(task, cfg, shardings, labels, packed, eval_sets, params, opt_state, start, best,
             record)


def train_loop(run):
  """Fine-tunes up to --train_steps; logs every --log_every steps; every --eval_every steps
  (and at the end) evaluates, keeps the best and saves a checkpoint. SIGTERM or SIGINT: the
  step finishes, a checkpoint is saved, exit status INTERRUPTED. -> the best record."""
  model = MODELS[FLAGS.model]
  train_step = make_train_step(run.cfg, run.shardings, model.loss, FLAGS.learning_rate,
                               FLAGS.seed)
  eval_step = make_eval_step(run.cfg, run.shardings, FLAGS.model,
                             decode_length=run.labels.decode_length if run.labels else None)
  batches = packing.train_batches(run.packed, FLAGS.batch_size, FLAGS.seed,
                                  start_step=run.start)
  meter = Meter(run)
  params, opt_state, best = run.params, run.opt_state, run.best
  with stop_on_signals() as received:
    for step in range(run.start + 1, FLAGS.train_steps + 1):
      batch = next(batches)
      inputs = {k: batch[k] for k in model.train_keys}
      batch_arrays = partitioning.global_batch(inputs, run.shardings.batch)
      params, opt_state, metrics = train_step(params, opt_state, batch_arrays)
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        good = load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir, 'checkpoints'))
        raise NonFiniteLoss(
            f'loss is {loss} at step {step}: stopping. The last good checkpoint, '
            f'{good or "(none saved yet)"}, is left as it is; try a lower --learning_rate, '
            '--dtype=float32 or another --seed.')
      meter.add(batch, metrics)
      last = step == FLAGS.train_steps
      if step % FLAGS.log_every == 0 or last:
        meter.log(step)
      if step % FLAGS.eval_every == 0 or last:
        eval_start = time.time()
        best = save_and_evaluate(run, eval_step, params, opt_state, step, meter, best)
        meter.pause(time.time() - eval_start)
      elif received:
        save_checkpoint(run, params, opt_state, 'checkpoints', FLAGS.keep_checkpoints)
      if received:
        logging.warning('signal %d: stopped after step %d, checkpoint in %s; run the same '
                        'command again to resume', received[0], step,
                        os.path.join(FLAGS.output_dir, 'checkpoints'))
        raise SystemExit(INTERRUPTED)
  return best


@contextlib.contextmanager
def stop_on_signals():
  """Inside, SIGTERM and SIGINT append to the list it yields (the loop finishes its step,
  saves and exits with INTERRUPTED); the previous handlers come back after."""
  received = []
  previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
              for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def save_checkpoint(run, params, opt_state, directory, keep):
  """OUTPUT_DIR/<directory>/checkpoint_<Adafactor step>, with config.json; the newest `keep`
  are kept."""
  return load_ckpt.save_checkpoint(os.path.join(FLAGS.output_dir, directory),
                                   int(jax.device_get(opt_state['step'])), params, opt_state,
                                   keep=keep, extra_files={CONFIG_FILE: run.record})


def save_and_evaluate(run, eval_step, params, opt_state, step, meter, best):
  """Evaluates the state, makes it OUTPUT_DIR/best if it is the best so far, appends it to
  metrics.jsonl, and checkpoints it, in this order: a checkpoint's evaluation is always
  recorded (rows after the checkpoint resumed from are dropped, `read_metrics`). -> the best
  record."""
  t5x_step = int(jax.device_get(opt_state['step']))
  scores = evaluate(eval_step, params, run.task, run.eval_sets, run.cfg, run.shardings,
                    run.labels)
  score = glue.task_score(run.task, scores)
  record = dict(step=step, t5x_step=t5x_step, train_loss=meter.train_loss_since_eval(),
                scores=scores, score=score, elapsed_s=round(meter.elapsed(), 1))
  if best is None or score > best['score']:
    save_checkpoint(run, params, opt_state, 'best', keep=1)
    best = record
  append_metrics(record)
  save_checkpoint(run, params, opt_state, 'checkpoints', FLAGS.keep_checkpoints)
  logging.info('eval step %d | %s | best %.2f at step %d', step,
               ' '.join(f'{k} {v:.2f}' for k, v in scores.items()), best['score'], best['step'])
  return best


class Meter:
  """The numbers of the training log: loss per example, examples and tokens per second, packing,
  model FLOPs utilization (MFU), ETA. Time spent evaluating is left out (`pause`)."""

  def __init__(self, run):
    self.start_step = run.start
    targets = run.packed['decoder_target_tokens' if run.labels else 'targets']  # [rows, T]
    self.flops_per_step = enct5.train_step_flops(run.cfg, FLAGS.model, FLAGS.batch_size,
                                                 FLAGS.max_input_length, targets.shape[1])
    self.peak_flops = matmul_peak_flops(run.cfg.activation_dtype) * jax.device_count()
    logging.info('model FLOPs per step %.3g; matmul peak %.3g FLOP/s (%d devices, %s)',
                 self.flops_per_step, self.peak_flops, jax.device_count(), run.cfg.dtype)
    self.run_start = self.interval_start = time.time()
    self.paused = 0.0
    self.interval = dict(loss_sum=0.0, examples=0, tokens=0, slots=0, steps=0)
    self.since_eval = dict(loss_sum=0.0, examples=0)

  def add(self, batch, metrics):
    for acc in (self.interval, self.since_eval):
      acc['loss_sum'] += float(metrics['loss_sum'])
      acc['examples'] += int(metrics['num_examples'])
    self.interval['tokens'] += int((batch['inputs_segment_ids'] > 0).sum())
    self.interval['slots'] += batch['inputs'].size
    self.interval['steps'] += 1

  def log(self, step):
    now = time.time()
    seconds, i = now - self.interval_start, self.interval
    per_step = self.elapsed() / (step - self.start_step)
    mfu = self.flops_per_step * i['steps'] / seconds / self.peak_flops
    logging.info('step %d/%d | loss %.4f | %.0f examples/s | %.0f tokens/s | packing %.2f '
                 '| MFU %.1f%% | ETA %s', step, FLAGS.train_steps,
                 i['loss_sum'] / max(i['examples'], 1), i['examples'] / seconds,
                 i['tokens'] / seconds, i['tokens'] / i['slots'], 100 * mfu,
                 duration(per_step * (FLAGS.train_steps - step)))
    self.interval = dict(loss_sum=0.0, examples=0, tokens=0, slots=0, steps=0)
    self.interval_start = now

  def train_loss_since_eval(self):
    loss = self.since_eval['loss_sum'] / max(self.since_eval['examples'], 1)
    self.since_eval = dict(loss_sum=0.0, examples=0)
    return loss

  def pause(self, seconds):
    self.paused += seconds
    self.interval_start += seconds

  def elapsed(self):
    """Seconds of training since the run started, evaluations left out."""
    return time.time() - self.run_start - self.paused


def matmul_peak_flops(dtype, size=2048):
  """FLOP/s of one device's best of a few [size, size] @ [size, size] matmuls in `dtype`: the
  practical peak that MFU is measured against (bench.py measures it the same way)."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def duration(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class NonFiniteLoss(FloatingPointError):
  pass


def read_metrics(until_step=None):
  """metrics.jsonl's rows; with `until_step` (resuming), the rows after it are dropped from
  the file too: the resumed run writes them again."""
  path = os.path.join(FLAGS.output_dir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if until_step is None:
    return rows
  kept = [row for row in rows if row['step'] <= until_step]
  if len(kept) < len(rows) and jax.process_index() == 0:
    _write_atomically(path, ''.join(json.dumps(row) + '\n' for row in kept).encode())
  return kept


def append_metrics(record):
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.output_dir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

# Plain `python train.py`: a tiny model, short rows, a few hundred steps (flags given on the
# command line still win).
DEMO_FLAGS = dict(size='tiny', vocab_size=1000, max_input_length=128, max_target_length=16,
                  batch_size=16, train_steps=300, eval_every=100, log_every=25)
GLUE_PLACES = (os.path.join(glue.SHARED, 'glue'), 'glue_data')


def _demo_setup(with_demo_flags):
  """The demo's data, written into OUTPUT_DIR/data (and its flags, unless given) -> data dir."""
  for name, value in DEMO_FLAGS.items():
    if name == 'size' and FLAGS.checkpoint:
      continue  # the checkpoint's shape is the model's
    if with_demo_flags and not FLAGS[name].present:
      FLAGS[name].value = value
  if FLAGS.data_dir:
    raise app.UsageError('--data_dir needs --task (one of %s)' % ', '.join(sorted(glue.TASKS)))
  if FLAGS.output_dir is None:
    FLAGS.output_dir = tempfile.mkdtemp(prefix='enct5_demo_')
  logging.info('no --task: the demo. A generated task (sentences of made-up words; is there more '
               '"good" than "bad" cue words?), a SentencePiece model trained on it, a tiny '
               '%s trained from scratch, in %s', MODELS[FLAGS.model].name, FLAGS.output_dir)
  for place in GLUE_PLACES:
    if os.path.isdir(place):
      logging.info('GLUE data found at %s: fine-tune on it with e.g. `python train.py '
                   '--task=sst2 --data_dir=%s --size=tiny`', os.path.normpath(place),
                   os.path.normpath(os.path.join(place, 'SST-2')))
  data_dir = os.path.join(FLAGS.output_dir, 'data', glue.DEMO_TASK.dir_name)
  # Every process writes the same files (same seed), atomically; dev.tsv is written last.
  if not os.path.isfile(os.path.join(data_dir, glue.DEMO_TASK.files['validation'])):
    glue.write_demo_task(data_dir, FLAGS.seed)
  return data_dir


LOCK_FILE = 'lock'


def lock_output_dir():
  """OUTPUT_DIR/lock, held (fcntl.flock) while the returned file is open: a second run in the
  same directory stops. The OS releases it when the process ends, however it ends."""
  path = os.path.join(FLAGS.output_dir, LOCK_FILE)
  try:
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    f = open(path, 'a+')
  except OSError as e:
    raise UserError(f'--output_dir={FLAGS.output_dir} cannot be written: {e}') from None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    raise UserError(f'--output_dir={FLAGS.output_dir} is in use by another run (process '
                    f'{f.read().strip() or "?"} holds {path}): wait for it, stop it, or give '
                    'another --output_dir') from None
  f.truncate(0)
  f.write(f'{os.getpid()}\n')
  f.flush()
  return f


def main(argv):
  """`run_command`, a user's mistake answered with one line on stderr and exit status
  USER_ERROR (ENCT5_TRACEBACK=1: with the traceback)."""
  try:
    run_command(argv)
  except (UserError, app.UsageError, glue.DataError, load_ckpt.CheckpointError, OSError) as e:
    if os.environ.get('ENCT5_TRACEBACK'):
      raise
    message = str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      message += ('; free some space (or move --output_dir), then run the same command to '
                  'resume from the last checkpoint')
    print(f'train.py: error: {message}', file=sys.stderr)
    raise SystemExit(USER_ERROR) from None


def run_command(argv):
  """Train (resuming), evaluate or predict, as the flags say."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  logging.get_absl_handler().setFormatter(
      std_logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
  partitioning.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.output_dir is None and FLAGS.task:
    FLAGS.output_dir = os.path.join('runs', FLAGS.task)
  record = read_run_record() if FLAGS.output_dir else None
  recorded_flags = record is not None and FLAGS.mode != 'train'
  if recorded_flags:
    use_recorded_flags(record)
  check_flags()
  demo = FLAGS.task is None
  if demo:
    data_dir = _demo_setup(with_demo_flags=not recorded_flags)
  elif FLAGS.data_dir is None:
    found = [p for p in GLUE_PLACES if os.path.isdir(p)]
    hint = f' (GLUE data found: --data_dir={os.path.normpath(found[0])})' if found else ''
    raise app.UsageError(f'--task={FLAGS.task} needs --data_dir{hint}')
  else:
    data_dir = FLAGS.data_dir
  if record and FLAGS.mode == 'train':
    check_same_run(record)
  task = glue.get_task(glue.DEMO_TASK.name if demo else FLAGS.task)
  glue.task_dir(task, data_dir)  # fails early if the task's files are not there
  if FLAGS.mode == 'train':
    for split in ('train', *task.eval_names):
      glue.split_path(task, data_dir, split)
  try:
    mesh = partitioning.make_mesh(FLAGS.mesh)
  except ValueError as e:
    raise UserError(str(e)) from None
  if FLAGS.batch_size % mesh.shape['data']:
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} must be a multiple of the mesh\'s '
                         f'data axis ({mesh.shape["data"]})')
  if FLAGS.mode != 'train':
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    evaluate_or_predict(task, data_dir, mesh, record)
    return
  with (lock_output_dir() if jax.process_index() == 0 else contextlib.nullcontext()):
    fine_tune(task, data_dir, mesh, demo)


def fine_tune(task, data_dir, mesh, demo):
  """--mode=train: `prepare_run`, then `train_loop`; the learning curve logged."""
  try:
    run = prepare_run(task, data_dir, mesh)
    if run.start >= FLAGS.train_steps:
      logging.info('already trained %d of --train_steps=%d steps; nothing to do', run.start,
                   FLAGS.train_steps)
      best = run.best
    else:
      best = train_loop(run)
  except NonFiniteLoss as e:
    logging.error('%s', e)
    raise SystemExit(1)
  curve = read_metrics()
  if curve:
    logging.info('learning curve (validation %s): %s', ', '.join(task.metric_keys),
                 ', '.join(f'step {r["step"]}: {r["score"]:.1f}' for r in curve))
    logging.info('best %.2f at step %d: %s/best', best['score'], best['step'], FLAGS.output_dir)
  if demo and curve:
    logging.info('final validation accuracy %.1f%% (chance: 50%%)', curve[-1]['score'])


if __name__ == '__main__':
  app.run(main)
