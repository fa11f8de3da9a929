"""Tasks for EncT5: where a task's files are, how a row becomes T5 text, its labels and metrics.

A `Task` says where its files are and in which format, which columns hold the text and how
they become T5's input, which column holds the label and of which kind it is (classification,
regression or multi-label), the label names, the metrics and those that pick the best
checkpoint. The eight GLUE tasks of the paper's Table 1 (§4.1; WNLI and AX left out) and the
demo task are presets (`TASKS`, `DEMO_TASK`); `file_task` makes a task of your own files.

Class labels are numbered from 1 because class 0 is EncT5's padding class (§3); regression
(STS-B) keeps the raw score; a multi-label row has a set of class ids (multi-hot targets, one
sigmoid per label). GLUE's metrics are T5's (`glue_utils.GLUE_METRICS`, computed in
`metrics`); your own tasks get accuracy and macro-F1, Pearson and Spearman, or micro-, macro-
and per-label F1.

The road from here: `readers` reads a task's files into Examples, `preprocessing` tokenizes
(`vocabularies`) and packs them, `metrics` scores predictions.
"""
import dataclasses
import math
import os

import numpy as np

import fileio
import readers

# Real GLUE data (and the T5X-written test checkpoints) live outside the repository, in ../shared.
SHARED = os.environ.get('ENCT5_SHARED',
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared'))


KINDS = ('classification', 'regression', 'multi_label')

_FILES = {'train': 'train.tsv', 'validation': 'dev.tsv', 'test': 'test.tsv'}
_MNLI_FILES = {'train': 'train.tsv',
               'validation_matched': 'dev_matched.tsv',
               'validation_mismatched': 'dev_mismatched.tsv',
               'test_matched': 'test_matched.tsv',
               'test_mismatched': 'test_mismatched.tsv'}


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: its files, how a row becomes T5 text, its labels and metrics.

  A run records it (`task_to_json`), so that prediction knows the labels without the training
  file.
  """
  name: str  # T5's benchmark name for GLUE; the first word of every input ('' for none) unless
             # text_prefix is set
  features: tuple  # (feature name in the text, column), in text order
  label_column: str
  files: dict  # split -> a file name in the task's GLUE folder, or a path (file_task)
  kind: str = 'classification'  # one of KINDS
  label_names: tuple = ()  # class id = index + 1; predictions are written as these
  raw_labels: tuple = ()  # how the files spell each label, in the same order
  metric_names: tuple = ()
  selection_metrics: tuple = ()  # the metrics whose mean picks the best checkpoint
  eval_names: dict = None  # validation split -> name its metrics are reported under
  fmt: str = None  # one of readers.FORMATS; None: each file's by its extension (`file_format`)
  dir_name: str = ''  # the task's folder in the GLUE data directory; '' for file_task's
  headerless_columns: tuple = ()  # CoLA's train/dev files have no header row
  label_separator: str = ','  # between a multi-label row's labels in CSV/TSV ('0,15')
  score_range: tuple = None  # regression: (low, high) a score must lie in (STS-B: 0 to 5)
  text_prefix: str = None  # the first word of every input instead of the name ('' for none):
                          # the tasks of one file's label columns share their text

  @property
  def is_regression(self):
    return self.kind == 'regression'

  @property
  def is_multi_label(self):
    return self.kind == 'multi_label'

  @property
  def num_classes(self):
    """n labels (class ids 1..n), or 1 for regression: EncT5Config.num_classes."""
    return 1 if self.is_regression else len(self.label_names)

  @property
  def metric_keys(self):
    """'<eval name>/<metric>' for every score the task reports, e.g. 'mrpc/f1'."""
    return tuple(f'{eval_name}/{metric}' for eval_name in self.eval_names.values()
                 for metric in self.metric_names)

  @property
  def selection_keys(self):
    """The scores whose mean picks the best checkpoint (`task_score`)."""
    return tuple(f'{eval_name}/{metric}' for eval_name in self.eval_names.values()
                 for metric in self.selection_metrics)

  def raw_label(self, prediction):
    """A prediction as the files spell labels (GLUE submission files): a class id's label, a
    score with 3 decimals, or a multi-label row's multi-hot vector as separated labels."""
    if self.is_regression:
      return f'{float(prediction):.3f}'
    if self.is_multi_label:
      return self.label_separator.join(self.raw_labels[i] for i in np.flatnonzero(prediction))
    return self.raw_labels[int(prediction) - 1]


def _task(name, dir_name, features, label_column, label_names, raw_labels, metric_names,
          **kwargs):
  """A GLUE task: GLUE's TSV layout in its folder; T5's metrics, whose mean selects (T5)."""
  kwargs.setdefault('eval_names', {'validation': name})
  kwargs.setdefault('files', dict(_FILES))
  return Task(name, features, label_column, label_names=label_names, raw_labels=raw_labels,
              metric_names=metric_names, selection_metrics=metric_names, fmt='glue',
              dir_name=dir_name, **kwargs)


_BINARY = ('0', '1')
TASKS = {task.name: task for task in [
    _task('cola', 'CoLA', (('sentence', 'sentence'),), 'label',
          ('unacceptable', 'acceptable'), _BINARY, ('matthews_corrcoef',),
          headerless_columns=('source', 'label', 'original_label', 'sentence')),
    _task('sst2', 'SST-2', (('sentence', 'sentence'),), 'label',
          ('negative', 'positive'), _BINARY, ('accuracy',)),
    _task('mrpc', 'MRPC', (('sentence1', '#1 String'), ('sentence2', '#2 String')), 'Quality',
          ('not_equivalent', 'equivalent'), _BINARY, ('f1', 'accuracy')),
    _task('stsb', 'STS-B', (('sentence1', 'sentence1'), ('sentence2', 'sentence2')), 'score',
          (), (), ('pearson_corrcoef', 'spearman_corrcoef'), kind='regression',
          score_range=(0.0, 5.0)),
    _task('qqp', 'QQP', (('question1', 'question1'), ('question2', 'question2')),
          'is_duplicate', ('not_duplicate', 'duplicate'), _BINARY, ('f1', 'accuracy')),
    # MNLI's premise is the TSV's sentence1; sorted feature order puts the hypothesis first.
    _task('mnli', 'MNLI', (('hypothesis', 'sentence2'), ('premise', 'sentence1')),
          'gold_label', ('entailment', 'neutral', 'contradiction'),
          ('entailment', 'neutral', 'contradiction'), ('accuracy',), files=dict(_MNLI_FILES),
          eval_names={'validation_matched': 'mnli_matched',
                      'validation_mismatched': 'mnli_mismatched'}),
    _task('qnli', 'QNLI', (('question', 'question'), ('sentence', 'sentence')), 'label',
          ('entailment', 'not_entailment'), ('entailment', 'not_entailment'), ('accuracy',)),
    _task('rte', 'RTE', (('sentence1', 'sentence1'), ('sentence2', 'sentence2')), 'label',
          ('entailment', 'not_entailment'), ('entailment', 'not_entailment'), ('accuracy',)),
]}


# The demo task: made-up words; the label says whether a sentence has more "good" than "bad"
# cue words. It goes through exactly the GLUE road (TSV files, T5 text, SentencePiece).
DEMO_TASK = _task('synthetic', 'synthetic', (('sentence', 'sentence'),), 'label',
                  ('negative', 'positive'), _BINARY, ('accuracy',))


def get_task(name):
  """A GLUE task by its T5 name, or the demo task ('synthetic')."""
  if name == DEMO_TASK.name:
    return DEMO_TASK
  if name not in TASKS:
    raise ValueError(f'unknown GLUE task {name!r}; expected one of {sorted(TASKS)}')
  return TASKS[name]


# Your own tasks' metrics per kind, and those that pick the best checkpoint by default
# (regression: the mean of both correlations, as T5 scores STS-B).
FILE_METRICS = {
    'classification': (('accuracy', 'macro_f1'), ('accuracy',)),
    'regression': (('pearson_corrcoef', 'spearman_corrcoef'),
                   ('pearson_corrcoef', 'spearman_corrcoef')),
    'multi_label': (('micro_f1', 'macro_f1'), ('macro_f1',)),
}


def file_task(train_file, validation_file=None, test_file=None, *, text_fields=('text',),
              label_field='label', kind='classification', labels=None, labels_by_index=False,
              label_separator=',', fmt=None, name='', text_prefix=None, selection_metric=None):
  """A task of your own CSV, TSV or JSON Lines files.

  Args:
    train_file, validation_file, test_file: paths. Each file's format comes from its
      extension (.csv, .tsv, .jsonl or .ndjson) unless `fmt` ('csv', 'tsv', 'jsonl') is given.
    text_fields: the columns (JSON keys) of the text, in order; each becomes `field: value` in
      T5's input, after `name` if there is one, as GLUE's: ('question', 'passage') ->
      'question: ... passage: ...'; ('text',) -> 'text: ...'.
    label_field: the column of the label.
    kind: 'classification' (one label a row), 'regression' (a number a row) or 'multi_label'
      (zero or more labels a row: a JSON list, or `label_separator`-separated in CSV/TSV; an
      empty field is no label).
    labels: the label names in class order (class id = index + 1). None: the labels of the
      training file, sorted (numbers by value, '2' before '10', then the others). A label of
      any split that is not one of them is a DataError.
    labels_by_index: the files spell each label as its 0-based index into `labels`
      (GoEmotions: `0,15` with labels.txt's names, see `read_label_names`); predictions are
      written as the names. Without it the files spell the names themselves.
    name: the first word of every input and the name of the validation metrics; '' (the
      default): no first word, and metrics named 'validation/...'.
    text_prefix: the first word of every input instead of `name` ('' for none).
    selection_metric: the metric that picks the best checkpoint (one of FILE_METRICS[kind]);
      default: accuracy, the mean of Pearson and Spearman, or macro-F1.

  Reads the training file once to find its labels when `labels` is None.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if fmt not in (None, 'csv', 'tsv', 'jsonl'):
    raise ValueError(f"fmt must be 'csv', 'tsv', 'jsonl' or None (by extension), got {fmt!r}")
  text_fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
  if not text_fields or len(set(text_fields)) < len(text_fields) or label_field in text_fields:
    raise ValueError(f'text_fields {text_fields} must be distinct columns, without the label '
                     f'field {label_field!r}')
  metric_names, selection = FILE_METRICS[kind]
  if selection_metric is not None:
    if selection_metric not in metric_names:
      raise ValueError(f'selection_metric {selection_metric!r} is not one of the {kind} '
                       f'metrics {metric_names}')
    selection = (selection_metric,)
  files = {split: path for split, path in (('train', train_file), ('validation', validation_file),
                                           ('test', test_file)) if path}
  task = Task(name, tuple((field, field) for field in text_fields), label_field, files,
              kind=kind, metric_names=metric_names, selection_metrics=selection,
              eval_names={'validation': name or 'validation'} if validation_file else {},
              fmt=fmt, label_separator=label_separator, text_prefix=text_prefix)
  for path in files.values():
    readers.file_format(task, path)  # an unknown extension fails here, not after training
  if kind == 'regression':
    if labels is not None or labels_by_index:
      raise ValueError('regression takes no labels (labels, labels_by_index)')
    return task
  label_names, raw_labels = _label_set(task, labels, labels_by_index)
  if kind == 'multi_label':
    # A row's labels are read and written (predictions) joined by the separator.
    for label in {*label_names, *raw_labels}:
      if label_separator in label:
        raise ValueError(f'label {label!r} holds the label separator {label_separator!r}: a '
                         'row of labels would not read back; choose another label_separator')
  return dataclasses.replace(task, label_names=label_names, raw_labels=raw_labels)


def _label_set(task, labels, labels_by_index):
  """(label names, how the files spell them) of a file task's classes."""
  if labels is None:
    if labels_by_index:
      raise ValueError('labels_by_index needs the label names (labels=...)')
    train_path = readers.split_path(task, None, 'train')
    found = tuple(sorted(readers.labels_in(task, train_path), key=_label_order))
    return found, found
  labels = (labels,) if isinstance(labels, str) else tuple(labels)
  if not labels or not all(isinstance(x, str) and x.strip() == x and x for x in labels):
    raise ValueError(f'labels must be non-empty strings without surrounding spaces: {labels}')
  if len(set(labels)) < len(labels):
    raise ValueError(f'labels {labels} name a label twice')
  return labels, tuple(map(str, range(len(labels)))) if labels_by_index else labels


def _label_order(label):
  """Sort key of labels found in a file: numbers by value ('2' before '10'), then the rest."""
  try:
    value = float(label)
  except ValueError:
    value = math.nan
  return (0, value, label) if math.isfinite(value) else (1, 0.0, label)


def task_to_json(task):
  """The task as a dict of JSON values, for a run's record; `task_from_json` reads it back."""
  return dataclasses.asdict(task)


def task_from_json(record):
  """The Task of `task_to_json`'s dict after a JSON round trip (lists back to tuples)."""
  def tuples(value):
    return tuple(map(tuples, value)) if isinstance(value, list) else value
  return Task(**{key: tuples(value) for key, value in record.items()})


def write_demo_task(directory, seed, num_train=20000, num_validation=1000):
  """GLUE-style train.tsv / dev.tsv of the demo task in `directory`; chance is 50%."""
  rng = np.random.default_rng(seed)
  syllables = [c + v for c in 'bdfgklmnprstvz' for v in 'aeiou']
  words = set()
  while len(words) < 600:
    words.add(''.join(rng.choice(syllables, rng.integers(1, 4))))
  words = rng.permutation(sorted(words)).tolist()
  good, bad, neutral = words[:12], words[12:24], words[24:]
  for split, count in (('train', num_train), ('validation', num_validation)):
    lines = ['sentence\tlabel']
    for _ in range(count):
      num_good, num_bad = rng.choice(4, 2, replace=False)  # never a tie
      sentence = (rng.choice(good, num_good).tolist() + rng.choice(bad, num_bad).tolist() +
                  rng.choice(neutral, rng.integers(4, 16)).tolist())
      lines.append(f'{" ".join(rng.permutation(sentence))}\t{int(num_good > num_bad)}')
    # Written atomically: every process of a multi-host run writes the same file.
    fileio.write_atomically(os.path.join(directory, DEMO_TASK.files[split]),
                            ('\n'.join(lines) + '\n').encode())

