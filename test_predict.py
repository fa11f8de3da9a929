"""predict.py and train.py --mode=predict at the edges: signals stop with exit status 3 and leave
no file half-written, the output path is checked before any work, CSV/TSV predictions round-trip
through readers.py, and Labeler's empty, single and bad rows."""
import json
import os
import signal
import subprocess
import sys

import pytest

import cli
import fileio
import finetune
import predict
import readers
import tasks
import train
from testutil import REPO

ENV = {k: v for k, v in os.environ.items() if k != 'ENCT5_TRACEBACK'}
ENV['JAX_PLATFORMS'] = 'cpu'
TINY = ['--size=tiny', '--d_model=16', '--num_heads=2', '--head_dim=8', '--d_ff=32',
        '--num_layers=1', '--max_input_length=32', '--max_target_length=4', '--batch_size=4',
        '--vocab_size=60', '--train_steps=4', '--eval_every=2', '--log_every=2',
        '--compilation_cache=']
WORDS = 'refund billing card late broken great awful film plot slow fast kind'.split()


def _main(*argv):
  """train.py in this process, ending as the command does: -> its exit status."""
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *argv])
  try:
    cli.run('train.py', train.run_command, ['train.py'])
  except SystemExit as e:
    return e.code
  return 0


def _csv(path, rows):
  with open(path, 'w', newline='') as f:
    f.write('id,text,queue\n' + ''.join(f'{i},{text},{queue}\n' for i, text, queue in rows))
  return str(path)


def _tickets(n, offset=0):
  return [(offset + i, ' '.join(WORDS[(offset + i + k) % len(WORDS)] for k in range(4)),
           'billing' if (offset + i) % 3 else 'refund') for i in range(n)]


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
# Reading edges: a pipe, long fields, lone surrogates, a stray quote, JSON label types, flags.
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


def _task(path, **kwargs):
  return tasks.file_task(path, path, **kwargs)


def test_a_long_csv_field_is_text(tmp_path):
  path = tmp_path / 'long.csv'
  path.write_text(f'text,label\n"{"word " * 40000}",a\nshort,b\n')
  examples = readers.read_file(_task(str(path)), str(path))
  assert [len(example.text) for example in examples] == [len('text: ') + 200000, 11]


@pytest.mark.parametrize('row, line, column', [
    ('{"text": "ok \\ud800", "label": "a"}', 2, 'text'),
    ('{"text": "ok", "label": "a", "key": "\\udfff"}', 2, 'key')])
def test_a_lone_surrogate_is_one_line_naming_file_and_line(tmp_path, row, line, column):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"text": "fine", "label": "b", "key": "k1"}\n' + row + '\n')
  task = tasks.file_task(str(path), str(path))
  with pytest.raises(fileio.DataError, match=f'bad.jsonl:{line}: {column!r} holds a lone '):
    list(readers.stream_file(task, str(path), 10, id_field='key' if column == 'key' else None))


def test_a_stray_quote_in_a_tsv_is_warned(tmp_path, caplog):
  """A quote opening a TSV field joins the lines up to the next quote into one row: warned,
  naming the lines."""
  path = tmp_path / 'stray.tsv'
  path.write_text('text\tlabel\nfine\ta\n"oops\tb\nswallowed\ta\nto here"\tb\nlast\ta\n')
  examples = readers.read_file(_task(str(path)), str(path))
  assert len(examples) == 3
  assert 'stray.tsv:3: a quoted field runs over lines 3-5 and holds tabs' in caplog.text


def test_a_json_label_of_another_type_is_warned(tmp_path, caplog):
  path = tmp_path / 'types.jsonl'
  path.write_text('{"text": "a", "label": "1"}\n{"text": "b", "label": 2}\n'
                  '{"text": "c", "label": 1}\n')
  task = _task(str(path))
  assert task.label_names == ('1', '2')
  readers.read_file(task, str(path))
  assert 'types.jsonl:2: label 2 is a JSON number where the rows before spell labels as JSON ' \
         'strings' in caplog.text


def test_a_missing_label_column_names_it(tmp_path):
  path = tmp_path / 'unlabelled.csv'
  path.write_text('text\nhello\n')
  task = tasks.Task('', (('text', 'text'),), 'label', {}, raw_labels=('a',), label_names=('a',))
  with pytest.raises(fileio.DataError) as e:
    readers.read_file(task, str(path))
  assert str(e.value) == f"{path}: columns ['label'] missing from the header ['text']"


@pytest.mark.parametrize('flags, message', [
    (['--labels=label_names.txt'], '--labels=label_names.txt: no such file'),
    (['--labels=conf/labels'], '--labels=conf/labels: no such file'),
    (['--multi_label', '--label_separator='], '--label_separator is empty')])
def test_label_flags_checked_before_reading(tmp_path, capsys, flags, message):
  train_file = _csv(tmp_path / 'train.csv', _tickets(8))
  assert _main(f'--train_file={train_file}', f'--validation_file={train_file}',
               '--text_fields=text', '--label_field=queue', f'--output_dir={tmp_path}/run',
               *flags, *TINY) == cli.USER_ERROR
  assert capsys.readouterr().err.strip() == f'train.py: error: {message}' + {
      '--labels=label_names.txt: no such file': ' (a label set is a file of one name a line, '
                                                'or names separated by commas)',
      '--labels=conf/labels: no such file': ' (a label set is a file of one name a line, or '
                                            'names separated by commas)',
      '--label_separator is empty': ': a multi-label field needs a separator between its '
                                    'labels (default ",")'}[message]
