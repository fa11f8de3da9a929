"""Fine-tuning EncT5 (paper §4), or the paper's T5 and 1decT5 baselines (§4.3): the library
under `train.py`, which reads no flag. A frozen `Config` comes in; `train` fine-tunes (resuming
from OUTPUT_DIR) and `evaluate` scores a checkpoint; `load_for_inference` is what `predict`
(submission files, a file of any size, `Labeler`) builds on.

OUTPUT_DIR/run_config.json (copied into every checkpoint) is the run's record: its `Config`,
its vocabulary file and its model config. A resumed run must keep RUN_FIELDS (train.py checks);
evaluation and prediction need no more than the record's config.

Reads top-down: the config and the record; the vocabulary and the model's shape; training
(`prepare`, then `loop.train_loop`); evaluation and inference from a finished run. What differs
between EncT5, T5 and 1decT5, and how packed rows are labelled and scored, is `evaluation`'s.
The data road: `tasks`, `readers`, `preprocessing` (read, tokenize, pack), `metrics`.
"""
import dataclasses
import json
import logging
import os
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

import adafactor
import enct5
import evaluation
import fileio
import hf_ckpt
import load_ckpt
import loop
import metrics
import packing
import partitioning
import preprocessing
import readers
import t5
import tasks
import vocabularies


# ----------------------------------------------------------------------------------------------
# The run's config, with the paper's defaults (§4.1: T5's fine-tuning recipe, Adafactor with a
# constant learning rate 1e-3, packed rows of 512 tokens, best checkpoint on validation), and
# its record.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
  """A fine-tuning run. Every field is a `train.py` flag of the same name (its help explains
  it); the defaults here are the flags' defaults."""
  # Task and data: a GLUE task, or your own files (`tasks.file_task`), or the demo.
  task: str = None  # GLUE task(s) (tasks.TASKS); None: train_file's task, or the demo's
  data_dir: str = None
  train_file: str = None  # CSV, TSV or JSON Lines (by extension, or file_format)
  validation_file: str = None
  test_file: str = None
  file_format: str = None  # csv, tsv or jsonl; None: each file's extension
  text_fields: tuple = ('text',)  # each becomes `field: value` in the input, as GLUE's
  label_field: str = 'label'  # or several columns, each a task: 'topic,stars:regression'
  regression: bool = False  # a number a row
  multi_label: bool = False  # zero or more labels a row, a sigmoid each
  labels: str = None  # 'a,b,c' or a file of one label a line; None: the training file's
  labels_by_index: bool = False  # the files spell labels as 0-based indices into `labels`
  label_separator: str = ','  # multi-label CSV/TSV: between a row's labels ('0,15')
  skip_bad_rows: bool = False  # else a bad row stops the run, naming file and line
  selection_metric: str = None  # picks the best checkpoint; None: the kind's default
  threshold: float = None  # multi-label: a label is predicted when its probability >= this;
  # None: the thresholds chosen on validation at each evaluation (metrics.choose_thresholds)
  vocab: str = None  # SentencePiece model, or 'byt5'; None: the checkpoint's, or trained
  vocab_size: int = 8000  # pieces of a vocabulary trained here (ours)
  max_input_length: int = 512  # L, tokens per packed row (§4.1)
  max_target_length: int = 62  # EncT5: T, example slots per row (§4.1); T5: decoder tokens
  pack: bool = True  # several examples a row (§3)
  # Model.
  model: str = 'enct5'  # or the §4.3 baselines 't5', '1dect5'
  checkpoint: str = None  # T5X or Hugging Face T5.1.1 (§4.2); None: random init
  load_optimizer_state: bool = True  # continue the checkpoint's Adafactor state (T5X)
  size: str = None  # enct5.SIZES; None: the checkpoint's, or 'tiny' from scratch
  fresh_pooling_block: bool = False  # from an encoder-only checkpoint
  d_model: int = None
  num_heads: int = None
  head_dim: int = None
  d_ff: int = None
  num_layers: int = None
  dropout_rate: float = 0.1  # T5's fine-tuning dropout
  dtype: str = 'float32'  # activations; parameters and Adafactor stay float32
  remat_policy: str = 'none'
  scan_layers: bool = False
  attention_block_length: int = None  # self-attention in blocks; None: from the data; 0: rows
  # Training.
  batch_size: int = 128  # packed rows a step (T5: 128 rows of 512 tokens)
  eval_batch_size: int = None  # rows a batch in evaluation and prediction; None: chosen
  # (`evaluation.inference_batch_size`)
  learning_rate: float = 1e-3  # constant (§4.1)
  train_steps: int = 50000  # §4.1
  eval_every: int = 1000  # ours: 50 evaluations over the paper's 50k steps
  log_every: int = 100
  keep_checkpoints: int = 2  # ours: one to fall back on if the newest is damaged
  seed: int = 0
  # Multi-task (`mixtures`): `task` names several GLUE tasks, 'rte,mrpc,stsb'.
  mixing_cap: int = None  # K of examples-proportional mixing (Raffel et al. §3.5.2); None: none
  mixing_temperature: float = 1.0  # T of temperature-scaled mixing; 1: examples-proportional
  selection_task: str = None  # the task whose score picks the best checkpoint; None: the mean
  # Devices and the run.
  mesh: str = None  # DATAxMODEL; None: every device on 'data'
  output_dir: str = None


