"""Multi-task EncT5: one encoder and pooling block, and per task its own learned query (the
paper's "task embedding", §4.2) and class projection, trained on a mixture of tasks: GLUE
tasks, or the label columns of your own file (one text, several labels of it).

  python train.py --task=rte,mrpc,stsb,cola --data_dir=glue_data --output_dir=runs/mix
  python train.py --train_file=t.csv --validation_file=v.csv --label_field=topic,stars:regression

T5 trains on mixtures of tasks (Raffel et al. 2020 §3.5.2; seqio's `Mixture`): each task's
share of the examples is its size, capped at K ("examples-proportional mixing"), optionally
raised to 1/T ("temperature-scaled mixing", T = 1 being the former). Here examples of all the
tasks are packed together (§3): a row holds examples of several tasks, each slot carries its
task id (`task_ids`), reads the encoder with its task's query and is projected by its task's
head; each slot's loss is its task's (`enct5.loss_fn`). Evaluation scores every task on its own
validation split with its own head (`enct5.task_params`: the model seen as that task's one-task
model), and the best checkpoint is picked by the tasks' average score, as GLUE's, or by one
task's (`selection_task`).

A mixture of one task is the task's own run (`finetune.train`), bit for bit. Evaluation and
prediction of a multi-task run go through the one-task path with `task` set to one of its
tasks: `load_ckpt.load_params` takes that task's head from the checkpoint, so the encoder is
shared and everything downstream (metrics, submission files, `predict.Labeler`) is unchanged.
"""
import dataclasses
import json
import logging
import os

import jax
import numpy as np

import enct5
import evaluation
import fileio
import finetune
import load_ckpt
import loop
import metrics
import packing
import partitioning
import preprocessing
import readers
import tasks
import vocabularies


def task_names(config):
  """The tasks of a run: `config.task`'s, 'rte,mrpc,stsb' -> ('rte', 'mrpc', 'stsb'), or with
  your own files the label columns (`finetune.label_columns`) when there are several."""
  if config.task:
    return tuple(config.task.split(','))
  if config.train_file:
    columns = tuple(finetune.label_columns(config))
    return columns if len(columns) > 1 else ()
  return ()


def is_mixture(config):
  return len(task_names(config)) > 1


def get_tasks(config):
  """The mixture's tasks, in the order given (the heads' task ids): GLUE tasks, or one task a
  label column of your own files, all of the same text."""
  names = task_names(config)
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise finetune.ConfigError(f'--task={config.task}: {", ".join(repeated)} given twice')
  if config.model != 'enct5' or not config.pack:
    raise finetune.ConfigError(f'--task={config.task or ",".join(names)}: a mixture trains a '
                               'packed EncT5 (--model=enct5 --pack)')
  if config.selection_task and config.selection_task not in names:
    raise finetune.ConfigError(f'--selection_task={config.selection_task} is not one of the '
                               f'tasks ({", ".join(names)})')
  if config.train_file:
    given = [f'--{name}' for name in ('labels', 'labels_by_index', 'selection_metric')
             if getattr(config, name)]
    if given:
      raise finetune.ConfigError(f'--label_field={config.label_field}: {", ".join(given)} would '
                                 'hold for every column; each column\'s labels are its '
                                 'training file\'s, and its kind\'s selection metric')
    return [finetune.get_task(dataclasses.replace(config, task=name)) for name in names]
  try:
    return [tasks.get_task(name) for name in names]
  except ValueError as e:
    raise finetune.ConfigError(f'--task={config.task}: {e}') from None


def task_config(config, task):
  """The run's Config for one of its tasks: its one-task run, as evaluation sees it."""
  return dataclasses.replace(config, task=task.name, selection_task=None)


def task_configs(config):
  """The one-task Configs of a mixture's tasks; of a one-task run, its own."""
  return [task_config(config, task) for task in get_tasks(config)] if is_mixture(config) else [
      config]


# ----------------------------------------------------------------------------------------------
# The mixture: how many examples of each task (Raffel et al. §3.5.2), and their packed rows.
# ----------------------------------------------------------------------------------------------

def mixing_rates(sizes, cap=None, temperature=1.0):
  """Each task's share of the mixture: r_k = min(n_k, K)^(1/T) / sum_j min(n_j, K)^(1/T).

  sizes: n_k, the tasks' training examples; cap: K (None: no cap); temperature: T (1:
  examples-proportional; larger flattens the rates toward equal).
  """
  limited = np.asarray(sizes, np.float64)
  if cap:
    limited = np.minimum(limited, cap)
  scaled = limited ** (1.0 / temperature)
  return scaled / scaled.sum()


