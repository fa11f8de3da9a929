"""Metrics, as T5 computes them (`t5.evaluation.metrics`, i.e. as sklearn and scipy do), in
percent: accuracy, F1, Matthews and Pearson/Spearman correlations for GLUE, micro-, macro- and
per-label F1 for multi-label tasks; a task's metrics on one split (`compute_metrics`), its
checkpoint-selection score (`task_score`) and the GLUE average of the paper's Table 1.
"""
import math

import numpy as np

import tasks

INVALID_PREDICTION = -1  # T5's class id for an output string that is no label


def accuracy(labels, predictions):
  return 100.0 * float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels, predictions, positive):
  """F1 of the positive class (MRPC 'equivalent', QQP 'duplicate'); 0 if it never occurs."""
  labels, predictions = np.asarray(labels) == positive, np.asarray(predictions) == positive
  true_positives = np.sum(labels & predictions)
  denominator = np.sum(labels) + np.sum(predictions)
  return 100.0 * float(2 * true_positives / denominator) if denominator else 0.0


def matthews_corrcoef(labels, predictions):
  """Matthews correlation (CoLA); 0 when a marginal is constant, as sklearn."""
  classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  n = len(labels)
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (inverse[:n], inverse[n:]), 1)
  true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  cov_true_pred = np.trace(confusion) * n - true_sum @ pred_sum
  cov_pred = n * n - pred_sum @ pred_sum
  cov_true = n * n - true_sum @ true_sum
  if cov_pred * cov_true == 0:
    return 0.0
  return 100.0 * float(cov_true_pred / math.sqrt(cov_true * cov_pred))


def pearson_corrcoef(x, y):
  """Pearson's r (STS-B); nan when either side is constant, as scipy."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = math.sqrt(float(x @ x) * float(y @ y))
  return 100.0 * float(x @ y) / denominator if denominator else math.nan


def average_ranks(x):
  """Ranks 1..n; tied values share the mean of their ranks (scipy `rankdata`'s 'average')."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  starts_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
  starts = np.flatnonzero(starts_group)
  ends = np.append(starts[1:], len(x))  # exclusive
  ranks = np.empty(len(x), np.float64)
  ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(starts_group) - 1]
  return ranks


def spearman_corrcoef(x, y):
  """Spearman's rho (STS-B): Pearson's r of the average ranks."""
  return pearson_corrcoef(average_ranks(x), average_ranks(y))


def one_hot(class_ids, num_classes):
  """Class ids 1..n [N] -> one-hot rows [N, n] int32; an id outside 1..n (a T5 output that is
  no label) is a row of zeros."""
  class_ids = np.asarray(class_ids)
  return (class_ids[:, None] == np.arange(1, num_classes + 1)).astype(np.int32)


def multi_hot(label_sets, num_classes):
  """Multi-label rows' class ids (`Example.label`: tuples of ids 1..n) -> multi-hot [N, n]."""
  rows = np.zeros((len(label_sets), num_classes), np.int32)
  for i, label_set in enumerate(label_sets):
    rows[i, np.asarray(label_set, np.int64) - 1] = 1
  return rows


def label_f1(labels, predictions):
  """Each label's F1 of multi-hot rows [N, n] -> [n], in percent; 0 for a label that is
  neither true nor predicted anywhere (as sklearn's f1_score with zero_division=0)."""
  labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
  true_positives = np.sum(labels & predictions, axis=0)
  denominator = np.sum(labels, axis=0) + np.sum(predictions, axis=0)
  return 100.0 * np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), 0.0)


def macro_f1(labels, predictions):
  """The mean of the labels' F1 (`label_f1`): every label weighs the same."""
  return float(np.mean(label_f1(labels, predictions)))


def micro_f1(labels, predictions):
  """F1 of all (row, label) decisions pooled: frequent labels weigh more. 0 if nothing is
  true or predicted."""
  labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
  denominator = labels.sum() + predictions.sum()
  return 100.0 * float(2 * np.sum(labels & predictions) / denominator) if denominator else 0.0


THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)  # the candidates: 0.05, 0.10, .., 0.95
MIN_THRESHOLD_SUPPORT = 10  # a label true this often on validation gets a threshold of its own


def choose_thresholds(task, labels, probabilities):
  """Multi-label decision thresholds chosen on validation -> (global threshold, [n] applied).

  The global threshold is the candidate (`THRESHOLDS`) with the best selection score (the
  mean of `task.selection_metrics`, micro- or macro-F1). Per label, each label true at least
  MIN_THRESHOLD_SUPPORT times gets the candidate of its own best F1, the rarer ones the global
  threshold. Applied are the per-label thresholds where they score higher than the global one
  alone (they maximize macro-F1; micro-F1 may prefer one for all). Ties go to the lowest
  candidate, and to the global threshold. labels: multi-hot [N, n]; probabilities: [N, n].

  NOTE: thresholds tuned on a split flatter that split's scores; a held-out estimate tunes on
  one part and scores another (experiments/goemotions.md).
  """
  labels, probabilities = np.asarray(labels, bool), np.asarray(probabilities)
  functions = {'micro_f1': micro_f1, 'macro_f1': macro_f1}

  def score(thresholds):
    decisions = probabilities >= thresholds
    return np.mean([functions[metric](labels, decisions) for metric in task.selection_metrics])
  global_threshold = float(THRESHOLDS[int(np.argmax([score(t) for t in THRESHOLDS]))])
  own = THRESHOLDS[np.argmax([label_f1(labels, probabilities >= t) for t in THRESHOLDS], axis=0)]
  supported = labels.sum(axis=0) >= MIN_THRESHOLD_SUPPORT
  per_label = np.where(supported, own, global_threshold)
  if score(per_label) > score(global_threshold):
    return global_threshold, per_label
  return global_threshold, np.full(labels.shape[1], global_threshold)


