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
  python train.py ... --mode=eval                    # metrics of OUTPUT_DIR/best
  python train.py ... --mode=predict                 # GLUE submission TSVs
  python train.py ... --model=t5                     # the T5 baseline (paper §4.3): labels as
                                                     # text, predictions decoded greedily

Re-running the same command resumes from OUTPUT_DIR/checkpoints exactly. Many hosts: run the
same command on each with --coordinator_address, --num_processes and --process_id.

Flags by section (each explained below, in alphabetical order):
  task and data      --task --data_dir --vocab --vocab_size --max_input_length
                     --max_target_length --pack
  model              --model --checkpoint --size --d_model --num_heads --head_dim --d_ff
                     --num_layers --dropout_rate --dtype --remat_policy
                     --scan_layers
  training           --batch_size --learning_rate --train_steps --eval_every --log_every
                     --keep_checkpoints --seed
  devices and hosts  --mesh --coordinator_address --num_processes --process_id
                     --compilation_cache
  run                --mode --predict_split --output_dir

Reads top-down: flags; Adafactor (T5X `t5x/adafactor.py`); sharding over a ('data', 'model')
mesh (T5X's partitioning rules, `jax.jit` with `NamedSharding`); the models (all that differs
between EncT5, T5 and 1decT5); the train and eval steps; data; checkpoints; evaluation; the
loop; main.
"""
import json
import logging as std_logging
import os
import tempfile
import time
from typing import Callable, NamedTuple

from absl import app, flags, logging
import numpy as np
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import tensorstore as ts

import adafactor
import enct5
import glue
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
                    'cc_all.32000/sentencepiece.model). Unset: a new one is trained on the task\'s '
                    'training text into OUTPUT_DIR/vocab/ (for training from scratch).')
flags.DEFINE_integer('vocab_size', 8000, 'Pieces (at most) of the SentencePiece model trained when '
                     '--vocab is unset.')
flags.DEFINE_integer('max_input_length', 512, 'Tokens per packed input row (L); longer examples '
                     'are truncated, keeping their EOS.')
flags.DEFINE_integer('max_target_length', 62, 'Example slots per packed row (T): at most this '
                     'many examples share a row (paper: 62). --model=t5/1dect5: decoder tokens '
                     'per packed row (T5X\'s targets length), each example taking its label\'s '
                     'tokens and EOS.')
flags.DEFINE_bool('pack', True, 'Pack several examples per row (paper §3); --nopack: one '
                  'example per row.')

# Model.
flags.DEFINE_enum('model', 'enct5', ['enct5', 't5', '1dect5'], 'enct5: the T5 encoder, the '
                  'pooling block and a class head (paper §3). t5: the full T5.1.1 '
                  'encoder-decoder, labels as T5 text, predictions decoded greedily and mapped '
                  'back to labels (§4.3 baseline). 1dect5: the same with only the first decoder '
                  'layer (§4.3).')
flags.DEFINE_string('checkpoint', None, 'T5.1.1 checkpoint in T5X format, local or gs:// (e.g. '
                    'gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000): its '
                    'encoder and first decoder layer are loaded with their Adafactor state '
                    '(paper §4.2; --model=t5: all of it; 1dect5: all but decoder layers 1 and '
                    'up), and its shapes fix the model. Unset: random init. With '
                    '--mode=eval/predict: the checkpoint to use (default OUTPUT_DIR/best).')
flags.DEFINE_enum('size', None, list(enct5.SIZES), 'T5.1.1 size. With --checkpoint: checked '
                  'against it. Without: the model to train from scratch (default tiny).')
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
                  'layer\'s input; about one more forward pass of compute). Same numbers.')
flags.DEFINE_bool('scan_layers', False, 'Run each stack\'s layers as one lax.scan (T5X\'s '
                  'option): compile time and program size no longer grow with depth (xl, xxl). '
                  'Same numbers; checkpoints keep one tree per layer.')

# Training.
flags.DEFINE_integer('batch_size', 128, 'Packed rows per global batch (T5: 128 rows of 512 '
                     'tokens), split over the mesh\'s data axis and the processes.')
flags.DEFINE_float('learning_rate', 1e-3, 'Adafactor\'s constant learning rate (paper §4.1).')
flags.DEFINE_integer('train_steps', 262144, 'Fine-tuning steps (T5: 2^18), counted from the '
                     'start of fine-tuning, not from the checkpoint\'s step.')
flags.DEFINE_integer('eval_every', 1000, 'Evaluate on the validation split(s) and save a '
                     'checkpoint every this many steps (and at the end).')
flags.DEFINE_integer('log_every', 100, 'Steps per training log line.')
flags.DEFINE_integer('keep_checkpoints', 2, 'Latest checkpoints kept in OUTPUT_DIR/checkpoints.')
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


_ENCT5_KEYS = ('inputs', 'inputs_segment_ids', 'inputs_positions', 'targets')
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
# Data: a GLUE task (glue.py: TSV -> T5 text -> SentencePiece -> packed rows), or the demo task.
# ----------------------------------------------------------------------------------------------

def task_dir(task, data_dir):
  """`data_dir` is the GLUE root (holding SST-2/, ...) or the task's own folder."""
  own = os.path.join(data_dir, task.dir_name)
  if os.path.isdir(own):
    return own
  if any(os.path.isfile(os.path.join(data_dir, f)) for f in task.files.values()):
    return data_dir
  raise FileNotFoundError(f'--data_dir={data_dir}: found neither {own}/ nor the {task.name} '
                          f'files {sorted(set(task.files.values()))} in it')