def mixture_counts(sizes, rates, cap=None):
  """Examples of each task in the mixture: r_k N, rounded, with N = sum_k min(n_k, K) the
  examples a capped proportional mixture holds. T = 1 and no cap: every example once."""
  total = np.minimum(sizes, cap).sum() if cap else np.sum(sizes)
  return np.maximum(np.round(np.asarray(rates) * total), 1).astype(np.int64)


def draw(num_examples, count, seed, task_id):
  """`count` of a task's example indices: its examples in an order seeded by (seed, task id),
  cycled when the mixture asks for more than the task has (temperature up-samples small ones).

  NOTE: T5 samples an endless stream; we draw the mixture once per run and shuffle its packed
  rows every epoch (`packing.train_batches`), so resuming stays exact. A task capped below its
  size keeps the same `count` examples for the whole run.
  """
  order = np.random.default_rng([seed, task_id]).permutation(num_examples)
  return np.resize(order, count)


def pack_mixture(heads, tokenized, counts, seed, max_input_length, max_target_length,
                 block_length=None):
  """The mixture's training rows: `counts[k]` examples of each task k (`draw`), packed
  together (`packing.pack_examples`, best fit).

  heads: the model's `enct5.Head`s, in task-id order; tokenized: per task its [(token ids,
  label)] (`preprocessing.tokenize`). -> packing's arrays, with task_ids [R, T] int32 (each
  slot's task; 0 on empty slots, which no loss counts) and per task its targets
  `targets/<name>` ([R, T], or [R, T, n] multi-hot; 0 on the other tasks' slots) instead of
  `targets`. example_ids index the mixture's examples, task after task.
  """
  chosen = [draw(len(examples), count, seed, k)
            for k, (examples, count) in enumerate(zip(tokenized, counts))]
  mixture = [(tokenized[k][i][0], None) for k, indices in enumerate(chosen) for i in indices]
  packed = packing.pack_examples(mixture, max_input_length, max_target_length,
                                 block_length=block_length)
  del packed['targets']
  real = packed['example_ids'] >= 0
  starts = np.cumsum([0] + [len(indices) for indices in chosen])
  task_of = np.repeat(np.arange(len(heads)), np.diff(starts))
  packed['task_ids'] = np.where(real, task_of[np.maximum(packed['example_ids'], 0)], 0)
  for k, head in enumerate(heads):
    labels = packing.label_array([tokenized[k][i] for i in chosen[k]],
                                 regression=head.num_classes == 1 and not head.multi_label,
                                 num_labels=head.num_classes if head.multi_label else None)
    targets = np.zeros(packed['example_ids'].shape + labels.shape[1:], labels.dtype)
    slots = real & (packed['task_ids'] == k)
    targets[slots] = labels[packed['example_ids'][slots] - starts[k]]
    packed[f'targets/{head.name}'] = targets
  return packed


# ----------------------------------------------------------------------------------------------
# Training: the mixture's rows, one model with a head per task, `loop.train_loop`.
# ----------------------------------------------------------------------------------------------

def heads_of(mixture):
  return tuple(enct5.Head(task.name, task.num_classes, task.is_multi_label) for task in mixture)


def run_record(config, mixture, cfg, vocab_path):
  """run_config.json of a mixture: as `finetune.run_record`, with every task."""
  record = dict(config=dataclasses.asdict(config),
                tasks=[tasks.task_to_json(task) for task in mixture],
                vocab_file=os.path.abspath(vocab_path), model_config=dataclasses.asdict(cfg))
  return (json.dumps(record, indent=2, sort_keys=True) + '\n').encode()


