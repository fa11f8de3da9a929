"""Prediction with a trained run: GLUE submission files (`glue_submission`), a file of any size
labelled row by row (`predict_file`), and text labelled from Python (`Labeler`).

Every path loads the run's best checkpoint (`finetune.load_for_inference`) and labels packed
rows with the eval step (`evaluation.infer`); one prediction row per input row, in input order,
with every label's probability (`prediction_row`).
"""
import csv
import json
import logging
import os
import stat
import time

import jax
import numpy as np

import enct5
import evaluation
import fileio
import finetune
import loop
import metrics
import mixtures
import readers


# ----------------------------------------------------------------------------------------------
# GLUE submission files: a test split's index and predicted label per line.
# ----------------------------------------------------------------------------------------------

def glue_submission(config, split='test'):
  """GLUE submission TSVs (index, prediction) of `split` (test: all the task's test files, e.g.
  MNLI-m and MNLI-mm) into OUTPUT_DIR/predictions; -> the files written."""
  inference, params, vocab, _ = finetune.load_for_inference(config)
  task = inference.task
  splits = [s for s in task.files if s.startswith('test')] if split == 'test' else [split]
  written = []
  for name in splits:
    _, packed = evaluation.load_eval_split(config, task, name, vocab)
    ids, predictions = evaluation.infer(config, inference, params, packed)
    written.append(write_predictions(config, task, name, ids, predictions))
  return written


def prediction_file(task, split):
  """GLUE submission names: SST-2.tsv, MNLI-m.tsv, MNLI-mm.tsv, ...; other splits get theirs."""
  if split == 'test':
    return f'{task.dir_name}.tsv'
  if split in ('test_matched', 'test_mismatched'):
    return f'{task.dir_name}-{"m" if split == "test_matched" else "mm"}.tsv'
  return f'{task.dir_name}.{split}.tsv'


def write_predictions(config, task, split, ids, predictions):
  """OUTPUT_DIR/predictions/<GLUE submission name>: index and predicted label per line."""
  invalid = predictions == metrics.INVALID_PREDICTION
  if not task.is_regression and invalid.any():
    logging.warning('%s: %d of %d decoded strings are no label; written as %r (a submission '
                    'needs one)', split, invalid.sum(), len(predictions), task.raw_label(1))
    predictions = np.maximum(predictions, 1)
  out = os.path.join(config.output_dir, 'predictions', prediction_file(task, split))
  if jax.process_index() == 0:
    with fileio.atomic_file(out, 'w') as f:  # quoted where needed, as the readers read it
      writer = csv.writer(f, delimiter='\t', lineterminator='\n')
      writer.writerows([('index', 'prediction'), *((i, task.raw_label(p))
                                                    for i, p in zip(ids, predictions))])
    logging.info('wrote %d predictions to %s', len(ids), out)
  return out


# ----------------------------------------------------------------------------------------------
# Labelling new text: a file of any size (`predict_file`), or rows from Python (`Labeler`).
# ----------------------------------------------------------------------------------------------

PREDICT_CHUNK_ROWS = 8192  # rows read, tokenized, packed and labelled at a time


def prediction_row(task, row_id, output, *, threshold=0.5, id_key='id'):
  """One output row of labelling a file, as a dict for JSON Lines.

  `output`: the row's probabilities over the labels [n] (`enct5.probabilities`), or its
  value (regression); `threshold`: multi-label, one for all labels or one each [n]. The row:
  {id_key: row_id} and 'label' (the most probable name) for classification, 'labels' (the
  names whose probability is >= their threshold, in class order) for multi-label, each with
  'probabilities' {name: p} over every label; 'value' for regression. Probabilities are
  rounded to 6 decimals. `id_key` None: no id (a task's part of a row of several tasks).
  """
  row = {id_key: row_id} if id_key else {}
  if task.is_regression:
    return dict(row, value=float(np.asarray(output).reshape(())))
  output = np.asarray(output, np.float64)
  if output.shape != (task.num_classes,):
    raise ValueError(f'output of shape {output.shape}; expected ({task.num_classes},), one '
                     'probability per label')
  if task.is_multi_label:
    row['labels'] = [task.label_names[k] for k in np.flatnonzero(output >= threshold)]
  else:
    row['label'] = task.label_names[int(np.argmax(output))]
  row['probabilities'] = {name: round(float(p), 6) for name, p in zip(task.label_names, output)}
  return row


