"""Tasks for EncT5: GLUE's files or your own CSV, TSV or JSON Lines -> T5 text -> SentencePiece
ids -> packed rows; metrics.

One data path for every task. A `Task` says where its files are and in which format, which
columns hold the text and how they become T5's input, which column holds the label and of which
kind it is (classification, regression or multi-label), the label names, the metrics and those
that pick the best checkpoint. The eight GLUE tasks of the paper's Table 1 (§4.1; WNLI and AX
left out) and the demo task are presets (`TASKS`, `DEMO_TASK`); `file_task` makes a task of
your own files.

Text follows T5 (`t5.data.preprocessors.glue` with `t5.data.glue_utils`): the task name, then
`feature: text` for each text feature, e.g. `mnli hypothesis: ... premise: ...` (GLUE in T5's
sorted feature order; your own files in the order of their text fields, after the task's name
if it has one). Class labels are numbered from 1 because class 0 is EncT5's padding class (§3);
regression (STS-B) keeps the raw score; a multi-label row has a set of class ids (multi-hot
targets, one sigmoid per label). GLUE's metrics are T5's (`glue_utils.GLUE_METRICS`), scaled to
0-100 as T5 reports them; your own tasks get accuracy and macro-F1, Pearson and Spearman, or
micro-, macro- and per-label F1.

Reads top-down: tasks (GLUE's, the demo's, `file_task`); reading files (`read_file`, and
`stream_file` to label a large file chunk by chunk); SentencePiece; one split read, tokenized
and packed (`load_packed`, the road training takes); labels as T5 text for the T5 and 1decT5
baselines (`LabelText`); metrics; prediction rows.
"""
import csv
import dataclasses
import json
import logging
import math
import os

import numpy as np
import sentencepiece as spm

import packing

# Real GLUE data (and the T5X-written test checkpoints) live outside the repository, in ../shared.
SHARED = os.environ.get('ENCT5_SHARED',
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared'))

# T5's SentencePiece ids (`seqio.SentencePieceVocabulary`): pad 0, EOS 1, unk 2, no BOS.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

KINDS = ('classification', 'regression', 'multi_label')
FORMATS = ('glue', 'csv', 'tsv', 'jsonl')  # 'glue': GLUE's own TSV layout (`_glue_rows`)
_EXTENSIONS = {'.csv': 'csv', '.tsv': 'tsv', '.jsonl': 'jsonl', '.ndjson': 'jsonl'}

_FILES = {'train': 'train.tsv', 'validation': 'dev.tsv', 'test': 'test.tsv'}
_MNLI_FILES = {'train': 'train.tsv',
               'validation_matched': 'dev_matched.tsv',
               'validation_mismatched': 'dev_mismatched.tsv',
               'test_matched': 'test_matched.tsv',
               'test_mismatched': 'test_mismatched.tsv'}


class DataError(ValueError):
  """A data or vocabulary file that cannot be used as it is; the message names it (and the
  line) and says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: its files, how a row becomes T5 text, its labels and metrics.

  A run records it (`task_to_json`), so that prediction knows the labels without the training
  file.
  """
  name: str  # the first word of every input ('' for none); T5's benchmark name for GLUE
  features: tuple  # (feature name in the text, column), in text order
  label_column: str
  files: dict  # split -> a file name in the task's GLUE folder, or a path (file_task)
  kind: str = 'classification'  # one of KINDS
  label_names: tuple = ()  # class id = index + 1; predictions are written as these
  raw_labels: tuple = ()  # how the files spell each label, in the same order
  metric_names: tuple = ()
  selection_metrics: tuple = ()  # the metrics whose mean picks the best checkpoint
  eval_names: dict = None  # validation split -> name its metrics are reported under
  fmt: str = None  # one of FORMATS; None: each file's by its extension (`file_format`)
  dir_name: str = ''  # the task's folder in the GLUE data directory; '' for file_task's
  headerless_columns: tuple = ()  # CoLA's train/dev files have no header row
  label_separator: str = ','  # between a multi-label row's labels in CSV/TSV ('0,15')
  score_range: tuple = None  # regression: (low, high) a score must lie in (STS-B: 0 to 5)

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
              label_separator=',', fmt=None, name='', selection_metric=None):
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
              fmt=fmt, label_separator=label_separator)
  for path in files.values():
    file_format(task, path)  # an unknown extension fails here, not after training
  if kind == 'regression':
    if labels is not None or labels_by_index:
      raise ValueError('regression takes no labels (labels, labels_by_index)')
    return task
  label_names, raw_labels = _label_set(task, labels, labels_by_index)
  return dataclasses.replace(task, label_names=label_names, raw_labels=raw_labels)