def train(config, watchdog=None):
  """Trains one EncT5 on the mixture of `config.task`'s tasks (resuming from OUTPUT_DIR);
  -> the best evaluation (a metrics.jsonl record: every task's scores, each task's score under
  'task_scores', and 'score' their mean or `selection_task`'s)."""
  mixture = get_tasks(config)
  heads = heads_of(mixture)
  mesh = finetune.make_mesh(config)
  on_error = evaluation.on_bad_rows(config)
  train_examples = [readers.read_split(task, config.data_dir, 'train', on_error=on_error)
                    for task in mixture]
  # The vocabulary file is named for the mixture; trained on all its texts when there is none.
  named = dataclasses.replace(mixture[0], name='+'.join(task_names(config)))
  texts = train_examples[0] if config.train_file else sum(train_examples, [])  # one file: one text
  vocab_path = finetune.vocab_file(config, named, texts)
  vocab = vocabularies.load_vocab(vocab_path)

  tokenized = [preprocessing.tokenize(vocab, examples, config.max_input_length,
                                      path=readers.split_path(task, config.data_dir, 'train'))[0]
               for task, examples in zip(mixture, train_examples)]
  sizes = [len(examples) for examples in tokenized]
  rates = mixing_rates(sizes, config.mixing_cap, config.mixing_temperature)
  counts = mixture_counts(sizes, rates, config.mixing_cap)
  logging.info('mixture (cap %s, temperature %g): %s', config.mixing_cap,
               config.mixing_temperature, ', '.join(
                   f'{task.name} {n} examples, rate {r:.3f}, {c} drawn'
                   for task, n, r, c in zip(mixture, sizes, rates, counts)))
  block_length = config.attention_block_length
  if block_length is None:
    block_length = packing.block_length_for(
        [len(tokens) for examples in tokenized for tokens, _ in examples], config.max_input_length)
  packed = pack_mixture(heads, tokenized, counts, config.seed, config.max_input_length,
                        config.max_target_length, block_length or None)
  info = packing.stats(packed)
  logging.info('train: %d examples in %d rows of %d tokens (packing efficiency %.3f); '
               '%.1f steps per epoch', info['examples'], info['rows'], config.max_input_length,
               info['efficiency'], info['rows'] / config.batch_size)
  eval_sets = {task.name: {split: evaluation.load_eval_split(task_config(config, task), task,
                                                           split, vocab)
                           for split in task.eval_names} for task in mixture}

  ckpt_dir = os.path.join(config.output_dir, 'checkpoints')
  cfg = finetune.model_config(config, mixture[0], vocab, load_ckpt.latest_checkpoint(ckpt_dir)
                              or config.checkpoint)
  cfg = dataclasses.replace(cfg, heads=heads, attention_block_length=packing.rows_block_length(
      packed['inputs_segment_ids']) if config.attention_block_length is None
      else cfg.attention_block_length)
  shardings = partitioning.Shardings(enct5.param_specs(cfg), mesh)
  shared = ', '.join(f'{name}={value!r}' for name, value in dataclasses.asdict(cfg).items()
                     if name not in ('num_classes', 'multi_label', 'heads'))  # the heads' own
  logging.info('multi-task EncT5 (%s), heads %s: %s parameters; mesh %s', shared,
               ', '.join(map(_head_line, heads)), f'{enct5.count_params(cfg):,}',
               dict(mesh.shape))
  record = run_record(config, mixture, cfg, vocab_path)
  if jax.process_index() == 0:
    fileio.write_atomically(os.path.join(config.output_dir, finetune.RECORD_FILE), record)
  state = finetune.initial_state(config, cfg, shardings, ckpt_dir)
  if state.step >= config.train_steps:
    logging.info('already trained %d of --train_steps=%d steps; nothing to do', state.step,
                 config.train_steps)
    return max(loop.read_metrics(config.output_dir), key=lambda r: r['score'], default=None)

  keys = ('inputs', 'inputs_segment_ids', 'task_ids') + tuple(
      f'targets/{head.name}' for head in heads)
  step = loop.TrainStep(
      fn=loop.make_train_step(cfg, shardings, enct5.loss_fn, config.learning_rate, config.seed),
      keys=keys, batch_sharding=shardings.batch, dtype=cfg.activation_dtype,
      flops=enct5.train_step_flops(cfg, 'enct5', config.batch_size, config.max_input_length,
                                   config.max_target_length))
  inferences = {task.name: _task_inference(task, cfg, mesh, config) for task in mixture}

  def evaluate_now(params):
    scores, thresholds = {}, {}
    for task in mixture:
      inference = inferences[task.name]
      task_scores, task_thresholds = evaluation.evaluate_sets(
          task_config(config, task), inference, enct5.task_params(params, task.name),
          eval_sets[task.name])
      logging.info('eval %s | %s', task.name, finetune.score_line(task, task_scores))
      scores.update(task_scores)
      if task_thresholds is not None:
        thresholds[f'thresholds/{task.name}'] = finetune.threshold_record(task, task_thresholds)
    return dict(scores=scores, **mixture_score(config, mixture, scores), **thresholds)

  def summarize(sums):
    figures = finetune.summarize(sums)
    figures.update({f'loss/{head.name}': sums[f'loss_sum/{head.name}']
                    / max(sums[f'num_examples/{head.name}'], 1) for head in heads})
    return figures

  settings = loop.Settings(config.train_steps, config.eval_every, config.log_every,
                           config.keep_checkpoints, config.output_dir)
  batches = packing.train_batches(packed, config.batch_size, config.seed,
                                  start_step=state.step)
  return loop.train_loop(settings, state, step, batches, evaluate_now, summarize,
                         extra_files={finetune.RECORD_FILE: record}, watchdog=watchdog)