def compute_metrics(task, split, labels, predictions):
  """The task's metrics on one split -> {'<eval name>/<metric>': value}.

  `split`: one of `task.eval_names` (named as they say), or another split of the task's
  files (a labeled test file; named as the split). labels: class ids 1..n, scores, or
  multi-hot rows [N, n] (multi-label: `multi_hot`, or `packing.per_example` of the packed
  targets). predictions: the same, where a class prediction may be INVALID_PREDICTION (a T5
  output string that is no label). Multi-label adds each label's F1 as
  '<eval name>/f1/<label name>'.

  NOTE: as T5's metrics count an invalid prediction: wrong for accuracy, a class of its own
  for Matthews correlation (sklearn's), and the opposite of the gold label for F1
  (`f1_score_with_invalid`); macro-F1 (our own tasks) counts it as no class: a miss.
  """
  if split not in task.eval_names and split not in task.files:
    raise ValueError(f'{task.name}: no metrics for split {split!r}; evaluated splits are '
                     f'{sorted(task.eval_names)}')
  eval_name = task.eval_names.get(split, split)
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  _check_metric_inputs(task, labels, predictions)
  if task.is_multi_label:
    scores = {f'{eval_name}/micro_f1': micro_f1(labels, predictions),
              f'{eval_name}/macro_f1': macro_f1(labels, predictions)}
    per_label = label_f1(labels, predictions)
    scores.update({f'{eval_name}/f1/{name}': float(value)
                   for name, value in zip(task.label_names, per_label)})
    return scores
  positive = 2  # T5's label 1 ('equivalent', 'duplicate') is class id 2
  opposite = np.where(labels == positive, 1, positive)  # binary tasks only use it
  n = task.num_classes
  functions = {
      'accuracy': accuracy,
      'f1': lambda l, p: f1(l, np.where(p == INVALID_PREDICTION, opposite, p), positive),
      'macro_f1': lambda l, p: macro_f1(one_hot(l, n), one_hot(p, n)),
      'matthews_corrcoef': matthews_corrcoef,
      'pearson_corrcoef': pearson_corrcoef,
      'spearman_corrcoef': spearman_corrcoef,
  }
  return {f'{eval_name}/{metric}': functions[metric](labels, predictions)
          for metric in task.metric_names}


def _check_metric_inputs(task, labels, predictions):
  """Labels and predictions of equal shape, non-empty, and valid for the task's kind."""
  shape = (len(labels), task.num_classes) if task.is_multi_label else (len(labels),)
  if labels.shape != predictions.shape or labels.shape != shape or not len(labels):
    raise ValueError(f'{task.name}: labels {labels.shape} and predictions '
                     f'{predictions.shape} must both be non-empty, of shape [N]'
                     + (f' x {task.num_classes} (multi-hot)' if task.is_multi_label else ''))
  if task.is_multi_label:
    if not (np.isin(labels, (0, 1)).all() and np.isin(predictions, (0, 1)).all()):
      raise ValueError(f'{task.name}: multi-label labels and predictions must be 0 or 1')
    return
  if task.is_regression:
    return
  for name, values, allowed in (('label', labels, ()),
                                ('prediction', predictions, (INVALID_PREDICTION,))):
    valid = ((values >= 1) & (values <= task.num_classes)) | np.isin(values, allowed)
    if not valid.all():
      raise ValueError(f'{task.name}: {name} {values[~valid][0]} is not a class id '
                       f'1..{task.num_classes}')


def task_score(task, scores):
  """The mean of the task's selection metrics: the best-checkpoint criterion, and a GLUE
  task's column in Table 1 (all its metrics).

  NOTE: as T5's `eval_utils`: metrics of one task (MRPC F1 and accuracy; STS-B Pearson and
  Spearman; MNLI matched and mismatched accuracy) are averaged into one score, and T5's
  `metric_group_max` picks the best step by that mean. Our own tasks select by one metric
  (or STS-B's mean) per kind, `FILE_METRICS`.
  """
  missing = [key for key in task.selection_keys if key not in scores]
  if missing:
    raise ValueError(f'{task.name}: scores lack {missing}')
  if not task.selection_keys:
    raise ValueError(f'{task.name or "the task"}: no validation split to score')
  return float(np.mean([scores[key] for key in task.selection_keys]))


def glue_average(scores):
  """The GLUE average of Table 1: the mean over the 8 tasks of each task's `task_score`.

  NOTE: T5's `compute_avg_glue` averages each task's metrics first, then the tasks; MNLI's
  matched and mismatched accuracies count as one task (8 tasks, no WNLI).
  """
  missing = [key for task in tasks.TASKS.values() for key in task.metric_keys if key not in scores]
  if missing:
    raise ValueError(f'the GLUE average needs all 8 tasks; scores lack {missing}')
  return float(np.mean([task_score(task, scores) for task in tasks.TASKS.values()]))

