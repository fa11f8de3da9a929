"""Tests of predict.py: prediction rows of each kind, and train.py --mode=predict at the edges:
signals stop with exit status 3 and leave no file half-written, the output path is checked before
any work, CSV/TSV predictions round-trip through readers.py, a pipe is read once, and Labeler's
empty, single and bad rows."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import cli
import enct5
import fileio
import finetune
import predict
import readers
import tasks
from testutil import ENV, REPO, WORDS, write
from testutil import TICKET_FLAGS as TINY, tickets as _tickets, tickets_csv as _csv
from testutil import train_status as _main


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny trained run on CSV files: (its OUTPUT_DIR, a file of 30 rows to label)."""
  root = tmp_path_factory.mktemp('predict')
  train_file = _csv(root / 'train.csv', _tickets(24))
  dev_file = _csv(root / 'dev.csv', _tickets(8, 100))
  out = str(root / 'run')
  assert _main(f'--train_file={train_file}', f'--validation_file={dev_file}',
               '--text_fields=text', '--label_field=queue', f'--output_dir={out}', *TINY) == 0
  return out, _csv(root / 'new.csv', _tickets(30, 200))


def _listing(directory):
  return sorted(os.path.relpath(os.path.join(d, f), directory)
                for d, _, files in os.walk(directory) for f in files)


@pytest.mark.parametrize('name', ['input', 'record', 'checkpoint', 'folder', 'extension'])
def test_predictions_file_refused_before_any_work(run, tmp_path, capsys, name):
  """--predictions_file naming the input, a file of the run, a folder or no format: exit 2, one
  line naming the flag, and nothing written anywhere."""
  out, input_file = run
  (tmp_path / 'folder').mkdir()
  path = {'input': input_file, 'record': os.path.join(out, finetune.RECORD_FILE),
          'checkpoint': os.path.join(out, 'best', 'x.jsonl'), 'folder': str(tmp_path / 'folder'),
          'extension': str(tmp_path / 'out.txt')}[name]
  before = (_listing(out), _listing(tmp_path), open(input_file).read())
  assert _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}',
               f'--predictions_file={path}') == cli.USER_ERROR
  message = capsys.readouterr().err.strip().splitlines()
  assert len(message) == 1 and message[0].startswith(f'train.py: error: --predictions_file={path}')
  assert (_listing(out), _listing(tmp_path), open(input_file).read()) == before


def test_predictions_into_the_runs_predictions_folder_are_fine(run):
  out, input_file = run
  path = os.path.join(out, 'predictions', 'mine.ndjson')
  assert _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}',
               f'--predictions_file={path}') == 0
  assert len([json.loads(line) for line in open(path)]) == 30  # .ndjson is JSON Lines


def test_predict_without_a_run_writes_nothing(tmp_path, capsys):
  out = tmp_path / 'none'
  assert _main('--mode=predict', f'--output_dir={out}') == cli.USER_ERROR
  assert 'no run in --output_dir' in capsys.readouterr().err
  assert not out.exists()


def test_damaged_run_record_is_one_line(run, tmp_path, capsys):
  out, input_file = run
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  with open(os.path.join(out, finetune.RECORD_FILE)) as f:
    (damaged / finetune.RECORD_FILE).write_text(f.read()[:100])
  assert _main('--mode=predict', f'--output_dir={damaged}',
               f'--input_file={input_file}') == cli.USER_ERROR
  assert f'{damaged}/{finetune.RECORD_FILE} is damaged' in capsys.readouterr().err