def predict_file(config, input_file, predictions_file=None, id_field=None):
  """Labels every row of `input_file` (CSV, TSV or JSON Lines; a label column is not needed)
  into `predictions_file`; -> its path.

  One output row per input row, in input order (`prediction_row`): the row's 'id' (its
  `id_field` column) or 'line' (its line number), the predicted label ('label'), labels
  ('labels', multi-label) or value ('value', regression), and every label's probability. The
  format follows the extension as for input files (`readers.path_format`): JSON Lines, or CSV
  or TSV quoted as the readers read them. It streams: PREDICT_CHUNK_ROWS rows at a time are
  read, tokenized, packed and labelled, so memory stays bounded whatever the file's size. The
  file appears whole when done (`fileio.atomic_file`); an error or a signal leaves an earlier
  one as it was. Default path: OUTPUT_DIR/predictions/<input file's name>.jsonl.
  """
  if config.model != 'enct5':
    raise finetune.ConfigError('--input_file: labelling a file takes an EncT5 run '
                               '(--model=enct5), with its probabilities; this one is '
                               f'--model={config.model}')
  path = predictions_path(config, input_file, predictions_file)
  load = mixtures.every_task_inference if mixtures.is_mixture(config) else (
      finetune.load_for_inference)
  inference, params, vocab, _ = load(config)
  return label_file(config, inference, params, vocab, input_file, path, id_field)


def label_file(config, inference, params, vocab, input_file, path, id_field=None):
  """`predict_file`'s work, the model loaded (`finetune.load_for_inference`) and `path`
  checked (`predictions_path`): `input_file` labelled into `path`; -> `path`."""
  progress = Progress(input_file)
  with (fileio.atomic_file(path, 'w') if jax.process_index() == 0
        else open(os.devnull, 'w')) as out:
    id_key = 'id' if id_field else 'line'
    write = _row_writer(out, inference, readers.path_format(path), id_key)
    for row_ids, examples in readers.stream_file(inference.task, input_file, PREDICT_CHUNK_ROWS,
                                                 id_field=id_field,
                                                 on_error=evaluation.on_bad_rows(config)):
      row_id = {example.idx: i for example, i in zip(examples, row_ids)}
      for row in label_examples(config, inference, params, vocab, examples, input_file,
                                row_id, id_key):
        write(row)
      progress.update(examples[-1].line, len(examples))
  logging.info('wrote %d predictions to %s', progress.rows, path)
  return path


def label_examples(config, inference, params, vocab, examples, path, row_id, id_key):
  """The prediction rows of `examples` (read from `path`), in order: one task's
  (`prediction_row`), or of a one-pass inference (`inference.tasks`) every task's, {id_key: the
  row's id, task name: its row without the id, ...}. `row_id`: example idx -> the row's id."""
  packed = evaluation.pack_for_inference(config, inference.task, examples, vocab, path=path)
  if not inference.tasks:
    ids, outputs = evaluation.infer(config, inference, params, packed, evaluation.label_outputs)
    return [prediction_row(inference.task, row_id[idx], output, threshold=inference.thresholds,
                           id_key=id_key) for idx, output in zip(ids, outputs)]
  ids, outputs = evaluation.infer(config, inference, params, packed, every_task_outputs)
  rows = [{id_key: row_id[idx]} for idx in ids]
  start = 0
  for task in inference.tasks:  # each task's outputs are the next num_classes columns
    for row, output in zip(rows, outputs[:, start:start + task.num_classes]):
      row[task.name] = prediction_row(task, None, output,
                                      threshold=inference.thresholds[task.name], id_key=None)
    start += task.num_classes
  return rows


def every_task_outputs(logits, inference):
  """A one-pass eval step's {task name: logits} -> every task's outputs side by side, [B, T,
  the tasks' num_classes summed]: each task's probabilities, or its value (regression), as
  `evaluation.label_outputs`."""
  outputs = []
  for task in inference.tasks:
    task_inference = inference._replace(cfg=enct5.task_config(inference.cfg, task.name))
    output = evaluation.label_outputs(logits[task.name], task_inference)
    outputs.append(output.reshape(*output.shape[:2], -1))
  return np.concatenate(outputs, axis=-1)


def predictions_path(config, input_file, predictions_file):
  """`predict_file`'s output path, checked before any work: not the input file, no file of the
  run (OUTPUT_DIR holds the run; its predictions/ folder is for predictions), not a folder, and
  an extension that names a format."""
  if predictions_file is None:
    return os.path.join(config.output_dir, 'predictions', os.path.basename(input_file) + '.jsonl')
  path, flag = os.path.realpath(predictions_file), f'--predictions_file={predictions_file}'
  run_dir = os.path.realpath(config.output_dir)
  if path == os.path.realpath(input_file):
    raise finetune.ConfigError(f'{flag} is the input file: it would be overwritten; name '
                               'another file')
  if (os.path.commonpath([path, run_dir]) == run_dir
      and os.path.commonpath([path, os.path.join(run_dir, 'predictions')]) != os.path.join(
          run_dir, 'predictions')):
    raise finetune.ConfigError(f'{flag} is inside the run\'s --output_dir={config.output_dir}, '
                               'whose files it could overwrite; write it elsewhere, or into '
                               f'{os.path.join(config.output_dir, "predictions")}/')
  if os.path.isdir(path):
    raise finetune.ConfigError(f'{flag} is a folder; name a file in it')
  if readers.path_format(path) is None:
    raise finetune.ConfigError(f'{flag}: cannot tell the format from the extension; name it '
                               '.jsonl (JSON Lines), .csv or .tsv')
  return predictions_file