SHAPE_FIELDS = ('d_model', 'num_heads', 'head_dim', 'd_ff', 'num_layers')
# What a resumed run must keep: a change of one of these is another run.
RUN_FIELDS = ('task', 'train_file', 'text_fields', 'label_field', 'regression', 'multi_label',
              'labels', 'labels_by_index', 'model', 'size', 'vocab', 'mixing_cap',
              'mixing_temperature') + SHAPE_FIELDS
RECORD_FILE = 'run_config.json'  # the run's record (not Hugging Face's config.json)
CHECKPOINT_VOCAB = 'sentencepiece.model'  # a checkpoint's own vocabulary, if it has one


class ConfigError(ValueError):
  """A config that cannot work (a flag of train.py): the message names the field."""


def run_record(config, task, cfg, vocab_path):
  """run_config.json's contents (bytes): the run's Config, task (its labels), vocabulary file
  and model config."""
  if vocab_path != vocabularies.BYT5_VOCAB:  # a file; 'byt5' names ByT5's bytes
    vocab_path = os.path.abspath(vocab_path)
  record = dict(config=dataclasses.asdict(config), task=tasks.task_to_json(task),
                vocab_file=vocab_path, model_config=dataclasses.asdict(cfg))
  return (json.dumps(record, indent=2, sort_keys=True) + '\n').encode()