@pytest.mark.parametrize('fmt', ['tsv', 'csv', 'JSONL'])
def test_predictions_round_trip_through_the_readers(run, tmp_path, fmt):
  """Ids holding the delimiter, quotes and line breaks come back as they were, one output row
  per input row, in order, whatever the output's format."""
  out, _ = run
  ids = ['plain', 'a\ttab', 'a, comma', 'say "hi"', 'two\nlines', '"quoted"']
  with open(tmp_path / 'odd.jsonl', 'w') as f:
    for i, row_id in enumerate(ids):
      f.write(json.dumps({'key': row_id, 'text': f'{WORDS[i]} card late'}) + '\n')
  path = str(tmp_path / f'predictions.{fmt}')
  assert _main('--mode=predict', f'--output_dir={out}', f'--input_file={tmp_path}/odd.jsonl',
               '--id_field=key', f'--predictions_file={path}') == 0
  labels = tasks.task_from_json(finetune.read_run_record(out)['task']).label_names
  reader = tasks.Task('', (('label', 'label'),), 'label', {}, fmt=readers.path_format(path))
  [(got_ids, examples)] = readers.stream_file(reader, path, 100, id_field='id')
  assert got_ids == ids
  assert all(example.text.split(': ', 1)[1] in labels for example in examples)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_prediction_leaving_the_old_file(run, tmp_path, signum):
  """A signal while labelling: exit status 3, one line, the earlier predictions file as it was
  and no temporary file."""
  out, _ = run
  big = _csv(tmp_path / 'big.csv', _tickets(40000))
  path = tmp_path / 'predictions.jsonl'
  path.write_text('{"old": true}\n')
  child = subprocess.Popen(
      [sys.executable, 'train.py', '--mode=predict', f'--output_dir={out}', f'--input_file={big}',
       f'--predictions_file={path}', '--batch_size=1'], cwd=REPO, env=ENV,
      stderr=subprocess.PIPE, text=True)
  log = []
  for line in child.stderr:
    log.append(line)
    if 'inference with' in line:
      child.send_signal(signum)
      break
  log += child.stderr.readlines()
  assert child.wait(timeout=300) == cli.INTERRUPTED, ''.join(log[-20:])
  assert 'Traceback' not in ''.join(log) and 'KeyboardInterrupt' not in ''.join(log)
  assert sum(f'signal {signum.value}: stopped labelling' in line for line in log) == 1
  assert path.read_text() == '{"old": true}\n'
  assert sorted(os.listdir(tmp_path)) == ['big.csv', 'predictions.jsonl']


def test_labeler_edges(run):
  """[] is []; a bare string is one row; errors number rows from 1, as the outputs do."""
  out, _ = run
  labeler = predict.Labeler(out)
  assert labeler([]) == []
  one = labeler('late card refund')
  assert isinstance(one, dict) and one['row'] == 1 and one == labeler(['late card refund'])[0]
  with pytest.raises(fileio.DataError, match='^row 2: '):
    labeler(['late card', 5])
  with pytest.raises(fileio.DataError, match='^row 3: empty text'):
    labeler(['late card', 'kind', ' '])


# ----------------------------------------------------------------------------------------------
# Reading edges: a pipe.
# ----------------------------------------------------------------------------------------------

def test_a_pipe_is_read_once(run, tmp_path):
  """--input_file=/dev/stdin: every row labelled (the progress count must not drain it)."""
  out, input_file = run
  path = tmp_path / 'piped.jsonl'
  with open(input_file) as f:
    rows = f.read()
  result = subprocess.run(  # `input`: stdin is a pipe
      [sys.executable, 'train.py', '--mode=predict', f'--output_dir={out}',
       '--input_file=/dev/stdin', '--file_format=csv', f'--predictions_file={path}'],
      cwd=REPO, env=ENV, input=rows, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(path.read_text().splitlines()) == 30


# ----------------------------------------------------------------------------------------------
# Prediction rows.
# ----------------------------------------------------------------------------------------------

def test_prediction_rows_per_kind(tmp_path):
  train = write(tmp_path / 'train.csv', 'text,label\na,refund\nb,billing\nc,"billing,other"\n')
  classes = tasks.file_task(train, labels=('billing', 'refund', 'other'))
  logits = np.array([0.0, 1.0, 3.0, -1.0])  # class 0 (padding) ignored
  cfg = enct5.get_config('tiny', num_classes=3)
  probs = np.asarray(enct5.probabilities(logits, cfg))
  row = predict.prediction_row(classes, 7, probs)
  assert list(row) == ['id', 'label', 'probabilities'] and row['id'] == 7
  assert row['label'] == 'refund' == classes.label_names[int(enct5.predict(logits, cfg)) - 1]
  assert sum(row['probabilities'].values()) == pytest.approx(1.0, abs=1e-5)
  assert row['probabilities']['refund'] == pytest.approx(
      np.exp(3) / (np.exp(1) + np.exp(3) + np.exp(-1)), abs=1e-6)
  tags = tasks.file_task(train, kind='multi_label')
  row = predict.prediction_row(tags, 'k1', [0.9, 0.3, 0.29], threshold=0.3, id_key='line')
  assert row == {'line': 'k1', 'labels': ['billing', 'other'],
                 'probabilities': {'billing': 0.9, 'other': 0.3, 'refund': 0.29}}
  scores = tasks.file_task(write(tmp_path / 'scores.csv', 'text,label\na,1\n'), kind='regression')
  assert predict.prediction_row(scores, 3, np.float32(2.5)) == {'id': 3, 'value': 2.5}