def read_split(task, directory, split):
  if split not in task.files:
    raise ValueError(f'task {task.name} has no split {split!r}; it has {sorted(task.files)}')
  path = os.path.join(directory, task.files[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found (the {split} split of {task.name})')
  return glue.read_tsv(task, path, labeled=not split.startswith('test'))


def pack_split(task, examples, vocab, path):
  """Tokenized rows as the model reads them: EncT5's packed rows (one example per row, one
  slot, with --nopack); for T5 and 1decT5 one example per row (greedy decoding reads one
  example per row; their training rows are `pack_train_split`'s)."""
  tokenized, _ = glue.tokenize(vocab, examples, FLAGS.max_input_length, path=path)
  pack = FLAGS.pack and not MODELS[FLAGS.model].labels_as_text
  return packing.pack_examples(
      tokenized, FLAGS.max_input_length, FLAGS.max_target_length if pack else 1,
      method='best_fit' if pack else 'unpacked', regression=task.is_regression,
      ids=[example.idx for example in examples])


def pack_train_split(task, examples, vocab, path, labels):
  """The training rows: `pack_split`'s, or for T5 and 1decT5 (`labels`, a LabelText) the inputs
  packed with their labels as T5 text in the decoder rows (`packing.pack_seq2seq_examples`)."""
  if labels is None:
    return pack_split(task, examples, vocab, path)
  tokenized, _ = glue.tokenize(vocab, examples, FLAGS.max_input_length, path=path)
  targets = labels.tokens([example.label for example in examples])
  return packing.pack_seq2seq_examples(
      [(tokens, target) for (tokens, _), target in zip(tokenized, targets)],
      FLAGS.max_input_length, FLAGS.max_target_length,
      method='best_fit' if FLAGS.pack else 'unpacked', ids=[example.idx for example in examples])


CHECKPOINT_VOCAB = 'sentencepiece.model'  # a checkpoint's own vocabulary, if it has one


def _local_copy(path, directory):
  """A gs:// file copied into `directory` (SentencePiece reads local files only)."""
  if not path.startswith('gs://'):
    return path
  bucket, _, key = path[len('gs://'):].partition('/')
  parent, _, name = key.rpartition('/')
  store = ts.KvStore.open({'driver': 'gcs', 'bucket': bucket, 'path': parent + '/'}).result()
  result = store.read(name).result()
  if result.state != 'value':
    raise FileNotFoundError(f'--vocab {path} not found')
  os.makedirs(directory, exist_ok=True)
  local = os.path.join(directory, name)
  with open(local, 'wb') as f:
    f.write(result.value)
  return local


def get_vocab(task, train_examples, *, must_exist=False):
  """--vocab, or the `sentencepiece.model` inside --checkpoint (pretrain.py writes it there), or
  the SentencePiece model trained earlier into output_dir/vocab/, or one trained now on the
  task's training text. Every process uses process 0's model file."""
  vocab_dir = os.path.join(FLAGS.output_dir, 'vocab')
  if FLAGS.vocab:
    return glue.load_vocab(_local_copy(FLAGS.vocab, vocab_dir))
  beside_checkpoint = os.path.join(FLAGS.checkpoint or '', CHECKPOINT_VOCAB)
  if FLAGS.checkpoint and os.path.isfile(beside_checkpoint):
    logging.info('no --vocab: using the checkpoint\'s vocabulary, %s', beside_checkpoint)
    return glue.load_vocab(beside_checkpoint)
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
  return glue.load_vocab(path)


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


# ----------------------------------------------------------------------------------------------
# The model's shape: from the checkpoint when there is one, else from --size (+ overrides).
# ----------------------------------------------------------------------------------------------

SHAPE_FLAGS = ('d_model', 'num_heads', 'head_dim', 'd_ff', 'num_layers')


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
      raise ValueError(f'the checkpoint {checkpoint} does not match the flags: '
                       + '; '.join(wrong))
    cfg = enct5.get_config(FLAGS.size or 'small', **shape, **options)
  else:
    # A from-scratch vocabulary of N pieces: N rounded up to a multiple of 128, as T5's 32128.
    # T5.1.1 has as many decoder layers as encoder layers; EncT5 and 1decT5 keep the first.
    vocab_size = -(-vocab.GetPieceSize() // 128) * 128
    num_layers = overrides.get('num_layers', enct5.SIZES[FLAGS.size or 'tiny']['num_layers'])
    num_decoder_layers = num_layers if FLAGS.model == 't5' else 1
    cfg = enct5.get_config(FLAGS.size or 'tiny', vocab_size=vocab_size,
                           num_decoder_layers=num_decoder_layers,
                           **overrides, **options)
  glue.check_vocab_fits(vocab, cfg.vocab_size)
  return cfg


# ----------------------------------------------------------------------------------------------
# Checkpoints (load_ckpt.py writes T5X's layout): output_dir/checkpoints holds the latest,
# output_dir/best the best by the task's metric (paper §4.1).
# ----------------------------------------------------------------------------------------------

def _place(tree, shardings):
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


def load_params(path, cfg, shardings, *, with_optimizer_state):
  """Params (and Adafactor state) from an EncT5 checkpoint of ours or a T5.1.1 checkpoint (T5's
  and 1decT5's checkpoints of ours are T5.1.1 checkpoints)."""
  if FLAGS.model == 'enct5' and is_enct5_checkpoint(path):
    tree = load_ckpt.read_t5x(path, ['target', 'state'] if with_optimizer_state else ['target'])
    got = tree['target']['decoder']['class_projection']['bias'].shape
    if got != (cfg.num_outputs,):
      raise ValueError(f'{path}: its head has {got[0]} outputs; task needs {cfg.num_outputs}')
    params = _place(tree['target'], shardings.params)
    return (params, _place(tree['state'], shardings.opt_state)) if with_optimizer_state else params
  rng = jax.random.PRNGKey(FLAGS.seed)
  load = lambda **kwargs: load_ckpt.load_params(path, cfg, rng, model=FLAGS.model,
                                                shardings=shardings.params, **kwargs)
  if not with_optimizer_state:
    if FLAGS.model == 'enct5':
      logging.warning('%s is a T5.1.1 checkpoint: the EncT5 head is untrained', path)
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


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------

def _duration(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class NonFiniteLoss(FloatingPointError):
  pass


def fine_tune(task, directory, mesh):
  """Fine-tune; evaluate every --eval_every steps; keep the latest and the best checkpoint."""
  model = MODELS[FLAGS.model]
  train_examples = read_split(task, directory, 'train')
  vocab = get_vocab(task, train_examples)
  labels = glue.LabelText(task, vocab) if model.labels_as_text else None
  ckpt_dir = os.path.join(FLAGS.output_dir, 'checkpoints')
  best_dir = os.path.join(FLAGS.output_dir, 'best')
  latest = load_ckpt.latest_checkpoint(ckpt_dir)
  cfg = model_config(task, vocab, latest or FLAGS.checkpoint)
  shardings = partitioning.Shardings(cfg, mesh, FLAGS.model)
  logging.info('%s %s: %s parameters; mesh %s', model.name, cfg,
               f'{enct5.count_params(cfg, FLAGS.model):,}', dict(mesh.shape))

  # Data: the training split packed once; rows shuffled per epoch by (seed, epoch), so the
  # batch of step s is the same whether or not the run was interrupted (packing.train_batches).
  packed = pack_train_split(task, train_examples, vocab, task.files['train'], labels)
  eval_sets = {}
  for split in task.eval_names:
    examples = read_split(task, directory, split)
    eval_sets[split] = (examples, pack_split(task, examples, vocab, task.files[split]))
  info = packing.stats(packed)
  logging.info('train: %d examples in %d rows of %d tokens (packing efficiency %.3f); '
               '%.1f steps per epoch', info['examples'], info['rows'], FLAGS.max_input_length,
               info['efficiency'], info['rows'] / FLAGS.batch_size)

  # State: resume from the latest checkpoint, else the --checkpoint, else random init.
  base_step = checkpoint_step(FLAGS.checkpoint) if FLAGS.checkpoint else 0
  if latest:
    params, opt_state = load_ckpt.restore_checkpoint(ckpt_dir, shardings=shardings.params,
                                                     opt_shardings=shardings.opt_state)
    logging.info('resuming from %s', latest)
  elif FLAGS.checkpoint:
    params, opt_state = load_params(FLAGS.checkpoint, cfg, shardings, with_optimizer_state=True)
    logging.info('fine-tuning %s from Adafactor step %d', FLAGS.checkpoint, base_step)
  else:
    params, opt_state = init_train_state(cfg, shardings, jax.random.PRNGKey(FLAGS.seed),
                                         FLAGS.model)
    logging.info('random init (seed %d)', FLAGS.seed)
  start = int(jax.device_get(opt_state['step'])) - base_step
  history = read_metrics()
  best = max((r for r in history if r['step'] <= start), key=lambda r: r['score'], default=None)
  if start >= FLAGS.train_steps:
    logging.info('already trained %d of --train_steps=%d steps; nothing to do', start,
                 FLAGS.train_steps)
    return cfg, best

  train_step = make_train_step(cfg, shardings, model.loss, FLAGS.learning_rate, FLAGS.seed)
  eval_step = make_eval_step(cfg, shardings, FLAGS.model,
                             decode_length=labels.decode_length if labels else None)
  batches = packing.train_batches(packed, FLAGS.batch_size, FLAGS.seed, start_step=start)
  run_start = interval_start = time.time()
  eval_time = 0.0
  interval = dict(loss_sum=0.0, examples=0, tokens=0, slots=0)
  since_eval = dict(loss_sum=0.0, examples=0)
  for step in range(start + 1, FLAGS.train_steps + 1):
    batch = next(batches)
    inputs = {k: batch[k] for k in model.train_keys}
    params, opt_state, metrics = train_step(params, opt_state,
                                            partitioning.global_batch(inputs, shardings.batch))
    loss = float(metrics['loss'])
    if not np.isfinite(loss):
      good = load_ckpt.latest_checkpoint(ckpt_dir)
      raise NonFiniteLoss(
          f'loss is {loss} at step {step}: stopping. The last good checkpoint, '
          f'{good or "(none saved yet)"}, is left as it is; try a lower --learning_rate, '
          '--dtype=float32 or another --seed.')
    for acc in (interval, since_eval):
      acc['loss_sum'] += float(metrics['loss_sum'])
      acc['examples'] += int(metrics['num_examples'])
    interval['tokens'] += int((batch['inputs_segment_ids'] > 0).sum())
    interval['slots'] += batch['inputs'].size
    last = step == FLAGS.train_steps
    if step % FLAGS.log_every == 0 or last:
      now = time.time()
      seconds = now - interval_start
      per_step = (now - run_start - eval_time) / (step - start)
      logging.info('step %d/%d | loss %.4f | %.0f examples/s | %.0f tokens/s | packing %.2f '
                   '| ETA %s', step, FLAGS.train_steps,
                   interval['loss_sum'] / max(interval['examples'], 1),
                   interval['examples'] / seconds, interval['tokens'] / seconds,
                   interval['tokens'] / interval['slots'],
                   _duration(per_step * (FLAGS.train_steps - step)))
      interval = dict(loss_sum=0.0, examples=0, tokens=0, slots=0)
      interval_start = now
    if step % FLAGS.eval_every == 0 or last:
      eval_start = time.time()
      t5x_step = int(jax.device_get(opt_state['step']))
      load_ckpt.save_checkpoint(ckpt_dir, t5x_step, params, opt_state,
                                keep=FLAGS.keep_checkpoints)
      scores = evaluate(eval_step, params, task, eval_sets, cfg, shardings, labels)
      score = glue.task_score(task, scores)
      train_loss = since_eval['loss_sum'] / max(since_eval['examples'], 1)
      since_eval = dict(loss_sum=0.0, examples=0)
      record = dict(step=step, t5x_step=t5x_step, train_loss=train_loss, scores=scores,
                    score=score, elapsed_s=round(time.time() - run_start, 1))
      if best is None or score > best['score']:
        load_ckpt.save_checkpoint(best_dir, t5x_step, params, opt_state, keep=1)
        best = record
      append_metrics(record)
      logging.info('eval step %d | %s | best %.2f at step %d', step,
                   ' '.join(f'{k} {v:.2f}' for k, v in scores.items()), best['score'],
                   best['step'])
      eval_time += time.time() - eval_start
      interval_start += time.time() - eval_start
  return cfg, best


def read_metrics():
  path = os.path.join(FLAGS.output_dir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_metrics(record):
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.output_dir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


def inference_checkpoint():
  """--checkpoint, else the best, else the latest checkpoint in --output_dir."""
  path = (FLAGS.checkpoint or load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir, 'best'))
          or load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir, 'checkpoints')))
  if not path:
    raise FileNotFoundError(f'--mode={FLAGS.mode}: no --checkpoint and no checkpoint in '
                            f'{FLAGS.output_dir}/best or {FLAGS.output_dir}/checkpoints')
  return path


def evaluate_or_predict(task, directory, mesh):
  """--mode=eval: the task's metrics on its validation split(s). --mode=predict: GLUE
  submission TSVs (index, prediction) for --predict_split into output_dir/predictions."""
  path = inference_checkpoint()
  vocab = get_vocab(task, None, must_exist=True)
  labels = glue.LabelText(task, vocab) if MODELS[FLAGS.model].labels_as_text else None
  cfg = model_config(task, vocab, path)
  shardings = partitioning.Shardings(cfg, mesh, FLAGS.model)
  params = load_params(path, cfg, shardings, with_optimizer_state=False)
  eval_step = make_eval_step(cfg, shardings, FLAGS.model,
                             decode_length=labels.decode_length if labels else None)
  logging.info('%s with %s', FLAGS.mode, path)
  if FLAGS.mode == 'eval':
    eval_sets = {}
    for split in task.eval_names:
      examples = read_split(task, directory, split)
      eval_sets[split] = (examples, pack_split(task, examples, vocab, task.files[split]))
    scores = evaluate(eval_step, params, task, eval_sets, cfg, shardings, labels)
    logging.info('eval %s | %s | score %.2f', path,
                 ' '.join(f'{k} {v:.2f}' for k, v in scores.items()),
                 glue.task_score(task, scores))
    return scores
  splits = ([s for s in task.files if s.startswith('test')] if FLAGS.predict_split == 'test'
            else [FLAGS.predict_split])
  out_dir = os.path.join(FLAGS.output_dir, 'predictions')
  written = []
  for split in splits:
    examples = read_split(task, directory, split)
    ids, predictions = infer(eval_step, params, pack_split(task, examples, vocab,
                                                           task.files[split]), cfg, shardings,
                             labels)
    invalid = predictions == glue.INVALID_PREDICTION
    if not task.is_regression and invalid.any():
      logging.warning('%s: %d of %d decoded strings are no label; written as %r (a submission '
                      'needs one)', split, invalid.sum(), len(predictions), task.raw_label(1))
      predictions = np.maximum(predictions, 1)
    if jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      out = os.path.join(out_dir, prediction_file(task, split))
      with open(out, 'w') as f:
        f.write('index\tprediction\n')
        f.writelines(f'{i}\t{task.raw_label(p)}\n' for i, p in zip(ids, predictions))
      logging.info('wrote %d predictions to %s', len(ids), out)
      written.append(out)
  return written


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

# Plain `python train.py`: a tiny model, short rows, a few hundred steps (flags given on the
# command line still win).
DEMO_FLAGS = dict(size='tiny', vocab_size=1000, max_input_length=128, max_target_length=16,
                  batch_size=16, train_steps=300, eval_every=100, log_every=25)
GLUE_PLACES = (os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'glue'),
               'glue_data')


