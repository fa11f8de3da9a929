"""Tests of cli.py, through train.py as a user meets it: each mistake in a flag, a file or the data
answered by one line on stderr and exit status cli.USER_ERROR, never a traceback; GLUE files as real
users have them; SIGTERM, the lock on OUTPUT_DIR and a damaged checkpoint, with real child
processes."""
import concurrent.futures
import fcntl
import json
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import adafactor
import cli
import enct5
import finetune
import load_ckpt
import readers
import save_ckpt
import tasks
import vocabularies
from testutil import ENV, REPO

# A model of a few thousand parameters on 32-token rows: compiles and trains in seconds.
TINY = ['--size=tiny', '--d_model=16', '--num_heads=2', '--head_dim=8', '--d_ff=32',
        '--num_layers=1', '--max_input_length=32', '--max_target_length=4', '--batch_size=4',
        '--compilation_cache=']
WORDS = ['good', 'bad', 'film', 'plot', 'actor', 'scene', 'music', 'long', 'dull', 'bright',
         'story', 'ending', 'cast', 'funny', 'slow', 'great']


def sst2_rows(n, seed):
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    rows.append(f'{" ".join(words)}\t{int(words.count("good") > words.count("bad"))}')
  return rows


def write_sst2(directory, train_lines, dev_lines=None):
  """An SST-2 folder: header + rows (str lines, or bytes for the whole file)."""
  os.makedirs(directory, exist_ok=True)
  for name, lines in (('train.tsv', train_lines), ('dev.tsv', dev_lines or sst2_rows(8, 1))):
    data = lines if isinstance(lines, bytes) else '\n'.join(['sentence\tlabel', *lines]) + '\n'
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(data.encode() if isinstance(data, str) else data)
  return directory


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Good data, its vocabulary (about 40 pieces), and a T5.1.1 checkpoint of another shape
  whose embedding (16 rows) is too small for that vocabulary."""
  root = tmp_path_factory.mktemp('cli')
  data = write_sst2(str(root / 'SST-2'), sst2_rows(64, 0))
  vocab = str(root / 'vocab')
  vocabularies.train_vocab([' '.join(WORDS)] + [r.split('\t')[0] for r in sst2_rows(200, 2)],
                           vocab, 100)
  cfg = enct5.get_config('tiny', vocab_size=16, d_model=8, num_heads=2, head_dim=4, d_ff=16,
                         num_layers=1, num_decoder_layers=1)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, 't5')
  save_ckpt.save_checkpoint(str(root / 'ckpt'), 0, params, adafactor.init(params), keep=1)
  return dict(root=str(root), data=data, vocab=vocab + '.model',
              checkpoint=str(root / 'ckpt' / 'checkpoint_0'))


def train_py(*args, timeout=120, **kwargs):
  return subprocess.run([sys.executable, 'train.py', *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_user_error(result, *named):
  """Exit status USER_ERROR, no traceback, one `train.py: error:` line naming `named`."""
  assert result.returncode == cli.USER_ERROR, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith('train.py: error: '), result.stderr[-3000:]
  for name in named:
    assert name in message, message


# Full disk: writing the run's files fails with ENOSPC, as on a real full disk (config.json,
# written before anything is compiled; a checkpoint's OSError takes the same way out).
FULL_DISK = ('import errno, os\n'
             'from absl import app\n'
             'import fileio, train\n'
             'def full(path, data):\n'
             '  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)\n'
             'fileio.write_atomically = full\n'
             'app.run(train.main)\n')


def bad_files(root, vocab):
  """{case: (arguments, named)} for your own files: each a CSV/TSV/JSON Lines pair in which one
  file is bad (train: the training file, dev: the validation file)."""
  good = ['text,label', 'a fine film,pos', 'dull and long,neg', 'a great cast,pos']
  bad = {
      'missing_column': ('train.csv', ['text,kind', 'a fine film,pos'], ['train.csv',
                                                                        "'label'"]),
      'empty_text': ('train.csv', good + ['   ,neg'], ['train.csv:5', 'empty text']),
      'unknown_label_in_dev': ('dev.csv', good + ['so so,meh'], ['dev.csv:5', "'meh'"]),
      'broken_quoting': ('train.csv', good[:2] + ['"an open quote,neg'] + good[2:],
                         ['train.csv:3', 'quot']),
      'regression_not_a_number': ('train.csv', ['text,score', 'a fine film,4.5', 'dull,many'],
                                  ['train.csv:3', "'many'"]),
  }
  cases = {}
  for name, (victim, lines, named) in bad.items():
    directory = os.path.join(root, 'files', name)
    os.makedirs(directory)
    regression = name.startswith('regression')
    for file_name in ('train.csv', 'dev.csv'):
      rows = lines if file_name == victim else (
          ['text,score', 'a fine film,4.5', 'dull,1.0'] if regression else good)
      with open(os.path.join(directory, file_name), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    args = [f'--train_file={directory}/train.csv', f'--validation_file={directory}/dev.csv',
            f'--vocab={vocab}']
    cases[name] = (args + (['--regression', '--label_field=score'] if regression else []),
                   named)
  return cases


def bad_inputs(files):
  """{case: (train.py's arguments, strings its message must hold)}; data files written here."""
  root, data, vocab = files['root'], files['data'], files['vocab']
  good = sst2_rows(16, 3)
  bad_data = {
      'truncated_row': (good[:5] + ['a row cut short'] + good[5:], ['train.tsv:7', 'columns']),
      'unknown_label': (good[:2] + ['a fine film\t7'] + good[2:], ['train.tsv:4', "'7'"]),
      'empty_file': (b'', ['train.tsv', 'empty file']),
      'header_only': ([], ['train.tsv', 'only a header']),
      'not_utf8': (('sentence\tlabel\n' + '\n'.join(good[:3]) + '\n').encode()
                   + b'a \xa6\xff film\t1\n', ['train.tsv:5', 'not UTF-8']),
  }
  cases = {}
  for name, (lines, named) in bad_data.items():
    directory = write_sst2(os.path.join(root, name, 'SST-2'), lines)
    cases[name] = (['--task=sst2', f'--data_dir={directory}', f'--vocab={vocab}'], named)
  no_dev = write_sst2(os.path.join(root, 'no_dev', 'SST-2'), good)
  os.remove(os.path.join(no_dev, 'dev.tsv'))
  blocker = os.path.join(root, 'a_file')
  open(blocker, 'w').close()
  run = ['--task=sst2', f'--data_dir={data}', f'--vocab={vocab}', *TINY]
  # With --checkpoint, the checkpoint fixes the shape.
  small = ['--max_input_length=32', '--batch_size=4', '--train_steps=1', '--compilation_cache=',
           f'--checkpoint={files["checkpoint"]}']
  out = lambda name: f'--output_dir={os.path.join(root, "out", name)}'
  cases.update({
      'no_data_dir': (['--task=sst2', out('no_data_dir')], ['--data_dir']),
      'missing_data_dir': (['--task=sst2', f'--data_dir={root}/nowhere'], [f'{root}/nowhere']),
      'missing_split': (['--task=sst2', f'--data_dir={no_dev}'], ['dev.tsv']),
      'no_checkpoint': ([*run, f'--checkpoint={root}', out('c1')], [root, 'no T5X checkpoint']),
      'checkpoint_vs_size': ([*run[:3], *small, '--size=small', out('c2')],
                             ['checkpoint_0', '--size=small']),
      'vocab_too_big': ([*run[:3], *small, out('c3')], ['pieces', 'embeds only 16', '--vocab']),
      'missing_vocab': ([*run[:2], f'--vocab={root}/no.model', *TINY, out('v')],
                        ['--vocab', 'no.model']),
      'not_a_vocab': ([*run[:2], f'--vocab={blocker}', *TINY, out('v2')],
                      [blocker, 'not a SentencePiece model']),
      'unwritable_output_dir': ([*run, f'--output_dir={blocker}/out'], ['--output_dir']),
      'batch_size_0': ([*run, '--batch_size=0'], ['--batch_size=0']),
      'eval_every_past_end': ([*run, '--eval_every=10'], ['--eval_every=10', '--train_steps=1']),
      'mesh_vs_devices': ([*run, '--mesh=3x5'], ['--mesh', '15 devices']),
      'unknown_task': (['--task=sst3'], ['--task=sst3']),
      'task_and_train_file': (['--task=sst2', f'--train_file={data}/train.tsv'],
                              ['--task=sst2', '--train_file']),
      'train_file_alone': ([f'--train_file={data}/train.tsv'], ['--validation_file']),
  })
  cases.update(bad_files(root, vocab))
  cases.update({
      'full_disk': ([*run, '--train_steps=1', out('full')],
                    ['No space left', os.path.join(root, 'out', 'full'), 'resume']),
  })
  return cases


@pytest.fixture(scope='module')
def results(files):
  """Every bad input's run, side by side (most stop before anything is compiled)."""
  cases = bad_inputs(files)

  def run(name):
    args, _ = cases[name]
    if not any(arg.startswith('--output_dir=') for arg in args):  # the lock: one run a directory
      args = [*args, f'--output_dir={os.path.join(files["root"], "out", "case_" + name)}']
    if name == 'full_disk':
      return subprocess.run([sys.executable, '-c', FULL_DISK, *args], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=120)
    return train_py(*args, '--train_steps=1')

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    runs = dict(zip(cases, pool.map(run, cases)))
  return {name: (runs[name], named) for name, (_, named) in cases.items()}


CASES = ['truncated_row', 'unknown_label', 'empty_file', 'header_only', 'not_utf8',
         'no_data_dir', 'missing_data_dir', 'missing_split', 'no_checkpoint',
         'checkpoint_vs_size', 'vocab_too_big', 'missing_vocab', 'not_a_vocab',
         'unwritable_output_dir', 'batch_size_0', 'eval_every_past_end', 'mesh_vs_devices',
         'unknown_task', 'full_disk', 'task_and_train_file', 'train_file_alone',
         'missing_column', 'empty_text', 'unknown_label_in_dev', 'broken_quoting',
         'regression_not_a_number']


@pytest.mark.parametrize('case', CASES)
def test_bad_input_is_one_line_and_exit_status(results, case):
  result, named = results[case]
  assert_user_error(result, *named)


def test_traceback_on_request(files):
  """ENCT5_TRACEBACK=1 shows the traceback of a user's mistake, for debugging."""
  result = subprocess.run([sys.executable, 'train.py', '--task=sst2', '--batch_size=0'],
                          cwd=REPO, env=dict(ENV, ENCT5_TRACEBACK='1'), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0 and 'Traceback' in result.stderr


def test_real_files_just_work(tmp_path):
  """CRLF line ends, a UTF-8 byte-order mark (MRPC's files), trailing tabs, quotes in
  sentences (GLUE TSVs are not CSV)."""
  path = tmp_path / 'train.tsv'
  path.write_bytes('\ufeffsentence\tlabel\t\r\n'
                   'he said "no" to it \t0\t\r\n'
                   "it 's a \"great\" film\t1\r\n".encode())
  examples = readers.read_file(tasks.get_task('sst2'), str(path))
  assert [(e.text, e.label, e.line) for e in examples] == [
      ('sst2 sentence: he said "no" to it ', 1, 2),
      ('sst2 sentence: it \'s a "great" film', 2, 3)]


# ----------------------------------------------------------------------------------------------
# The lock on OUTPUT_DIR.
# ----------------------------------------------------------------------------------------------

def test_second_run_on_output_dir_refused(files, tmp_path):
  os.makedirs(tmp_path / 'out')
  with open(tmp_path / 'out' / cli.LOCK_FILE, 'a+') as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    result = train_py('--task=sst2', f'--data_dir={files["data"]}', f'--vocab={files["vocab"]}',
                      f'--output_dir={tmp_path / "out"}', *TINY)
  assert_user_error(result, str(tmp_path / 'out'), 'in use by another run')


def test_lock_of_killed_run_is_not_stuck(files, tmp_path):
  """A run killed with SIGKILL leaves its lock file, not its lock: the next run gets past it
  (here to a --checkpoint error that comes after the lock)."""
  os.makedirs(tmp_path / 'out')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, sys, time\n'
       'f = open(sys.argv[1], "a+"); fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True)\n'
       'time.sleep(300)\n', str(tmp_path / 'out' / cli.LOCK_FILE)],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  result = train_py('--task=sst2', f'--data_dir={files["data"]}', f'--vocab={files["vocab"]}',
                    f'--output_dir={tmp_path / "out"}', f'--checkpoint={tmp_path}', *TINY)
  assert_user_error(result, 'no T5X checkpoint')


# ----------------------------------------------------------------------------------------------
# SIGTERM and a damaged checkpoint: resumed runs end bit for bit where an uninterrupted one does.
# ----------------------------------------------------------------------------------------------

STEPS, EVAL_EVERY = 200, 50


def training(files, output_dir):
  return ['--task=sst2', f'--data_dir={files["data"]}', f'--vocab={files["vocab"]}', *TINY,
          f'--train_steps={STEPS}', f'--eval_every={EVAL_EVERY}', '--log_every=1',
          '--keep_checkpoints=2', f'--output_dir={output_dir}']


def final_state(output_dir):
  return load_ckpt.restore_checkpoint(os.path.join(output_dir, 'checkpoints'))


def assert_bitwise_equal(got, want):
  got, want = jax.tree_util.tree_flatten_with_path(got)[0], \
      jax.tree_util.tree_flatten_with_path(want)[0]
  assert [path for path, _ in got] == [path for path, _ in want]
  for (path, a), (_, b) in zip(got, want):
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), path


def metrics(output_dir):
  with open(os.path.join(output_dir, 'metrics.jsonl')) as f:
    return [(row['step'], row['score']) for row in map(json.loads, f)]


def best_step(output_dir):
  return load_ckpt.latest_checkpoint(os.path.join(output_dir, 'best'))


@pytest.fixture(scope='module')
def reference(files):
  """An uninterrupted run: its directory, final (params, opt_state) and metrics rows."""
  output_dir = os.path.join(files['root'], 'reference')
  result = train_py(*training(files, output_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  return output_dir, final_state(output_dir), metrics(output_dir)


def test_sigterm_checkpoints_and_resume_is_exact(files, reference, tmp_path):
  reference_dir, want, want_metrics = reference
  output_dir = str(tmp_path / 'run')
  child = subprocess.Popen([sys.executable, 'train.py', *training(files, output_dir)], cwd=REPO,
                           env=ENV, stderr=subprocess.PIPE, text=True)
  log = []
  for line in child.stderr:
    log.append(line)
    if f'step 2/{STEPS}' in line:
      child.send_signal(signal.SIGTERM)
      break
  log += child.stderr.readlines()
  assert child.wait(timeout=300) == cli.INTERRUPTED, ''.join(log[-30:])
  assert 'Traceback' not in ''.join(log)
  stopped = load_ckpt.latest_checkpoint(os.path.join(output_dir, 'checkpoints'))
  assert stopped and f'checkpoint in {output_dir}/checkpoints' in ''.join(log)
  assert int(stopped.rsplit('_', 1)[1]) < STEPS  # it stopped early, with a checkpoint

  result = train_py(*training(files, output_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from ' + stopped in result.stderr
  assert_bitwise_equal(final_state(output_dir), want)
  assert metrics(output_dir) == want_metrics  # no row lost, none twice
  assert os.path.basename(best_step(output_dir)) == os.path.basename(best_step(reference_dir))


def test_damaged_checkpoint_falls_back_to_the_previous(files, reference):
  """The newest checkpoint with a truncated array file: said so, set aside, the previous one
  resumed from, and the run ends where the uninterrupted run did."""
  output_dir, want, want_metrics = reference
  newest = load_ckpt.latest_checkpoint(os.path.join(output_dir, 'checkpoints'))
  arrays = [os.path.join(d, name) for d, _, names in os.walk(newest) for name in names
            if not name.startswith('.') and name not in ('checkpoint', finetune.RECORD_FILE)]
  victim = max(arrays, key=os.path.getsize)
  os.truncate(victim, os.path.getsize(victim) // 2)

  result = train_py(*training(files, output_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{newest} is damaged' in result.stderr
  assert f'resuming from {output_dir}/checkpoints/checkpoint_{STEPS - EVAL_EVERY}' in \
      result.stderr
  assert os.path.isdir(newest + '.damaged')
  assert_bitwise_equal(final_state(output_dir), want)
  assert metrics(output_dir) == want_metrics