def _row_writer(out, inference, fmt, id_key):
  """write(prediction row) into `out`: a JSON object a line, or CSV/TSV with a header: the id,
  the label(s) or value, and a column of probabilities per label (one pass for several tasks:
  these columns for each task, named after it); a field that holds the delimiter, a quote or a
  line break is quoted ("..." with "" for a quote), as the readers read it."""
  if fmt == 'jsonl':
    return lambda row: out.write(json.dumps(row) + '\n')
  writer = csv.writer(out, delimiter=',' if fmt == 'csv' else '\t', lineterminator='\n')
  tasks = inference.tasks or (inference.task,)
  answer = {task.name: 'value' if task.is_regression else 'labels' if task.is_multi_label
            else 'label' for task in tasks}
  header = [id_key]
  for task in tasks:
    prefix = f'{task.name} ' if inference.tasks else ''
    header += [task.name if inference.tasks else answer[task.name],
               *(f'{prefix}p({name})' for name in ([] if task.is_regression
                                                   else task.label_names))]
  writer.writerow(header)

  def write(row):
    fields = [str(row[id_key])]
    for task in tasks:
      task_row = row[task.name] if inference.tasks else row
      value = task_row[answer[task.name]]
      fields += [task.label_separator.join(value) if isinstance(value, list) else str(value),
                 *map(str, task_row.get('probabilities', {}).values())]
    writer.writerow(fields)
  return write


class Progress:
  """Logs rows labelled, rows/s and the ETA (from the lines left), every 10 seconds. A pipe
  (`/dev/stdin`, `<(...)`) is read once, by the labelling: its length is unknown, so no ETA."""

  def __init__(self, path):
    self.lines = None
    if stat.S_ISREG(os.stat(path).st_mode):
      with open(path, 'rb') as f:
        self.lines = sum(chunk.count(b'\n') for chunk in iter(lambda: f.read(1 << 20), b''))
    self.start = self.last = time.time()
    self.rows = 0

  def update(self, line, rows):
    self.rows += rows
    now = time.time()
    if now - self.last >= 10:
      per_second = self.rows / (now - self.start)
      if self.lines is None:
        logging.info('labelled %d rows (line %d) | %.0f rows/s', self.rows, line, per_second)
      else:
        left = max(self.lines - line, 0) * self.rows / max(line, 1) / per_second
        logging.info('labelled %d rows (line %d of %d) | %.0f rows/s | ETA %s', self.rows, line,
                     self.lines, per_second, loop.duration(left))
      self.last = now


class Labeler:
  """A trained run, loaded to label text from Python (a notebook, a service):

    labeler = predict.Labeler('runs/goemotions')
    labeler(['What a lovely surprise!', 'I give up.'])
    # [{'row': 1, 'labels': ['surprise'], 'probabilities': {'admiration': 0.01, ...}}, ...]

  A row is a string (a task with one text field) or a dict {text field: string}; the output
  rows are `predict_file`'s, numbered from 1 in input order (as are the rows an error names).
  One row alone (a string or a dict) gives its output row alone; no rows give []. `checkpoint`:
  another than the run's best; `batch_size`: packed rows per batch (default the run's
  --eval_batch_size, else `evaluation.inference_batch_size`'s); `dtype`: the activations'
  (default the run's; 'bfloat16' for any run). `task`: a multi-task run's task whose head
  labels (`mixtures`); unset, the tasks of one file's label columns label in one pass, each
  output row {'row': n, task: its row, ...}.
  """

  def __init__(self, output_dir, checkpoint=None, batch_size=None, dtype=None, task=None):
    record = finetune.read_run_record(output_dir)
    if record is None:
      raise FileNotFoundError(f'{output_dir}: no {finetune.RECORD_FILE}, so no run of train.py')
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in record['config'].items()}
    config.update(output_dir=output_dir, checkpoint=checkpoint, vocab=record['vocab_file'],
                  mesh=None, eval_batch_size=batch_size or config.get('eval_batch_size'),
                  dtype=dtype or config['dtype'],
                  attention_block_length=None)  # blocks from the rows it labels
    names = mixtures.task_names(finetune.Config(**config))
    if task and task not in names:
      raise finetune.ConfigError(f'{output_dir}: task={task!r} is not a task of the run '
                                 f'({", ".join(names) or "it has one"})')
    config.update(task=task or config['task'])
    self.config = finetune.Config(**config)
    if self.config.model != 'enct5':
      raise finetune.ConfigError(f'{output_dir}: Labeler takes an EncT5 run (its probabilities); '
                                 f'this one is --model={self.config.model}')
    load = mixtures.every_task_inference if mixtures.is_mixture(self.config) else (
        finetune.load_for_inference)
    self.inference, self.params, self.vocab, _ = load(self.config)

  def __call__(self, rows):
    if isinstance(rows, (str, dict)):
      return self([rows])[0]
    examples = readers.text_examples(self.inference.task, rows)
    if not examples:
      return []
    return label_examples(self.config, self.inference, self.params, self.vocab, examples,
                          '<examples>', {example.idx: example.idx + 1 for example in examples},
                          'row')
