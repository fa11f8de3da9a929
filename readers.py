"""Reading a task's files: GLUE's TSV layout, CSV, TSV and JSON Lines, one road from a row to
an `Example` (its T5 text and label).

Text follows T5 (`t5.data.preprocessors.glue` with `t5.data.glue_utils`): the task name, then
`feature: text` for each text feature, e.g. `mnli hypothesis: ... premise: ...` (GLUE in T5's
sorted feature order; your own files in the order of their text fields, after the task's name
if it has one). Labels become class ids 1..n (class 0 is EncT5's padding class, §3), scores, or
a multi-label row's tuple of class ids. `task` is a `tasks.Task`: only its fields are read here.

Reads top-down: where a split's file is; `read_file` (and `stream_file`, to label a large file
chunk by chunk) and the road they share (`_examples`); rows of each format; labels; the label
set of a file and label names of a labels file; `text_examples` for rows held in memory.
Every bad row or file is a `fileio.DataError` naming file and line.
"""
import csv
import dataclasses
import json
import logging
import math
import os

import fileio

FORMATS = ('glue', 'csv', 'tsv', 'jsonl')  # 'glue': GLUE's own TSV layout (`_glue_rows`)
_EXTENSIONS = {'.csv': 'csv', '.tsv': 'tsv', '.jsonl': 'jsonl', '.ndjson': 'jsonl'}


@dataclasses.dataclass(frozen=True)
class Example:
  idx: int  # 0-based data row of the file (TFDS's `idx`; GLUE's `index` column)
  line: int  # 1-based line in the file where the row starts, for messages and predictions
  text: str  # the T5 input text
  label: object  # class id 1..n, a float score, a tuple of class ids (multi-label), or None


def format_text(task, fields):
  """T5's text: 'rte sentence1: <s1> sentence2: <s2>' (`preprocessors.glue`, `stsb`); without
  the first word when the task has no name (or its `text_prefix` is '').

  NOTE: fields are joined as they are, as in T5 (SST-2's sentences end with a space);
  SentencePiece's normalizer collapses the extra whitespace.
  """
  prefix = task.name if task.text_prefix is None else task.text_prefix
  parts = [prefix] if prefix else []
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


def path_format(path):
  """The format a path's extension names, in either direction (files read, predictions
  written): 'csv', 'tsv' or 'jsonl' (.jsonl or .ndjson, any case), else None."""
  return _EXTENSIONS.get(os.path.splitext(path)[1].lower())


def file_format(task, path):
  """The format of a file of the task: the task's `fmt`, else the file's extension's."""
  if task.fmt:
    return task.fmt
  if path_format(path) is None:
    raise fileio.DataError(f'{path}: cannot tell the format from the extension '
                           f'{os.path.splitext(path)[1]!r}; name the file .csv, .tsv or .jsonl, '
                           'or give the format (csv, tsv or jsonl)')
  return path_format(path)


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
  label_types = set()  # JSON types the labels were spelled in
  with open(path, 'rb') as f:
    columns, rows = _rows(task, path, f)
    if columns is not None and any(column not in columns for column in wanted):
      raise fileio.DataError(f'{path}: columns {[c for c in wanted if c not in columns]} missing '
                             f'from the header {list(columns)}')
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
        row_id = row[id_field] if id_field else line_no
        if isinstance(row_id, str):
          _text(row_id, id_field)
      except ValueError as e:
        if on_error == 'raise':
          raise fileio.DataError(f'{path}:{line_no}: {e}') from None
        skipped.append(line_no)
        logging.warning('%s:%d: skipped: %s', path, line_no, e)
        continue
      if not all(fields.values()):
        empty_fields.append(line_no)
      if labeled and not task.is_regression:
        _check_label_types(path, line_no, row[task.label_column], label_types)
      count += 1
      yield row_id, Example(idx, line_no, format_text(task, fields), label)
  _log_read(path, count, skipped, empty_fields)