def _demo_setup():
  for name, value in DEMO_FLAGS.items():
    if not FLAGS[name].present:
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
  directory = os.path.join(FLAGS.output_dir, 'data', glue.DEMO_TASK.dir_name)
  # Every process writes the same files (same seed), atomically; dev.tsv is written last.
  if not os.path.isfile(os.path.join(directory, glue.DEMO_TASK.files['validation'])):
    glue.write_demo_task(directory, FLAGS.seed)
  return directory


def main(argv):
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
  demo = FLAGS.task is None
  if demo:
    directory = _demo_setup()
  else:
    if FLAGS.data_dir is None:
      found = [p for p in GLUE_PLACES if os.path.isdir(p)]
      hint = f' (GLUE data found: --data_dir={os.path.normpath(found[0])})' if found else ''
      raise app.UsageError(f'--task={FLAGS.task} needs --data_dir{hint}')
    directory = task_dir(glue.get_task(FLAGS.task), FLAGS.data_dir)
    if FLAGS.output_dir is None:
      FLAGS.output_dir = os.path.join('runs', FLAGS.task)
  task = glue.get_task(glue.DEMO_TASK.name if demo else FLAGS.task)
  mesh = partitioning.make_mesh(FLAGS.mesh)
  if FLAGS.batch_size % mesh.shape['data']:
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} must be a multiple of the mesh\'s '
                         f'data axis ({mesh.shape["data"]})')
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  if FLAGS.mode != 'train':
    evaluate_or_predict(task, directory, mesh)
    return
  try:
    _, best = fine_tune(task, directory, mesh)
  except NonFiniteLoss as e:
    logging.error('%s', e)
    raise SystemExit(1)
  curve = [r for r in read_metrics()]
  if curve:
    logging.info('learning curve (validation %s): %s', ', '.join(task.metric_keys),
                 ', '.join(f'step {r["step"]}: {r["score"]:.1f}' for r in curve))
    logging.info('best %.2f at step %d: %s/best', best['score'], best['step'], FLAGS.output_dir)
  if demo and curve:
    logging.info('final validation accuracy %.1f%% (chance: 50%%)', curve[-1]['score'])


if __name__ == '__main__':
  app.run(main)
