"""Helpers shared by the test files: where ../shared is, files written byte for byte, the tiny
model and batch of the model tests, train.py run in this process, and launching several
processes."""
import os
import socket
import subprocess

import numpy as np
import pytest

import enct5
import load_ckpt
import tasks
import vocabularies

REPO = os.path.dirname(os.path.abspath(__file__))
SHARED = tasks.SHARED  # real GLUE data and T5X-written checkpoints, never copied into the repo
FIXTURES = os.path.join(SHARED, 'fixtures')
GLUE_DIR = os.path.join(SHARED, 'glue')
MINI_CKPT = os.path.join(FIXTURES, 't5x_mini_t5_1_1', 'checkpoint_3')
# train.py in a child process: on the CPU, a user's mistake as one line (no traceback).
ENV = {k: v for k, v in os.environ.items() if k != 'ENCT5_TRACEBACK'}
ENV['JAX_PLATFORMS'] = 'cpu'

# Rows (excluding headers) of ../shared/glue, from its SOURCES.md.
GLUE_FILES = {
    ('cola', 'train'): 8551, ('cola', 'validation'): 1043,
    ('sst2', 'train'): 67349, ('sst2', 'validation'): 872,
    ('mrpc', 'train'): 3668, ('mrpc', 'validation'): 408,
    ('stsb', 'train'): 5749, ('stsb', 'validation'): 1500,
    ('rte', 'train'): 2490, ('rte', 'validation'): 277,
    ('qnli', 'validation'): 5463,
}

TRAIN_CSV = {  # the training file of each kind, whose labels the bad files are checked against
    'classification': 'text,label\nfine,billing\nalso fine,refund\n',
    'regression': 'text,label\nfine,0\nalso fine,1.5\n',
    'multi_label': 'text,label\nfine,billing\nalso fine,"billing,refund"\n',
}


# ------------------------------------------------------------------------------- shared data

def need_glue():
  if not os.path.isdir(GLUE_DIR):
    pytest.skip(f'GLUE data not found at {GLUE_DIR} (set ENCT5_SHARED)')


def fixture(name):
  """The path of ../shared/fixtures/NAME; skips the test where it is absent."""
  path = os.path.join(FIXTURES, name)
  if not os.path.exists(path):
    pytest.skip(f'fixture {name} not found at {path} (set ENCT5_SHARED)')
  return path


def config_of(path, **overrides):
  """A tiny config with the shape of the checkpoint at `path`."""
  return enct5.get_config('tiny', **{**load_ckpt.config_from_checkpoint(path), **overrides})


def mini_checkpoint():
  """load_ckpt, where the T5X-trained mini checkpoint MINI_CKPT exists; skips the test if not."""
  if not os.path.isdir(MINI_CKPT):
    pytest.skip(f'T5X mini checkpoint not found at {MINI_CKPT} (set ENCT5_SHARED)')
  return load_ckpt


def checkpoint_params(checkpoint_dir):
  """The whole tree (target and state) of the latest checkpoint in checkpoint_dir."""
  return load_ckpt.read_t5x(load_ckpt.latest_checkpoint(checkpoint_dir))


def assert_trees_equal(a, b):
  """Same structure, dtypes, shapes and bits."""
  flat_a, flat_b = load_ckpt.flatten(a), load_ckpt.flatten(b)
  assert sorted(flat_a) == sorted(flat_b)
  for name in flat_a:
    x, y = np.asarray(flat_a[name]), np.asarray(flat_b[name])
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert x.tobytes() == y.tobytes(), name


# ------------------------------------------------------------------------------------ files

def write(path, text):
  """Writes text exactly (no newline translation); bytes as they are."""
  data = text if isinstance(text, bytes) else text.encode('utf-8')
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def write_rows(path, header, rows):
  """A header line and one line per row, each ending in '\\n'."""
  with open(path, 'w', newline='') as f:
    f.write('\n'.join([header, *rows]) + '\n')
  return str(path)


def train_small_vocab(tmp_path_factory):
  """A 100-piece SentencePiece model trained on 500 made-up sentences of 20 words."""
  rng = np.random.default_rng(0)
  words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'far', 'away', 'sentence:',
           'sst2', 'good', 'bad', 'movie', 'film', 'plot', 'actor', 'very', 'not']
  texts = [' '.join(rng.choice(words, int(rng.integers(3, 15)))) for _ in range(500)]
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('spm') / 'small'), 100)


# Support tickets: made-up texts of these words, labelled by queue.
WORDS = 'refund billing card late broken great awful film plot slow fast kind'.split()


def tickets_csv(path, rows):
  """A CSV file `id,text,queue` of (id, text, queue) rows."""
  with open(path, 'w', newline='') as f:
    f.write('id,text,queue\n' + ''.join(f'{i},{text},{queue}\n' for i, text, queue in rows))
  return str(path)


def tickets(n, offset=0):
  return [(offset + i, ' '.join(WORDS[(offset + i + k) % len(WORDS)] for k in range(4)),
           'billing' if (offset + i) % 3 else 'refund') for i in range(n)]


# ------------------------------------------------------------------------ the model's tests

def tiny_config(**overrides):
  return enct5.get_config('tiny', **{'num_classes': 3, 'vocab_size': 101, 'd_model': 16,
                                     'num_heads': 2, 'head_dim': 8, 'd_ff': 32,
                                     'num_layers': 2, **overrides})


def packed_batch():
  """Two rows: three examples + padding, and one example filling the row."""
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0],
                          [1] * 12], np.int32)
  positions = np.array([[0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 0, 0], list(range(12))], np.int32)
  inputs = np.where(segment_ids > 0, np.arange(24).reshape(2, 12) % 97 + 2, 0)
  return dict(inputs=inputs.astype(np.int32), inputs_segment_ids=segment_ids,
              inputs_positions=positions, targets=np.array([[1, 2, 3], [2, 0, 0]], np.int32))


# ------------------------------------------------------------------ train.py in this process

# The demo task on a model small enough to train a few steps in seconds.
TINY_FLAGS = ['--max_input_length=64', '--max_target_length=8', '--batch_size=4',
              '--log_every=1', '--vocab_size=300', '--d_model=32', '--d_ff=64', '--num_heads=2',
              '--num_layers=1']
# A model of a few thousand parameters on 32-token rows of support tickets: 4 steps.
TICKET_FLAGS = ['--size=tiny', '--d_model=16', '--num_heads=2', '--head_dim=8', '--d_ff=32',
                '--num_layers=1', '--max_input_length=32', '--max_target_length=4',
                '--batch_size=4', '--vocab_size=60', '--train_steps=4', '--eval_every=2',
                '--log_every=2', '--compilation_cache=']


def train_main(*argv):
  """train.py's main in this process, with these flags (the others at their defaults); a
  user's mistake raised, not turned into an exit status (`train.run_command`)."""
  import train
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *argv])
  train.logging.set_verbosity(train.logging.INFO)  # as app.run does
  train.run_command(['train.py'])


def train_status(*argv):
  """train.py in this process, ending as the command does: -> its exit status."""
  import cli
  import train
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *argv])
  try:
    cli.run('train.py', train.run_command, ['train.py'])
  except SystemExit as e:
    return e.code
  return 0


# ------------------------------------------------------------------------------ processes

def free_port():
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(commands, env, timeout, cwd=None):
  """Runs the commands side by side (e.g. the processes of one jax.distributed job) and
  returns their stdouts; asserts that each exited 0, showing its stderr if not."""
  procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd) for command in commands]
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]
