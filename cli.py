"""What the command lines `train.py` and `pretrain.py` share: the model, training and device
flags, the start-up (logs, compilation cache, several hosts), the lock on OUTPUT_DIR, and the
exit statuses.

Flags are absl's, as T5X's scripts and the `python train.py --flags` the design asks for: each
is defined once, in the module of the command that reads it, and `--helpfull` lists them by
module. Importing this module defines the shared flags; the library modules below it
(`finetune`, `loop`, the model and data modules) define none. Defaults are fine-tuning's
(`finetune.Config`); pretrain.py sets its own before parsing.
"""
import contextlib
import errno
import fcntl
import logging as std_logging
import os
import shlex
import signal
import sys

from absl import app, flags, logging
import jax

import enct5
import fileio
import finetune
import hosts
import load_ckpt
import loop
import t5_layers

DEFAULTS = finetune.Config()

# Model.
flags.DEFINE_enum('size', None, list(enct5.SIZES), 'T5.1.1 (small..xxl), mT5 (mt5-small..) or '
                  'ByT5 (byt5-small..) size, or a tiny one of each family. With --checkpoint: '
                  'checked against it. Without: the model to train from scratch (default tiny; '
                  'the vocabulary fixes its vocab_size).')
flags.DEFINE_integer('d_model', None, 'The model dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('num_heads', None, 'The attention heads, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('head_dim', None, 'The head dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('d_ff', None, 'The FFN dim, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_integer('num_layers', None, 'The encoder layers, instead of the size\'s; with a '
                     'checkpoint: checked against it.')
flags.DEFINE_float('dropout_rate', DEFAULTS.dropout_rate, 'Dropout while training (T5 '
                   'fine-tuning: 0.1; T5.1.1 pre-training: 0).')
flags.DEFINE_enum('dtype', DEFAULTS.dtype, ['float32', 'bfloat16'], 'Activation dtype; '
                  'parameters and Adafactor state stay float32. --mode=eval/predict: the run\'s '
                  'unless given (any run predicts in bfloat16 with --dtype=bfloat16).')
flags.DEFINE_enum('remat_policy', DEFAULTS.remat_policy, list(t5_layers.REMAT_POLICIES),
                  'T5X\'s rematerialization per layer, to fit larger batches or models: none; '
                  'minimal (keep the matmuls\' outputs, recompute the rest); full (keep only '
                  'each layer\'s input; about one more forward pass of compute). Same numbers. '
                  'On XLA:CPU it frees memory only with --scan_layers.')
flags.DEFINE_bool('scan_layers', DEFAULTS.scan_layers, 'Run each stack\'s layers as one '
                  'lax.scan (T5X\'s option): compile time and program size no longer grow with '
                  'depth (xl, xxl). Same numbers; checkpoints keep one tree per layer.')

# Data and training.
flags.DEFINE_string('vocab', None, 'SentencePiece model, local or gs:// (T5: gs://t5-data/vocabs/'
                    'cc_all.32000/sentencepiece.model), or byt5 for ByT5\'s UTF-8 bytes. Unset: '
                    'the checkpoint\'s own, else one trained into OUTPUT_DIR.')
flags.DEFINE_integer('vocab_size', DEFAULTS.vocab_size, 'Pieces (at most) of the SentencePiece '
                     'model trained when --vocab is unset.')
flags.DEFINE_integer('max_input_length', DEFAULTS.max_input_length, 'Tokens per packed input row '
                     '(L; paper §4.1: 512); longer examples are truncated, keeping their EOS.')
flags.DEFINE_integer('batch_size', DEFAULTS.batch_size, 'Rows per global batch (T5: 128 rows of '
                     '512 tokens), split over the mesh\'s data axis and the processes.')
flags.DEFINE_integer('eval_batch_size', None, 'Rows per batch in evaluation and prediction. '
                     'Unset: --batch_size, on a CPU cut to 4 MiB of FFN activations (EncT5-small: '
                     '1024 tokens in float32, 2048 in bfloat16; faster there).')
flags.DEFINE_integer('train_steps', DEFAULTS.train_steps, 'Steps of this run (fine-tuning, '
                     'paper §4.1: 50k, counted from the start of fine-tuning, not from the '
                     'checkpoint\'s step).')
flags.DEFINE_integer('eval_every', DEFAULTS.eval_every, 'Evaluate and save a checkpoint every '
                     'this many steps (and at the end).')
flags.DEFINE_integer('log_every', DEFAULTS.log_every, 'Steps per training log line.')
flags.DEFINE_integer('keep_checkpoints', DEFAULTS.keep_checkpoints, 'Latest checkpoints kept in '
                     'OUTPUT_DIR/checkpoints (one to fall back on if the newest is damaged).')
flags.DEFINE_integer('seed', DEFAULTS.seed, 'Seed of init, data order and dropout (a function of '
                     'seed and step, so a resumed run is exact).')
flags.DEFINE_string('output_dir', None, 'The run\'s directory: checkpoints, metrics.jsonl, its '
                    'record; re-running the same command resumes from it.')

# Devices and hosts.
flags.DEFINE_string('mesh', None, 'Device mesh DATAxMODEL, e.g. 4x2: batches split over DATA, '
                    'parameters partitioned over MODEL. Default: all devices on DATA.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for several hosts.')
flags.DEFINE_integer('num_processes', 1, 'Processes (hosts) running this same command.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index, 0..num_processes-1.')
flags.DEFINE_float('host_timeout', hosts.HOST_TIMEOUT_S, 'Several processes: seconds without a '
                   'heartbeat from another process before it is lost; the others then stop '
                   'within 1.5x this, with one line and exit status 4 (hosts.HostWatchdog).')
flags.DEFINE_string('compilation_cache', os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'enct5', 'jax'),
    'JAX\'s persistent compilation cache: a second run of the same command loads its compiled '
    'steps from here instead of compiling them again. Empty: no cache.')

FLAGS = flags.FLAGS
POSITIVE_FLAGS = ('batch_size', 'eval_batch_size', 'train_steps', 'eval_every', 'log_every',
                  'keep_checkpoints', 'max_input_length', 'vocab_size') + finetune.SHAPE_FIELDS

# Exit statuses: 0 done; 1 a programming error (with its traceback) or a non-finite loss;
# USER_ERROR a mistake in the flags, files or data (one line on stderr; ENCT5_TRACEBACK=1 shows
# the traceback); INTERRUPTED stopped by SIGTERM or SIGINT after writing a checkpoint;
# HOST_LOST another process of a run on several hosts stopped answering (one line: which, at
# which step, the last complete checkpoint, the command to resume).
USER_ERROR = 2
INTERRUPTED = 3
HOST_LOST = hosts.HOST_LOST


class UserError(Exception):
  """A mistake the user can fix (a flag, a file, the data): the message names it."""


USER_ERRORS = (UserError, app.UsageError, finetune.ConfigError, fileio.DataError,
               load_ckpt.CheckpointError, OSError, loop.StepTooLarge)


def check_positive(names=POSITIVE_FLAGS):
  """Counts that cannot work stop here, before anything is read or compiled."""
  for name in names:
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      raise UserError(f'--{name}={FLAGS[name].value}: must be at least 1')
  if not 0 <= FLAGS.dropout_rate < 1:
    raise UserError(f'--dropout_rate={FLAGS.dropout_rate}: must be in [0, 1)')


def start_up():
  """Logs as `HH:MM:SS message`, the compilation cache, and several hosts joined (every
  process runs the same command; only process 0 logs below warnings). -> the HostWatchdog
  that the rest of the command runs in (`with cli.start_up() as watchdog:`)."""
  logging.get_absl_handler().setFormatter(
      std_logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
  if not FLAGS.host_timeout > 0:
    raise UserError(f'--host_timeout={FLAGS.host_timeout}: must be positive')
  try:
    hosts.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id, FLAGS.host_timeout)
  except ValueError as e:
    raise UserError(str(e)) from None
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  return hosts.HostWatchdog(FLAGS.host_timeout, describe_resume)


def describe_resume():
  """The end of a lost host's line: the last complete checkpoint and how to resume."""
  latest = load_ckpt.latest_checkpoint(os.path.join(FLAGS.output_dir or '', 'checkpoints'))
  return (f'Last complete checkpoint: {latest or "(none yet)"}; to resume, run the same '
          f'command in every process: {shlex.join(["python", *sys.argv])}')


LOCK_FILE = 'lock'


def lock_output_dir(output_dir):
  """OUTPUT_DIR/lock, held (fcntl.flock) while the returned file is open: a second run in the
  same directory stops. The OS releases it when the process ends, however it ends."""
  path = os.path.join(output_dir, LOCK_FILE)
  try:
    os.makedirs(output_dir, exist_ok=True)
    f = open(path, 'a+')
  except OSError as e:
    raise UserError(f'--output_dir={output_dir} cannot be written: {e}') from None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    raise UserError(f'--output_dir={output_dir} is in use by another run (process '
                    f'{f.read().strip() or "?"} holds {path}): wait for it, stop it, or give '
                    'another --output_dir') from None
  f.truncate(0)
  f.write(f'{os.getpid()}\n')
  f.flush()
  return f


class _Signal(BaseException):
  """A signal, raised where the program is when it arrives. A BaseException, as
  KeyboardInterrupt: no `except Exception` (logging's own, among others) swallows it."""


@contextlib.contextmanager
def stop_at_once_on_signals(doing):
  """Inside (--mode=eval/predict), SIGTERM and SIGINT stop the work at once with one line and
  `loop.Interrupted` (exit status INTERRUPTED): a file being written is dropped
  (`fileio.atomic_file`), and an earlier one stays as it was."""
  def stop(signum, frame):
    raise _Signal(signum)
  previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  except _Signal as e:
    logging.warning('signal %d: stopped %s; nothing was written (an earlier output is left as '
                    'it was): run the same command again', e.args[0], doing)
    raise loop.Interrupted(e.args[0]) from None
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def run(program, run_command, argv):
  """`run_command(argv)`, its ends turned into exit statuses: a user's mistake one line on
  stderr and USER_ERROR (ENCT5_TRACEBACK=1: with the traceback); a signal INTERRUPTED; a
  non-finite loss 1, logged."""
  try:
    run_command(argv)
  except loop.Interrupted:
    raise SystemExit(INTERRUPTED) from None
  except loop.NonFiniteLoss as e:
    logging.error('%s', e)
    raise SystemExit(1) from None
  except USER_ERRORS as e:
    if os.environ.get('ENCT5_TRACEBACK'):
      raise
    message = str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      message += ('; free some space (or move --output_dir), then run the same command to '
                  'resume from the last checkpoint')
    print(f'{program}: error: {message}', file=sys.stderr)
    raise SystemExit(USER_ERROR) from None