def _label_set(task, labels, labels_by_index):
  """(label names, how the files spell them) of a file task's classes."""
  if labels is None:
    if labels_by_index:
      raise ValueError('labels_by_index needs the label names (labels=...)')
    found = tuple(sorted(_labels_in(task, split_path(task, None, 'train')), key=_label_order))
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


def _labels_in(task, path):
  """The labels of a file's well-formed rows (`read_file` reports the others)."""
  found = set()
  with open(path, 'rb') as f:
    columns, rows = _rows(task, path, f)
    if columns is not None and task.label_column not in columns:
      raise DataError(f'{path}: columns {[task.label_column]} missing from the header '
                      f'{list(columns)}')
    for _, row, problem in rows:
      if problem is None and task.label_column in row:
        try:
          found.update(_label_strings(task, row[task.label_column]))
        except ValueError:
          pass
  if not found:
    raise DataError(f'{path}: no labels in column {task.label_column!r}')
  return found


def read_label_names(path):
  """Label names from a text file, one a line, in class order: GoEmotions' labels.txt names
  0-based label id i on line i + 1 (`file_task(..., labels_by_index=True)`)."""
  with open(path, 'rb') as f:
    names = [line.strip() for line in _text_lines(path, f)]
  while names and not names[-1]:
    names.pop()  # blank lines at the end
  if not names:
    raise DataError(f'{path}: no label names')
  for line_no, name in enumerate(names, 1):
    if not name:
      raise DataError(f'{path}:{line_no}: empty label name')
    if names.index(name) + 1 < line_no:
      raise DataError(f'{path}:{line_no}: label {name!r} again (line {names.index(name) + 1})')
  return tuple(names)


def task_to_json(task):
  """The task as a dict of JSON values, for a run's record; `task_from_json` reads it back."""
  return dataclasses.asdict(task)


def task_from_json(record):
  """The Task of `task_to_json`'s dict after a JSON round trip (lists back to tuples)."""
  def tuples(value):
    return tuple(map(tuples, value)) if isinstance(value, list) else value
  return Task(**{key: tuples(value) for key, value in record.items()})


# ---------------------------------------------------------------------------------------------
# Reading files: GLUE's TSV layout, CSV, TSV and JSON Lines, one road from a row to an Example.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Example:
  idx: int  # 0-based data row of the file (TFDS's `idx`; GLUE's `index` column)
  line: int  # 1-based line in the file where the row starts, for messages and predictions
  text: str  # the T5 input text
  label: object  # class id 1..n, a float score, a tuple of class ids (multi-label), or None


def format_text(task, fields):
  """T5's text: 'rte sentence1: <s1> sentence2: <s2>' (`preprocessors.glue`, `stsb`); without
  the first word when the task has no name.

  NOTE: fields are joined as they are, as in T5 (SST-2's sentences end with a space);
  SentencePiece's normalizer collapses the extra whitespace.
  """
  parts = [task.name] if task.name else []
  for feature, _ in task.features:
    parts += [f'{feature}:', fields[feature]]
  return ' '.join(parts)


def task_dir(task, data_dir):
  """A GLUE task's folder: `data_dir` is the GLUE root (holding SST-2/, ...) or that folder."""
  own = os.path.join(data_dir, task.dir_name)
  if os.path.isdir(own):
    return own
  if any(os.path.isfile(os.path.join(data_dir, f)) for f in task.files.values()):
    return data_dir
  raise FileNotFoundError(f'{data_dir}: found neither {own}/ nor the {task.name} files '
                          f'{sorted(set(task.files.values()))} in it')