def _head_line(head):
  """'topic (3 classes)', 'stars (regression)', 'tags (28 labels)'."""
  if head.multi_label:
    return f'{head.name} ({head.num_classes} labels)'
  return f'{head.name} ({"regression" if head.num_classes == 1 else f"{head.num_classes} classes"})'


def _task_inference(task, cfg, mesh, config):
  """What evaluates one task of the mixture: its one-task model (`enct5.task_config`), whose
  parameters `enct5.task_params` takes from the multi-task ones."""
  task_cfg = enct5.task_config(cfg, task.name)
  shardings = partitioning.Shardings(enct5.param_specs(task_cfg), mesh)
  return evaluation.Inference(task, task_cfg, shardings,
                              evaluation.make_eval_step(task_cfg, shardings), labels=None,
                              thresholds=config.threshold)


def mixture_score(config, mixture, scores):
  """{'task_scores': each task's `metrics.task_score`, 'score': their mean (GLUE's average
  over the tasks of the mixture) or `selection_task`'s}: what picks the best checkpoint."""
  task_scores = {task.name: metrics.task_score(task, scores) for task in mixture}
  score = (task_scores[config.selection_task] if config.selection_task
           else float(np.mean(list(task_scores.values()))))
  return dict(task_scores=task_scores, score=score)


# ----------------------------------------------------------------------------------------------
# Evaluation and prediction: each task through its own head, by the one-task path.
# ----------------------------------------------------------------------------------------------

def evaluate(config):
  """Every task's metrics on its validation split(s), with its own head; -> the scores, and
  the mixture's score as in training."""
  mixture = get_tasks(config)
  scores = {}
  for task in mixture:
    scores.update(finetune.evaluate(task_config(config, task)))
  result = mixture_score(config, mixture, scores)
  logging.info('mixture | %s | score %.2f', ' '.join(
      f'{name} {score:.2f}' for name, score in result['task_scores'].items()), result['score'])
  return scores


def every_task_inference(config):
  """Every task of a run whose tasks share their text (your own file's label columns) in one
  pass: (`evaluation.Inference` of the multi-task model, its eval step giving every head's
  logits on every slot (`enct5.apply_every_task`), its `tasks` and each one's thresholds;
  params, vocab, checkpoint path)."""
  mixture = get_tasks(config)
  if not config.train_file:
    raise finetune.ConfigError(f'{config.output_dir} is a multi-task run of GLUE tasks, which do '
                               'not share their text: say which task labels, --task= (task=) '
                               f'one of {config.task}')
  path = finetune.inference_checkpoint(config)
  vocab = vocabularies.load_vocab(finetune.vocab_file(config, mixture[0]))
  cfg = dataclasses.replace(finetune.model_config(config, mixture[0], vocab, path),
                            heads=heads_of(mixture))
  shardings = partitioning.Shardings(enct5.param_specs(cfg), finetune.make_mesh(config))
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(config.seed),
                                 shardings=shardings.params)
  eval_step = evaluation.make_eval_step(
      cfg, shardings, outputs=lambda params, cfg, batch, _: enct5.apply_every_task(params, cfg,
                                                                                   batch))
  thresholds = {task.name: finetune.inference_thresholds(task_config(config, task), task, path)
                for task in mixture}
  logging.info('inference with %s: every task in one pass (%s)', path,
               ', '.join(task_names(config)))
  inference = evaluation.Inference(mixture[0], cfg, shardings, eval_step, labels=None,
                                   thresholds=thresholds, tasks=tuple(mixture))
  return inference, params, vocab, path