def _log_read(path, count, skipped, empty_fields):
  """The summary of a read file; a file without examples is an error."""
  if not count and not skipped:
    raise fileio.DataError(f'{path}: no examples, only a header (or nothing)')
  if empty_fields:
    logging.warning('%s: %d rows with an empty text field, kept as T5 does (lines %s)',
                    path, len(empty_fields), empty_fields[:10])
  logging.info('%s: read %d examples, skipped %d bad rows%s', path, count, len(skipped),
               f' (lines {skipped[:10]})' if skipped else '')
  if not count:
    raise fileio.DataError(f'{path}: all {len(skipped)} rows are bad')


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
      raise fileio.DataError(f'{path}:{line_no}: byte {line[e.start]:#04x} at column '
                             f'{e.start + 1} is not UTF-8; data files must be UTF-8 text') from None
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
    raise fileio.DataError(f'{path}: empty file (no header and no rows)')
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
  naming the line where the row starts.

  NOTE: csv's default limit of 131,072 characters a field is lifted: a long text is valid, and
  is truncated at tokenization (`preprocessing.tokenize`), as in JSON Lines.
  """
  csv.field_size_limit(2**31 - 1)
  reader = csv.reader(_text_lines(path, f, keep_ends=True), delimiter=delimiter, strict=True)
  first = _next_record(path, reader)
  if first is None:
    raise fileio.DataError(f'{path}: empty file (no header and no rows)')
  header = first[1]
  while len(header) > 1 and not header[-1]:  # trailing delimiters
    header.pop()
  repeated = sorted({column for column in header if header.count(column) > 1})
  if repeated:
    raise fileio.DataError(f'{path}:{first[0]}: columns {repeated} appear twice in the header')
  return header, _delimited_records(path, reader, header, delimiter)


def _delimited_records(path, reader, header, delimiter):
  """(line, row, problem) of each record. A TSV field that spans lines and holds tabs is
  warned about once: most likely a stray `"` opened it and joined the lines after it."""
  warned = False
  while (record := _next_record(path, reader)) is not None:
    line_no, fields = record
    if delimiter == '\t' and not warned and any('\n' in x and '\t' in x for x in fields):
      logging.warning('%s:%d: a quoted field runs over lines %d-%d and holds tabs: a stray '
                      '\'"\' may have joined those rows into one (a quote inside a field is '
                      'written "")', path, line_no, line_no, reader.line_num)
      warned = True
    yield _row(line_no, header, fields)


def _next_record(path, reader):
  """(first line, fields) of a csv reader's next non-blank record, or None at the end."""
  while True:
    line_no = reader.line_num + 1
    try:
      fields = next(reader, None)
    except csv.Error as e:
      raise fileio.DataError(f'{path}:{line_no}: broken quoting ({e}): a quoted field ends at its '
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
  """A text (or id) field: a string of characters.

  NOTE: JSON can escape a lone UTF-16 surrogate ("\\ud800"), which no UTF-8 text holds; Python
  decodes it to a string that cannot be encoded again (for the tokenizer, or an output file).
  """
  if not isinstance(value, str):
    raise ValueError(f'{column!r} is {json.dumps(value)}, not a string')
  try:
    value.encode('utf-8')
  except UnicodeEncodeError as e:
    raise ValueError(f'{column!r} holds a lone surrogate {value[e.start]!r} at character '
                     f'{e.start + 1}: no character (a broken \\u escape)') from None
  return value


def _check_label_types(path, line_no, value, seen):
  """Warns (once) when a JSON label is of another type than the labels before it: 3 and "3"
  are read as the same label, which may not be what the file meant."""
  items = value if isinstance(value, list) else [value]
  types = {'string' if isinstance(item, str) else 'number' for item in items}
  if len(seen) == 1 and types - seen:
    logging.warning('%s:%d: label %s is a JSON %s where the rows before spell labels as JSON '
                    '%ss; both are read as text (3 and "3" are one label)', path, line_no,
                    json.dumps(value), (types - seen).pop(), seen.pop())
    seen.update(('string', 'number'))  # warned once
  seen.update(types)


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


def labels_in(task, path):
  """The labels of a file's well-formed rows (`read_file` reports the others), as the file
  spells them: `tasks.file_task` finds a training file's label set so."""
  found = set()
  with open(path, 'rb') as f:
    columns, rows = _rows(task, path, f)
    if columns is not None and task.label_column not in columns:
      raise fileio.DataError(f'{path}: columns {[task.label_column]} missing from the header '
                             f'{list(columns)}')
    for _, row, problem in rows:
      if problem is None and task.label_column in row:
        try:
          found.update(_label_strings(task, row[task.label_column]))
        except ValueError:
          pass
  if not found:
    raise fileio.DataError(f'{path}: no labels in column {task.label_column!r}')
  return found


def read_label_names(path):
  """Label names from a text file, one a line, in class order: GoEmotions' labels.txt names
  0-based label id i on line i + 1 (`file_task(..., labels_by_index=True)`)."""
  with open(path, 'rb') as f:
    names = [line.strip() for line in _text_lines(path, f)]
  while names and not names[-1]:
    names.pop()  # blank lines at the end
  if not names:
    raise fileio.DataError(f'{path}: no label names')
  for line_no, name in enumerate(names, 1):
    if not name:
      raise fileio.DataError(f'{path}:{line_no}: empty label name')
    if names.index(name) + 1 < line_no:
      raise fileio.DataError(f'{path}:{line_no}: label {name!r} again '
                             f'(line {names.index(name) + 1})')
  return tuple(names)


def text_rows(task, path):
  """The text fields {column: value} of every row of a file, as `predict.Labeler` takes rows;
  read as `read_file` reads the file (a line that is no row is left out)."""
  columns = [column for _, column in task.features]
  with open(path, 'rb') as f:
    _, rows = _rows(task, path, f)
    return [{column: row[column] for column in columns} for _, row, _ in rows if row]


def text_examples(task, rows):
  """Examples of rows held in memory, to label text from Python: strings (for a task with
  one text field) or dicts {text field: string}. Row i gets idx i and line i + 1; errors
  name rows from 1, as the lines."""
  columns = [column for _, column in task.features]
  examples = []
  for idx, row in enumerate(rows):
    if isinstance(row, str) and len(columns) == 1:
      row = {columns[0]: row}
    if not isinstance(row, dict) or any(column not in row for column in columns):
      raise fileio.DataError(f'row {idx + 1}: expected a dict with the text fields {columns}'
                             + (' or a string' if len(columns) == 1 else '') + f', got {row!r:.80}')
    try:
      fields = {feature: _text(row[column], column) for feature, column in task.features}
    except ValueError as e:
      raise fileio.DataError(f'row {idx + 1}: {e}') from None
    if not any(text.strip() for text in fields.values()):
      raise fileio.DataError(f'row {idx + 1}: empty text')
    examples.append(Example(idx, idx + 1, format_text(task, fields), None))
  return examples