def split_path(task, data_dir, split):
  """The file of one split: in the GLUE task's folder (`data_dir` as in `task_dir`), or the
  path a file task was given (`data_dir` unused: None)."""
  if split not in task.files:
    raise ValueError(f'task {task.name} has no split {split!r}; expected one of '
                     f'{sorted(task.files)}')
  folder = task_dir(task, data_dir) if task.dir_name else ''
  path = os.path.join(folder, task.files[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found (the {split} split of {task.name or "the task"})')
  return path


def file_format(task, path):
  """The format of a file of the task: the task's `fmt`, else the file's extension's."""
  if task.fmt:
    return task.fmt
  extension = os.path.splitext(path)[1].lower()
  if extension not in _EXTENSIONS:
    raise DataError(f'{path}: cannot tell the format from the extension {extension!r}; name '
                    'the file .csv, .tsv or .jsonl, or give the format (csv, tsv or jsonl)')
  return _EXTENSIONS[extension]


def read_split(task, data_dir, split, *, labeled=None, on_error='raise'):
  """The examples of one split (`split_path`); test splits are read without labels unless
  `labeled` says otherwise."""
  labeled = not split.startswith('test') if labeled is None else labeled
  return read_file(task, split_path(task, data_dir, split), labeled=labeled, on_error=on_error)


def read_file(task, path, *, labeled=True, on_error='raise'):
  """A file's rows as Examples, in file order (formats: `_glue_rows`, `_delimited_rows`,
  `_jsonl_rows`).

  `labeled=False` reads files without labels (test files, text to label): label None, and
  the label column need not exist. Bad rows (a missing column or key, an empty text, a label
  that is unknown, not a number or out of range, invalid JSON, a wrong number of columns)
  raise DataError naming file and line when on_error='raise' (default). With on_error='skip'
  they are left out, each logged with its line, and counted in the log; the other examples
  keep their `idx`. Bytes that are not UTF-8, broken quoting, a missing column in the header
  and a file without examples are always errors. A row whose text fields are all empty is
  bad; one empty field of several is kept, as T5 keeps it, and logged.
  """
  return [example for _, example in _examples(task, path, labeled=labeled, on_error=on_error)]


def stream_file(task, path, chunk_size, *, id_field=None, labeled=False, fmt=None,
                on_error='raise'):
  """A (large) file's rows in chunks of `chunk_size`, in file order, for labelling it in
  bounded memory: read, tokenize, pack and predict a chunk at a time.

  Yields (ids, examples) per chunk: each row's value in the column `id_field`, or without one
  its line number (`Example.line`), and its Example (whose `idx`, the row's index in the
  whole file, can go to `packing.pack_examples(ids=...)` and back through
  `packing.per_example`). The label column is read only if `labeled`. `fmt` overrides the
  task's format (`file_format`); errors and `on_error` as in `read_file`.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
  if fmt is not None:
    task = dataclasses.replace(task, fmt=fmt)
  ids, examples = [], []
  for row_id, example in _examples(task, path, labeled=labeled, on_error=on_error,
                                   id_field=id_field):
    ids.append(row_id)
    examples.append(example)
    if len(examples) == chunk_size:
      yield ids, examples
      ids, examples = [], []
  if examples:
    yield ids, examples


def _examples(task, path, *, labeled, on_error, id_field=None):
  """(row id, Example) for each good row of a file, in order: the road of `read_file` and
  `stream_file`. The row id is the `id_field` value, else the line number."""
  if on_error not in ('raise', 'skip'):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  wanted = [column for _, column in task.features]
  wanted += [task.label_column] if labeled else []
  wanted += [id_field] if id_field else []
  count, skipped, empty_fields = 0, [], []
  with open(path, 'rb') as f:
    columns, rows = _rows(task, path, f)
    if columns is not None and any(column not in columns for column in wanted):
      raise DataError(f'{path}: columns {[c for c in wanted if c not in columns]} missing '
                      f'from the header {list(columns)}'
                      + (' (test files: labeled=False)' if labeled else ''))
    for idx, (line_no, row, problem) in enumerate(rows):
      try:
        if problem:
          raise ValueError(problem)
        if any(column not in row for column in wanted):
          raise ValueError(f'keys {[c for c in wanted if c not in row]} missing')
        fields = {feature: _text(row[column], column) for feature, column in task.features}
        if not any(text.strip() for text in fields.values()):
          raise ValueError(f'empty text (columns {[column for _, column in task.features]})')
        label = _parse_label(task, row[task.label_column]) if labeled else None
      except ValueError as e:
        if on_error == 'raise':
          raise DataError(f'{path}:{line_no}: {e}') from None
        skipped.append(line_no)
        logging.warning('%s:%d: skipped: %s', path, line_no, e)
        continue
      if not all(fields.values()):
        empty_fields.append(line_no)
      count += 1
      yield (row[id_field] if id_field else line_no), Example(idx, line_no,
                                                              format_text(task, fields), label)
  _log_read(path, count, skipped, empty_fields)


def _log_read(path, count, skipped, empty_fields):
  """The summary of a read file; a file without examples is an error."""
  if not count and not skipped:
    raise DataError(f'{path}: no examples, only a header (or nothing)')
  if empty_fields:
    logging.warning('%s: %d rows with an empty text field, kept as T5 does (lines %s)',
                    path, len(empty_fields), empty_fields[:10])
  logging.info('%s: read %d examples, skipped %d bad rows%s', path, count, len(skipped),
               f' (lines {skipped[:10]})' if skipped else '')
  if not count:
    raise DataError(f'{path}: all {len(skipped)} rows are bad')


def _rows(task, path, f):
  """(column names, rows) of an open binary file in its format: the header's columns (None
  for JSON Lines, whose rows name their own keys), and (line, row, problem) per data row: row a
  dict column -> value, or None with `problem` saying why the line is no row."""
  fmt = file_format(task, path)
  if fmt == 'glue':
    return _glue_rows(task, path, f)
  if fmt == 'jsonl':
    return None, _jsonl_rows(path, f)
  return _delimited_rows(path, f, ',' if fmt == 'csv' else '\t')


def _text_lines(path, f, keep_ends=False):
  """The lines of a binary file as text, without a leading UTF-8 BOM (and without line ends,
  unless `keep_ends`); bytes that are not UTF-8 raise DataError naming the line."""
  for line_no, line in enumerate(f, 1):
    try:
      text = line.decode('utf-8-sig' if line_no == 1 else 'utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{path}:{line_no}: byte {line[e.start]:#04x} at column {e.start + 1} is '
                      'not UTF-8; data files must be UTF-8 text') from None
    yield text if keep_ends else text.rstrip('\r\n')


def _glue_rows(task, path, f):
  """GLUE's TSV layout, read as TFDS's GLUE builder reads it: tab-separated, no quoting
  (`csv.QUOTE_NONE`: a quote is text), columns found by header name; CoLA's train/dev files
  have no header; a UTF-8 BOM (MRPC), CRLF line ends and empty trailing fields (a tab at the
  end of a line) are ignored."""
  header, lines, first_line = _header(task, path, _text_lines(path, f))
  return header, (_row(line_no, header, line.split('\t'))
                  for line_no, line in enumerate(lines, first_line))


def _row(line_no, header, fields):
  """(line, row, problem) of a line's fields; empty fields past the header's are dropped."""
  if len(fields) > len(header) and not any(fields[len(header):]):
    fields = fields[:len(header)]  # trailing tabs (commas)
  if len(fields) != len(header):
    return line_no, None, f'{len(fields)} columns; the header has {len(header)}'
  return line_no, dict(zip(header, fields)), None


def _header(task, path, lines):
  """(column names, the data lines, the line number of the first data line)."""
  first = next(lines, None)
  if first is None or not first.strip():
    raise DataError(f'{path}: empty file (no header and no rows)')
  fields = first.split('\t')
  while len(fields) > 1 and not fields[-1]:  # trailing tabs
    fields.pop()
  if task.headerless_columns and fields[0] != 'index':  # CoLA train/dev: data from line 1
    return task.headerless_columns, _prepend(first, lines), 1
  return fields, lines, 2


def _prepend(first, lines):
  yield first
  yield from lines


def _delimited_rows(path, f, delimiter):
  """CSV (RFC 4180: "..." around a field, "" for a quote inside, line breaks allowed inside)
  or TSV with the same quoting (GoEmotions' files); the first row names the columns; blank
  lines hold no row. Quoting that never closes, or text after a closing quote, is a DataError
  naming the line where the row starts."""
  reader = csv.reader(_text_lines(path, f, keep_ends=True), delimiter=delimiter, strict=True)
  first = _next_record(path, reader)
  if first is None:
    raise DataError(f'{path}: empty file (no header and no rows)')
  header = first[1]
  while len(header) > 1 and not header[-1]:  # trailing delimiters
    header.pop()
  repeated = sorted({column for column in header if header.count(column) > 1})
  if repeated:
    raise DataError(f'{path}:{first[0]}: columns {repeated} appear twice in the header')
  return header, _delimited_records(path, reader, header)


def _delimited_records(path, reader, header):
  while (record := _next_record(path, reader)) is not None:
    line_no, fields = record
    yield _row(line_no, header, fields)


def _next_record(path, reader):
  """(first line, fields) of a csv reader's next non-blank record, or None at the end."""
  while True:
    line_no = reader.line_num + 1
    try:
      fields = next(reader, None)
    except csv.Error as e:
      raise DataError(f'{path}:{line_no}: broken quoting ({e}): a quoted field ends at its '
                      'closing quote, and a quote inside one is written ""') from None
    if fields != []:
      return None if fields is None else (line_no, fields)


def _jsonl_rows(path, f):
  """JSON Lines: one JSON object a line, its keys the columns; blank lines hold no row."""
  for line_no, line in enumerate(_text_lines(path, f), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      yield line_no, None, f'invalid JSON ({e.msg} at column {e.colno})'
      continue
    if isinstance(row, dict):
      yield line_no, row, None
    else:
      yield line_no, None, f'a JSON {type(row).__name__}, not an object'


def _text(value, column):
  if not isinstance(value, str):
    raise ValueError(f'{column!r} is {json.dumps(value)}, not a string')
  return value


def _parse_label(task, value):
  """A label as a file spells it -> a class id 1..n, a score, or a multi-label row's sorted
  tuple of class ids."""
  if task.is_regression:
    return _score(task, value)
  names = _label_strings(task, value)
  ids = [_class_id(task, name) for name in names]
  if task.is_multi_label:
    if len(set(ids)) < len(ids):
      raise ValueError(f'a label twice in {value!r}')
    return tuple(sorted(ids))
  return ids[0]


def _label_strings(task, value):
  """The labels a field or JSON value holds: one, or for multi-label a JSON list or a
  separated string (empty: no labels). Whitespace around each label is dropped."""
  if not task.is_multi_label:
    return [_label_string(value)]
  if isinstance(value, list):
    return [_label_string(item) for item in value]
  if isinstance(value, str) and not value.strip():
    return []
  if not isinstance(value, str):
    raise ValueError(f'labels {json.dumps(value)} are neither a JSON list nor a string')
  return [_label_string(item) for item in value.split(task.label_separator)]


def _label_string(value):
  # JSON integers name labels as their digits; floats and booleans would be ambiguous.
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise ValueError(f'label {json.dumps(value)} is neither a string nor an integer')
  if not str(value).strip():
    raise ValueError('empty label')
  return str(value).strip()


def _class_id(task, label):
  if label not in task.raw_labels:
    shown = task.raw_labels if len(task.raw_labels) <= 30 else task.raw_labels[:30] + ('...',)
    raise ValueError(f'unknown label {label!r}; {task.name or "the"} labels are {shown}')
  return task.raw_labels.index(label) + 1


def _score(task, value):
  """A regression label: a number (or a string of one); finite, and in the task's range."""
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise ValueError(f'score {json.dumps(value)} is not a number')
  try:
    score = float(value)
  except ValueError:
    raise ValueError(f'score {value!r} is not a number') from None
  if not math.isfinite(score):
    raise ValueError(f'score {value!r} is not a finite number')
  if task.score_range and not task.score_range[0] <= score <= task.score_range[1]:
    low, high = task.score_range
    raise ValueError(f'score {value!r} is outside {task.name}\'s range [{low:g}, {high:g}]')
  return score


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
    path = os.path.join(directory, DEMO_TASK.files[split])
    os.makedirs(directory, exist_ok=True)
    with open(f'{path}.tmp-{os.getpid()}', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    os.replace(f'{path}.tmp-{os.getpid()}', path)


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# SentencePiece.
# ---------------------------------------------------------------------------------------------

def train_vocab(texts, model_prefix, vocab_size):
  """Trains a unigram SentencePiece model with T5's special ids; writes <model_prefix>.model.

  For tests and small experiments only: the paper fine-tunes with T5's own vocabulary.
  `vocab_size` is an upper bound (hard_vocab_limit=False), so tiny corpora still train.
  """
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type='unigram', pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      hard_vocab_limit=False, num_threads=2, minloglevel=2)
  return load_vocab(model_prefix + '.model')


def load_vocab(path):
  """A SentencePieceProcessor, checked to use T5's ids (pad 0, EOS 1, unk 2); for path 'byt5',
  ByT5's `ByteVocabulary`."""
  if path == BYT5_VOCAB:
    return ByteVocabulary()
  try:
    vocab = spm.SentencePieceProcessor(model_file=path)
  except (OSError, RuntimeError) as e:  # RuntimeError: a missing or unparsable file
    raise DataError(f'{path}: not a SentencePiece model ({e})') from None
  ids = (vocab.pad_id(), vocab.eos_id(), vocab.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise DataError(f'{path}: SentencePiece ids (pad, eos, unk) = {ids}; T5 needs '
                    f'{(PAD_ID, EOS_ID, UNK_ID)}')
  return vocab


# ---------------------------------------------------------------------------------------------
# ByT5's vocabulary: UTF-8 bytes, no model file.
# ---------------------------------------------------------------------------------------------

BYT5_VOCAB = 'byt5'  # `load_vocab`'s (and --vocab's) name for ByteVocabulary


class ByteVocabulary:
  """ByT5's vocabulary (seqio `ByteVocabulary`): byte b is id b + 3 after pad 0, EOS 1, unk 2,
  and 125 extra ids (sentinels) follow the 256 bytes: 384 ids, ByT5's `vocab_size`.

  It has the part of SentencePieceProcessor's interface that this code uses (`encode`,
  `decode`, `GetPieceSize`, `pad_id`, `eos_id`, `unk_id`), so it goes wherever a
  SentencePiece vocabulary goes.
  """
  NUM_SPECIAL, NUM_BYTES, NUM_EXTRA_IDS = 3, 256, 125

  def GetPieceSize(self):  # noqa: N802 (SentencePiece's name)
    return self.NUM_SPECIAL + self.NUM_BYTES + self.NUM_EXTRA_IDS

  def pad_id(self):
    return PAD_ID

  def eos_id(self):
    return EOS_ID

  def unk_id(self):
    return UNK_ID

  def encode(self, text, out_type=int, num_threads=None):
    """A string -> its ids; a list of strings -> a list of id lists (as SentencePiece)."""
    del num_threads  # bytes need no threads
    if out_type is not int:
      raise ValueError('ByteVocabulary encodes to ids only (out_type=int)')
    if isinstance(text, list):
      return [self.encode(t) for t in text]
    return [b + self.NUM_SPECIAL for b in text.encode('utf-8')]

  def decode(self, ids):
    """Ids -> text. NOTE: as seqio: special and extra ids are dropped, and invalid UTF-8 is
    ignored (a decoded byte string may end mid-character)."""
    data = bytes(i - self.NUM_SPECIAL for i in ids
                 if self.NUM_SPECIAL <= i < self.NUM_SPECIAL + self.NUM_BYTES)
    return data.decode('utf-8', errors='ignore')


def check_vocab_fits(vocab, vocab_size):
  """Every piece id must index the model's embedding table of `vocab_size` rows; ByT5's bytes
  need ByT5's embedding (384 rows: T5's or mT5's rows would be read as bytes)."""
  if isinstance(vocab, ByteVocabulary) and vocab_size != vocab.GetPieceSize():
    raise DataError(f'ByT5\'s byte vocabulary has {vocab.GetPieceSize()} ids but the model '
                    f'embeds {vocab_size} (cfg.vocab_size): bytes need a ByT5 model '
                    f'(vocab_size {vocab.GetPieceSize()}); for T5 or mT5 pass their '
                    'SentencePiece model as --vocab')
  if vocab.GetPieceSize() > vocab_size:
    raise DataError(f'the SentencePiece vocabulary has {vocab.GetPieceSize()} pieces but the '
                    f'model embeds only {vocab_size} (cfg.vocab_size): ids >= {vocab_size} '
                    'would have no embedding; pass the model\'s own vocabulary as --vocab')


def tokenize(vocab, examples, max_input_length, *, path='<examples>'):
  """SentencePiece ids with EOS, truncated to max_input_length -> ([(ids, label)], truncated).

  NOTE: as seqio's `append_eos_after_trim`: trim to max_input_length - 1 pieces, then append
  EOS, so every example ends in EOS. A text with no pieces is an error naming its line.
  """
  pieces = vocab.encode([example.text for example in examples], out_type=int, num_threads=2)
  tokenized, truncated = [], 0
  for example, ids in zip(examples, pieces):
    if not ids:
      raise DataError(f'{path}:{example.line}: text {example.text!r} tokenizes to nothing')
    if len(ids) >= max_input_length:
      truncated += len(ids) > max_input_length - 1
      ids = ids[:max_input_length - 1]
    tokenized.append((ids + [EOS_ID], example.label))
  logging.info('%s: tokenized %d examples; %d truncated to max_input_length=%d', path,
               len(tokenized), truncated, max_input_length)
  return tokenized, truncated


def pack_split(task, examples, vocab, max_input_length, max_target_length, *,
               method='best_fit', labels=None, path='<examples>', block_length=None):
  """Tokenized, packed rows of one split's examples (see `packing`).

  EncT5: up to `max_target_length` examples a row, each label in its target slot (a
  multi-label row's labels as a multi-hot vector of `task.num_classes`). With
  `labels` (a LabelText: T5's and 1decT5's training rows), each example's label as T5 text in
  decoder rows of `max_target_length` tokens (`packing.pack_seq2seq_examples`).
  `block_length`: every example within one block of that many tokens, for block-local
  attention (`packing.pack_examples`). `packed['example_ids']` holds each example's `idx`
  (its data row in the file).
  """
  tokenized, _ = tokenize(vocab, examples, max_input_length, path=path)
  ids = [example.idx for example in examples]
  if labels is None:
    return packing.pack_examples(
        tokenized, max_input_length, max_target_length, method=method,
        regression=task.is_regression,
        num_labels=task.num_classes if task.is_multi_label else None, ids=ids,
        block_length=block_length)
  targets = labels.tokens([example.label for example in examples])
  return packing.pack_seq2seq_examples(
      [(tokens, target) for (tokens, _), target in zip(tokenized, targets)], max_input_length,
      max_target_length, method=method, ids=ids, block_length=block_length)


def load_packed(task, data_dir, split, vocab, max_input_length, max_target_length, *,
                method='best_fit', labels=None, on_error='raise', block_length=None):
  """The whole road for one split: read, tokenize, pack. -> (examples, packed rows)."""
  examples = read_split(task, data_dir, split, on_error=on_error)
  return examples, pack_split(task, examples, vocab, max_input_length, max_target_length,
                              method=method, labels=labels,
                              path=split_path(task, data_dir, split), block_length=block_length)


# ---------------------------------------------------------------------------------------------
# Labels as T5 text, for the T5 and 1decT5 baselines (paper §4.3).
# ---------------------------------------------------------------------------------------------

INVALID_PREDICTION = -1  # T5's class id for an output string that is no label


def label_texts(task):
  """T5's target strings of a task: its label names, or STS-B's scores 0.0, 0.2, ..., 5.0.

  T5's text labels exist for single-label classification and for scores on STS-B's scale
  (T5's `stsb` rounds to 0.2); other regression and multi-label tasks are EncT5's only.
  """
  if task.is_multi_label or (task.is_regression and task.score_range != (0.0, 5.0)):
    raise DataError(f'T5 and 1decT5 write labels as text: single-label classes or STS-B\'s '
                    f'0-5 scores, not the {task.kind} labels of {task.name or "this task"}; '
                    'use EncT5')
  return [f'{i / 5:.1f}' for i in range(26)] if task.is_regression else list(task.label_names)


def label_text(task, label):
  """T5's target string of a label (`t5.data.preprocessors.glue` with `glue_utils`' label
  names; STS-B: `preprocessors.stsb`).

  NOTE: as T5, STS-B's score x becomes `tf.as_string(tf.round(x * 5) / 5, precision=1)` in
  float32 (TFDS stores the score as float32): rounding half to even, so 2.5 -> '2.4'.
  """
  if task.is_regression:
    return f'{np.round(np.float32(label) * np.float32(5)) / np.float32(5):.1f}'
  return task.label_names[label - 1]


class LabelText:
  """A task's labels as T5 text, for T5 and 1decT5 (paper §4.3): tokenized targets, and the way
  back from a greedily decoded string to a label (T5's GLUE postprocessors)."""

  def __init__(self, task, vocab):
    self.task, self.vocab = task, vocab
    for text in label_texts(task):
      if vocab.decode(vocab.encode(text)) != text:
        raise DataError(f'the vocabulary cannot spell the {task.name} label {text!r} (it '
                        f'decodes as {vocab.decode(vocab.encode(text))!r}); use T5\'s '
                        'vocabulary, or let train.py train one on the texts and labels')
    # Decoding stops after the longest label and its EOS: anything longer is no label.
    self.decode_length = max(len(vocab.encode(text)) for text in label_texts(task)) + 1

  def tokens(self, labels):
    """Target ids of each label: its T5 text, tokenized, and EOS (seqio appends it)."""
    pieces = self.vocab.encode([label_text(self.task, label) for label in labels])
    return [ids + [EOS_ID] for ids in pieces]

  def parse(self, tokens):
    """Decoded tokens [B, decode_length] -> [B] class ids 1..n, or -1 where the text (the tokens
    before EOS) is no label; STS-B: floats, -1.0 where the text is no number.

    NOTE: as T5's `postprocessors.string_label_to_class_id` and `string_to_float`, whose
    default for an unknown string is -1 (INVALID_PREDICTION), which the metrics count
    wrong.
    """
    tokens = np.asarray(tokens)
    # Ids past the SentencePiece model (the embedding has rows up to a multiple of 128) as unk.
    tokens = np.where(tokens < self.vocab.GetPieceSize(), tokens, UNK_ID).tolist()
    texts = []
    for row in tokens:
      end = row.index(EOS_ID) if EOS_ID in row else len(row)
      texts.append(self.vocab.decode(row[:end]))
    if self.task.is_regression:
      return np.array([_float_or(text, float(INVALID_PREDICTION)) for text in texts],
                      np.float32)
    names = self.task.label_names
    return np.array([names.index(text) + 1 if text in names else INVALID_PREDICTION
                     for text in texts],
                    np.int32)


def _float_or(text, default):
  try:
    return float(text)
  except ValueError:
    return default


# ---------------------------------------------------------------------------------------------
# Metrics (T5 `t5.evaluation.metrics`, as sklearn/scipy compute them), in percent.
# ---------------------------------------------------------------------------------------------

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
  missing = [key for task in TASKS.values() for key in task.metric_keys if key not in scores]
  if missing:
    raise ValueError(f'the GLUE average needs all 8 tasks; scores lack {missing}')
  return float(np.mean([task_score(task, scores) for task in TASKS.values()]))


# ---------------------------------------------------------------------------------------------
# Labelling new text: in-memory rows in, one prediction row per input row out.
# ---------------------------------------------------------------------------------------------

def text_examples(task, rows):
  """Examples of rows held in memory, to label text from Python: strings (for a task with
  one text field) or dicts {text field: string}. Row i gets idx i and line i + 1."""
  columns = [column for _, column in task.features]
  examples = []
  for idx, row in enumerate(rows):
    if isinstance(row, str) and len(columns) == 1:
      row = {columns[0]: row}
    if not isinstance(row, dict) or any(column not in row for column in columns):
      raise DataError(f'row {idx}: expected a dict with the text fields {columns}'
                      + (' or a string' if len(columns) == 1 else '') + f', got {row!r:.80}')
    fields = {feature: _text(row[column], column) for feature, column in task.features}
    if not any(text.strip() for text in fields.values()):
      raise DataError(f'row {idx}: empty text')
    examples.append(Example(idx, idx + 1, format_text(task, fields), None))
  return examples


def prediction_row(task, row_id, output, *, threshold=0.5, id_key='id'):
  """One output row of labelling a file, as a dict for JSON Lines.

  `output`: the row's probabilities over the labels [n] (`enct5.probabilities`), or its
  value (regression). The row: {id_key: row_id} and 'label' (the most probable name) for
  classification, 'labels' (the names whose probability is >= threshold, in class order)
  for multi-label, each with 'probabilities' {name: p} over every label; 'value' for
  regression. Probabilities are rounded to 6 decimals.
  """
  if task.is_regression:
    return {id_key: row_id, 'value': float(np.asarray(output).reshape(()))}
  output = np.asarray(output, np.float64)
  if output.shape != (task.num_classes,):
    raise ValueError(f'output of shape {output.shape}; expected ({task.num_classes},), one '
                     'probability per label')
  row = {id_key: row_id}
  if task.is_multi_label:
    row['labels'] = [task.label_names[k] for k in np.flatnonzero(output >= threshold)]
  else:
    row['label'] = task.label_names[int(np.argmax(output))]
  row['probabilities'] = {name: round(float(p), 6) for name, p in zip(task.label_names, output)}
  return row