def read_run_record(output_dir):
  """OUTPUT_DIR/run_config.json as a dict, or None for a new run."""
  path = os.path.join(output_dir, RECORD_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return json.loads(data)
  except ValueError as e:  # not JSON, or not UTF-8
    raise ConfigError(f'{path} is damaged ({e}): the run\'s record cannot be read; restore it '
                      'from a checkpoint (checkpoint_*/run_config.json holds a copy)') from None


# ----------------------------------------------------------------------------------------------
# The vocabulary and the model's shape: from the checkpoint when there is one, else from the
# size (+ overrides).
# ----------------------------------------------------------------------------------------------

def vocab_file(config, task, train_examples=None):
  """The SentencePiece model's local path (or 'byt5', for `vocabularies.load_vocab`): `vocab`
  (a gs:// file is copied into OUTPUT_DIR/vocab/), else the `sentencepiece.model` inside the
  checkpoint (pretrain.py writes it there), else the one a Hugging Face checkpoint names
  (`hf_ckpt.vocabulary`), else the model trained earlier into OUTPUT_DIR/vocab/, else one
  trained now on `train_examples`' text. Every process uses process 0's file."""
  vocab_dir = os.path.join(config.output_dir, 'vocab')
  if config.vocab and config.vocab.startswith('gs://'):
    path = os.path.join(vocab_dir, config.vocab.rsplit('/', 1)[1])
    data = fileio.read_bytes(config.vocab)
    if data is None:
      raise ConfigError(f'--vocab={config.vocab}: not found')
    fileio.write_atomically(path, data)
    return path
  if config.vocab and config.vocab != vocabularies.BYT5_VOCAB and not os.path.isfile(config.vocab):
    raise ConfigError(f'--vocab={config.vocab}: no such file')
  if config.vocab:
    return config.vocab
  beside_checkpoint = os.path.join(config.checkpoint or '', CHECKPOINT_VOCAB)
  if config.checkpoint and os.path.isfile(beside_checkpoint):
    logging.info('no --vocab: using the checkpoint\'s vocabulary, %s', beside_checkpoint)
    return beside_checkpoint
  if config.checkpoint and hf_ckpt.is_hf_checkpoint(config.checkpoint):
    named = hf_ckpt.vocabulary(config.checkpoint)
    if named:
      logging.info('no --vocab: using the Hugging Face checkpoint\'s vocabulary, %s', named)
      return named
  path = os.path.join(vocab_dir, f'{task.name or "vocab"}.model')
  if jax.process_index() == 0 and not os.path.isfile(path) and train_examples:
    _train_vocab(config, task, train_examples, path)
  if jax.process_count() > 1:
    _share_file(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no --vocab and no trained vocabulary at {path}')
  logging.info('vocabulary: %s', path)
  return path


def _train_vocab(config, task, train_examples, path):
  """A SentencePiece model trained on the training texts (and, for T5 and 1decT5, which read
  the targets' text too, the label texts) into `path`."""
  texts = [example.text for example in train_examples]
  if evaluation.MODELS[config.model].labels_as_text:
    texts += [t5.label_text(task, example.label) for example in train_examples]
  logging.info('no --vocab: training a SentencePiece model (up to %d pieces) on %d training '
               'texts into %s', config.vocab_size, len(texts), path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  vocabularies.train_vocab(texts, path[:-len('.model')], config.vocab_size)


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
    fileio.write_atomically(path, data)


def model_config(config, task, vocab, checkpoint):
  """EncT5Config for `task`; `checkpoint` (T5.1.1 or EncT5, or None) fixes the shape."""
  options = dict(num_classes=task.num_classes, multi_label=task.is_multi_label,
                 dropout_rate=config.dropout_rate, dtype=config.dtype,
                 remat_policy=config.remat_policy, scan_layers=config.scan_layers,
                 attention_block_length=config.attention_block_length or 0)
  overrides = {name: getattr(config, name) for name in SHAPE_FIELDS
               if getattr(config, name) is not None}
  if checkpoint:
    # The checkpoint fixes the shape; the size and the shape fields, if given, must agree.
    shape = load_ckpt.config_from_checkpoint(checkpoint)
    asked = {k: (v, f'--size={config.size}') for k, v in enct5.SIZES[config.size].items()
             if k in SHAPE_FIELDS} if config.size else {}
    asked.update({k: (v, f'--{k}') for k, v in overrides.items()})
    wrong = [f'{k} {shape[k]} (checkpoint) vs {v} ({flag})'
             for k, (v, flag) in asked.items() if shape[k] != v]
    if wrong:
      raise ConfigError(f'the checkpoint {checkpoint} does not match the flags: '
                        + '; '.join(wrong))
    cfg = enct5.get_config(config.size or 'small', **shape, **options)
  else:
    # T5.1.1 has as many decoder layers as encoder layers (enct5.num_decoder_layers: which are
    # used); ByT5's sizes keep their 3:1 encoder:decoder depth unless num_layers changes it.
    size = enct5.SIZES[config.size or 'tiny']
    num_decoder_layers = overrides.get('num_layers', size['num_decoder_layers'])
    cfg = enct5.get_config(config.size or 'tiny',
                           vocab_size=enct5.padded_vocab_size(vocab.GetPieceSize()),
                           num_decoder_layers=num_decoder_layers, **overrides, **options)
  vocabularies.check_vocab_fits(vocab, cfg.vocab_size)
  return cfg


def make_mesh(config):
  """The device mesh of `config.mesh`, checked against the batch sizes."""
  try:
    mesh = partitioning.make_mesh(config.mesh, batch_size=config.batch_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.eval_batch_size and config.eval_batch_size % mesh.shape['data']:
    raise ConfigError(f'--eval_batch_size={config.eval_batch_size} must be a multiple of the '
                      f'mesh\'s data axis ({mesh.shape["data"]})')
  return mesh


def get_task(config):
  """The task of `config`: a GLUE task (its folder checked to be there), the task of your own
  `train_file`, or the demo. A file task's labels, once recorded in OUTPUT_DIR's
  run_config.json, are the recorded ones: resuming and prediction need no training file. With
  several label columns (`label_columns`), `task` names the column whose task this is."""
  if not config.train_file:
    task = tasks.get_task(config.task or tasks.DEMO_TASK.name)
    readers.task_dir(task, config.data_dir)  # fails early if the task's files are not there
    return task
  columns = label_columns(config)
  if config.task not in (None, *columns) or (config.task is None and len(columns) > 1):
    raise ConfigError(f'--task={config.task}: the run\'s tasks are its label columns '
                      f'({", ".join(columns)}); name one')
  column = config.task or next(iter(columns))
  kind = columns[column]
  record = read_run_record(config.output_dir) if config.output_dir else None
  labels = config.labels
  if labels and os.path.isfile(labels):
    labels = readers.read_label_names(labels)
  elif labels:
    labels = tuple(labels.split(','))
  if record and kind != 'regression':
    recorded = record['task'] if 'task' in record else next(
        task for task in record['tasks'] if task['name'] == column)
    labels = recorded['label_names']
  try:
    return tasks.file_task(
        config.train_file, config.validation_file, config.test_file,
        text_fields=config.text_fields, label_field=column, kind=kind, labels=labels,
        labels_by_index=config.labels_by_index, label_separator=config.label_separator,
        fmt=config.file_format, name=config.task or '', text_prefix='',
        selection_metric=config.selection_metric)
  except ValueError as e:
    if isinstance(e, fileio.DataError):
      raise
    raise ConfigError(str(e)) from None


def label_columns(config):
  """{column: kind} of `label_field`: one column, of the kind `regression` / `multi_label` say,
  or one file's several label columns, each a task of a mixture with its kind after a colon
  ('topic,stars:regression,tags:multi_label'; a bare column is a class)."""
  fields = config.label_field.split(',')
  if len(fields) == 1 and ':' not in fields[0]:
    return {fields[0]: ('multi_label' if config.multi_label else 'regression'
                        if config.regression else 'classification')}
  if config.regression or config.multi_label:
    raise ConfigError(f'--label_field={config.label_field} with --regression or --multi_label: '
                      'give each column its kind in --label_field (column:regression, '
                      'column:multi_label)')
  columns = {}
  for field in fields:
    column, _, kind = field.partition(':')
    if not column or (kind or 'classification') not in tasks.KINDS:
      raise ConfigError(f'--label_field={config.label_field}: {field!r} is not a column or '
                        f'column:kind (kinds: {", ".join(tasks.KINDS)})')
    if column in columns:
      raise ConfigError(f'--label_field={config.label_field}: {column} given twice')
    columns[column] = kind or 'classification'
  return columns


# ----------------------------------------------------------------------------------------------
# Training: `prepare` (data, vocabulary, model, state), then the loop (`loop.train_loop`).
# ----------------------------------------------------------------------------------------------

class Run(NamedTuple):
  """A fine-tuning run, prepared: what the loop needs."""
  task: tasks.Task
  cfg: enct5.EncT5Config
  shardings: partitioning.Shardings
  labels: object      # the t5.LabelText that T5 and 1decT5 train and decode with, else None
  packed: dict        # the training rows
  eval_sets: dict     # validation split -> (examples, rows)
  state: loop.TrainState
  record: bytes       # run_config.json, written into OUTPUT_DIR and every checkpoint


def train(config, watchdog=None):
  """Fine-tunes up to `train_steps` (resuming from OUTPUT_DIR/checkpoints), evaluating and
  checkpointing every `eval_every` steps; -> the best evaluation (a metrics.jsonl record).
  `watchdog`: a `hosts.HostWatchdog` the loop tells its step (several hosts)."""
  task = get_task(config)
  for split in ('train', *task.eval_names):
    readers.split_path(task, config.data_dir, split)
  run = prepare(config, task, make_mesh(config))
  if run.state.step >= config.train_steps:
    logging.info('already trained %d of --train_steps=%d steps; nothing to do', run.state.step,
                 config.train_steps)
    return max(loop.read_metrics(config.output_dir), key=lambda r: r['score'], default=None)
  model = evaluation.MODELS[config.model]
  step = loop.TrainStep(
      fn=loop.make_train_step(run.cfg, run.shardings, model.loss, config.learning_rate,
                              config.seed),
      keys=model.train_keys, batch_sharding=run.shardings.batch, dtype=run.cfg.activation_dtype,
      flops=enct5.train_step_flops(run.cfg, config.model, config.batch_size,
                                   config.max_input_length, _target_length(run)))
  inference = evaluation.Inference(
      run.task, run.cfg, run.shardings, labels=run.labels, thresholds=config.threshold,
      eval_step=evaluation.make_eval_step(
          run.cfg, run.shardings, config.model,
          decode_length=run.labels.decode_length if run.labels else None))

  def evaluate_now(params):
    scores, thresholds = evaluation.evaluate_sets(config, inference, params, run.eval_sets)
    logging.info('eval | %s', score_line(run.task, scores))
    record = dict(scores=scores, score=metrics.task_score(run.task, scores))
    if thresholds is not None:  # the record of the checkpoint they decide for
      record['thresholds'] = threshold_record(run.task, thresholds)
    return record

  settings = loop.Settings(config.train_steps, config.eval_every, config.log_every,
                           config.keep_checkpoints, config.output_dir)
  batches = packing.train_batches(run.packed, config.batch_size, config.seed,
                                  start_step=run.state.step)
  return loop.train_loop(settings, run.state, step, batches, evaluate_now, summarize,
                         extra_files={RECORD_FILE: run.record}, watchdog=watchdog)


def summarize(sums):
  """The logged training figure: the loss per example (EncT5: per slot; T5: per label)."""
  return {'loss': sums['loss_sum'] / max(sums['num_examples'], 1)}


def _target_length(run):
  return run.packed['decoder_target_tokens' if run.labels else 'targets'].shape[1]


def prepare(config, task, mesh):
  """Reads and packs the data, fixes the vocabulary and the model, writes run_config.json, and
  restores the state: the latest checkpoint in OUTPUT_DIR, else `checkpoint`, else random."""
  model = evaluation.MODELS[config.model]
  train_examples = readers.read_split(task, config.data_dir, 'train',
                                      on_error=evaluation.on_bad_rows(config))
  vocab_path = vocab_file(config, task, train_examples)
  vocab = vocabularies.load_vocab(vocab_path)
  labels = t5.LabelText(task, vocab) if model.labels_as_text else None

  # Data: the training split packed once; rows shuffled per epoch by (seed, epoch), so the
  # batch of step s is the same whether or not the run was interrupted (packing.train_batches).
  # EncT5 unpacked: one example, one slot a row; T5's decoder rows keep their length.
  # With attention blocks, every example within one block (`packing.pack_examples`).
  targets = config.max_target_length if config.pack or labels else 1
  try:
    packed = preprocessing.pack_split(
        task, train_examples, vocab, config.max_input_length, targets,
        method='best_fit' if config.pack else 'unpacked', labels=labels,
        path=readers.split_path(task, config.data_dir, 'train'),
        block_length=evaluation.packing_block_length(config))
  except ValueError as e:
    if not config.attention_block_length or isinstance(e, fileio.DataError):
      raise
    raise ConfigError(f'--attention_block_length={config.attention_block_length}: {e}; a '
                      'block must divide the row and hold the longest example') from None
  info = packing.stats(packed)
  logging.info('train: %d examples in %d rows of %d tokens (packing efficiency %.3f); '
               '%.1f steps per epoch', info['examples'], info['rows'], config.max_input_length,
               info['efficiency'], info['rows'] / config.batch_size)
  eval_sets = {split: evaluation.load_eval_split(config, task, split, vocab)
               for split in task.eval_names}

  ckpt_dir = os.path.join(config.output_dir, 'checkpoints')
  cfg = model_config(config, task, vocab, load_ckpt.latest_checkpoint(ckpt_dir)
                     or config.checkpoint)
  if config.attention_block_length is None:
    cfg = dataclasses.replace(cfg, attention_block_length=packing.rows_block_length(
        packed['inputs_segment_ids']))
  shardings = partitioning.Shardings(enct5.param_specs(cfg, config.model), mesh)
  logging.info('%s %s: %s parameters; mesh %s', model.name, cfg,
               f'{enct5.count_params(cfg, config.model):,}', dict(mesh.shape))
  record = run_record(config, task, cfg, vocab_path)
  if jax.process_index() == 0:
    fileio.write_atomically(os.path.join(config.output_dir, RECORD_FILE), record)
  state = initial_state(config, cfg, shardings, ckpt_dir)
  if task.is_multi_label and not restored_head(config, ckpt_dir):
    state = state._replace(params=with_prior_bias(state.params, task, train_examples))
  return Run(task, cfg, shardings, labels, packed, eval_sets, state, record)


def initial_state(config, cfg, shardings, ckpt_dir):
  """The run's state: its latest checkpoint (resuming), else the pre-trained `checkpoint`
  (paper §4.2; with its Adafactor state and step when `load_optimizer_state`), else random.
  The step counts fine-tuning steps: the checkpoint's own Adafactor step is subtracted."""
  continued = config.checkpoint and config.load_optimizer_state
  base_step = load_ckpt.checkpoint_step(config.checkpoint) if continued else 0
  restored = load_ckpt.restore_checkpoint(ckpt_dir, shardings=shardings.params,
                                          opt_shardings=shardings.opt_state)
  if restored:
    params, opt_state = restored
  elif config.checkpoint:
    loaded = load_ckpt.load_params(
        config.checkpoint, cfg, jax.random.PRNGKey(config.seed), model=config.model,
        with_optimizer_state=config.load_optimizer_state, shardings=shardings.params,
        opt_shardings=shardings.opt_state, fresh_pooling_block=config.fresh_pooling_block,
        task=config.task)
    params, opt_state = loaded if config.load_optimizer_state else (
        loaded, jax.jit(adafactor.init, out_shardings=shardings.opt_state)(loaded))
    logging.info('fine-tuning %s from Adafactor step %d', config.checkpoint,
                 loop.adafactor_step(opt_state))
  else:
    params, opt_state = loop.init_train_state(cfg, config.model, shardings,
                                              jax.random.PRNGKey(config.seed))
    logging.info('random init (seed %d)', config.seed)
  return loop.TrainState(params, opt_state, loop.adafactor_step(opt_state) - base_step)


def restored_head(config, ckpt_dir):
  """Whether the run starts from a trained EncT5 head: its own checkpoint (resuming), or a
  `checkpoint` that has one."""
  path = load_ckpt.latest_checkpoint(ckpt_dir) or config.checkpoint
  return bool(path) and has_head(path)


def has_head(path):
  """Whether a checkpoint holds EncT5's class projection (a run of ours, one task or several),
  not only T5.1.1's."""
  return load_ckpt.has_heads(load_ckpt.flatten(load_ckpt.read_index(path)))


def with_prior_bias(params, task, train_examples):
  """A fresh multi-label head's bias set to each label's log prior odds in the training split,
  log(p / (1 - p)) with p = (count + 1) / (examples + 2): before any step the model predicts
  the labels' frequencies, not 0.5 each, and the first steps go to telling rows apart rather
  than to learning that most labels are absent (the prior initialization of Lin et al. 2017,
  §4.1). The kernel stays random.

  NOTE: ours; EncT5 and T5X have no multi-label head. GoEmotions, tiny, 600 steps: held-out
  macro-F1 17.8 against 9.4 with a zero bias (experiments/goemotions.md).
  """
  counts = metrics.multi_hot([e.label for e in train_examples], task.num_classes).sum(axis=0)
  prior = (counts + 1) / (len(train_examples) + 2)
  bias = np.log(prior / (1 - prior)).astype(np.float32)
  logging.info('multi-label: the class projection\'s bias starts at the training labels\' log '
               'prior odds, %.2f..%.2f', bias.min(), bias.max())
  projection = params['decoder']['class_projection']
  sharding = projection['bias'].sharding
  projection = dict(projection, bias=jax.make_array_from_callback(
      bias.shape, sharding, lambda index: bias[index]))
  return {**params, 'decoder': {**params['decoder'], 'class_projection': projection}}


# ----------------------------------------------------------------------------------------------
# Evaluation and inference from a finished run (`evaluation` labels the rows).
# ----------------------------------------------------------------------------------------------

def inference_checkpoint(config):
  """`checkpoint`, else the best, else the latest checkpoint in OUTPUT_DIR."""
  path = (config.checkpoint
          or load_ckpt.latest_checkpoint(os.path.join(config.output_dir, 'best'))
          or load_ckpt.latest_checkpoint(os.path.join(config.output_dir, 'checkpoints')))
  if not path:
    raise FileNotFoundError(f'no --checkpoint and no checkpoint in {config.output_dir}/best '
                            f'or {config.output_dir}/checkpoints')
  return path


def load_for_inference(config):
  """(`evaluation.Inference`, params, vocab, checkpoint path) of `inference_checkpoint`; its
  shape fixes the model's."""
  task = get_task(config)
  path = inference_checkpoint(config)
  vocab = vocabularies.load_vocab(vocab_file(config, task))
  labels = t5.LabelText(task, vocab) if evaluation.MODELS[config.model].labels_as_text else None
  cfg = model_config(config, task, vocab, path)
  shardings = partitioning.Shardings(enct5.param_specs(cfg, config.model), make_mesh(config))
  if config.model == 'enct5' and not has_head(path):
    logging.warning('%s is a T5.1.1 checkpoint: the EncT5 head is untrained', path)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(config.seed),
                                 model=config.model, shardings=shardings.params,
                                 fresh_pooling_block=config.fresh_pooling_block, task=task.name)
  eval_step = evaluation.make_eval_step(cfg, shardings, config.model,
                                        decode_length=labels.decode_length if labels else None)
  logging.info('inference with %s', path)
  inference = evaluation.Inference(task, cfg, shardings, eval_step, labels,
                                   inference_thresholds(config, task, path))
  return inference, params, vocab, path


def threshold_record(task, thresholds):
  """{label name: threshold} of a multi-label task, for metrics.jsonl."""
  return dict(zip(task.label_names, np.broadcast_to(thresholds, (task.num_classes,)).tolist()))


def inference_thresholds(config, task, checkpoint):
  """Multi-label: --threshold, else those chosen at the checkpoint's evaluation
  (metrics.jsonl's record of its step), else 0.5."""
  if not task.is_multi_label:
    return None
  if config.threshold is not None:
    return config.threshold
  step = load_ckpt.checkpoint_step(checkpoint)
  for record in loop.read_metrics(config.output_dir):
    # A mixture records each multi-label task's as thresholds/<task>.
    chosen = record.get(f'thresholds/{task.name}', record.get('thresholds'))
    if record.get('t5x_step') == step and chosen is not None:
      logging.info('thresholds chosen on validation at step %d: %s', record['step'],
                   ' '.join(f'{name} {t:.2f}' for name, t in chosen.items()))
      return np.array([chosen[name] for name in task.label_names])
  logging.warning('%s: no thresholds chosen at its evaluation in %s; labels at 0.5 (or give '
                  '--threshold)', checkpoint, loop.METRICS_FILE)
  return 0.5


def evaluate(config):
  """The task's metrics of `inference_checkpoint` on its validation split(s)."""
  inference, params, vocab, path = load_for_inference(config)
  eval_sets = {split: evaluation.load_eval_split(config, inference.task, split, vocab)
               for split in inference.task.eval_names}
  scores, _ = evaluation.evaluate_sets(config, inference, params, eval_sets)
  logging.info('eval %s | %s | score %.2f', path, score_line(inference.task, scores),
               metrics.task_score(inference.task, scores))
  return scores


def score_line(task, scores):
  """The logged metrics: the task's, then (multi-label) the same at threshold 0.5."""
  line = ' '.join(f'{k} {scores[k]:.2f}' for k in task.metric_keys)
  at_half = [f'{k} {scores[k + "@0.5"]:.2f}' for k in task.metric_keys if k + '@0.5' in scores]
  return line + (' | at 0.5: ' + ' '.join(at_half) if at_half else '')
