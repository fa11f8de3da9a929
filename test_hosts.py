"""Tests of hosts.py: when a process of a run dies (SIGKILL) or freezes (SIGSTOP), the others stop
by themselves within the documented bound with one line and exit status HOST_LOST
(`hosts.HostWatchdog`), and the same commands resume to the uninterrupted result. Real processes on
127.0.0.1 (one CPU device each, gloo collectives) run the small training loop of
tools/host_loss_check.py.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import hosts
import load_ckpt
import testutil
import vocabularies

TIMEOUT_S = 5  # --host_timeout of these runs
BOUND_S = 1.5 * TIMEOUT_S  # HostWatchdog's documented bound
STEPS = 9  # checkpoints at steps 3, 6, 9


def _run(output_dir, extra_flags, frozen=(), timeout=120):
  """The processes of one run (process i adds extra_flags[i]), to their end; those in `frozen`
  (stopped by SIGSTOP) are killed once the others have ended.
  -> [(exit status, stdout, stderr, time.time() when it ended)] per process."""
  address = f'127.0.0.1:{testutil.free_port()}'
  env = dict({k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}, JAX_PLATFORMS='cpu')
  procs, logs = [], []
  for i, extra in enumerate(extra_flags):
    out, err = (open(os.path.join(output_dir, f'process_{i}.{s}'), 'w+') for s in ('out', 'err'))
    command = [sys.executable, '-m', 'tools.host_loss_check',
               f'--num_processes={len(extra_flags)}', f'--process_id={i}',
               f'--coordinator_address={address}', f'--output_dir={output_dir}',
               f'--train_steps={STEPS}', '--checkpoint_every=3', f'--host_timeout={TIMEOUT_S}']
    procs.append(subprocess.Popen(command + extra, stdout=out, stderr=err, env=env,
                                  cwd=testutil.REPO))
    logs.append((out, err))
  ended = [None] * len(procs)
  deadline = time.time() + timeout
  try:
    while any(ended[i] is None for i in range(len(procs)) if i not in frozen):
      assert time.time() < deadline, f'a process ran past {timeout} s'
      for i, p in enumerate(procs):
        if ended[i] is None and p.poll() is not None:
          ended[i] = time.time()
      time.sleep(0.05)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  results = []
  for p, (out, err), end in zip(procs, logs, ended):
    out.seek(0), err.seek(0)
    results.append((p.returncode, out.read(), err.read(), end))
    out.close(), err.close()
  return results


def _death_time(stdout):
  """When the process that plays the lost host sent itself the signal (it prints the time)."""
  return float(re.search(r'dying at ([\d.]+)', stdout)[1])


def _assert_same_checkpoint(path, reference):
  ours, theirs = (load_ckpt.flatten(dict(zip(('target', 'state'), load_ckpt.read_checkpoint(p))))
                  for p in (path, reference))
  assert sorted(ours) == sorted(theirs)
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def _assert_one_line(stderr, lost, me, of, checkpoint, found_by=None):
  """stderr is the watchdog's one line: no traceback, no abort, no C++ frames."""
  for crash in ('Traceback', 'Fatal Python error', 'Check failure', 'Terminating process'):
    assert crash not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if 'stops' in line]
  assert len(lines) == 1, stderr[-3000:]
  found = '' if found_by is None else rf' \(found by process {found_by}\)'
  assert re.fullmatch(
      rf'host_loss_check\.py: process {lost} of {of} stopped answering \(no heartbeat for '
      rf'{TIMEOUT_S} s; the last one (at its step \d|before its first step)\){found}; '
      rf'process {me} stops at its step \d with exit status {hosts.HOST_LOST}\. '
      rf'Last complete checkpoint: {re.escape(checkpoint)}; to resume, run the same command '
      rf'in every process: .* -m tools\.host_loss_check --num_processes={of} --process_id={me} .*',
      lines[0]), lines[0]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """Two processes run all STEPS; process 1's step 2 lasts 2 * TIMEOUT_S (a slow step, as a
  first compilation is). -> (the run's results, its directory)."""
  output_dir = str(tmp_path_factory.mktemp('uninterrupted'))
  slow = ['--slow_step=2', f'--slow_s={2 * TIMEOUT_S}']
  return _run(output_dir, [[], slow]), output_dir


@pytest.mark.parametrize('host_timeout_s', [5, hosts.HOST_TIMEOUT_S, 3600])
def test_jax_heartbeat_outlasts_the_watchdog(monkeypatch, host_timeout_s):
  """JAX's coordination service aborts every process when its heartbeat times out: its timeout
  must exceed the watchdog's bound, 1.5 * --host_timeout, at the default and at large values
  (where a formula that passes at 5 s may fail)."""
  given = {}
  monkeypatch.setattr(hosts.jax.distributed, 'initialize',
                      lambda *args, **kwargs: given.update(kwargs))
  hosts.initialize_distributed('localhost:1234', 2, 0, host_timeout_s=host_timeout_s)
  assert given['heartbeat_timeout_seconds'] > 1.5 * host_timeout_s + 5


def test_a_slow_step_is_not_a_lost_host(uninterrupted):
  """Liveness comes from the watchdog's thread, not from the loop's steps."""
  results, _ = uninterrupted
  for status, out, err, _ in results:
    assert status == 0, err[-3000:]
    assert f'done at step {STEPS}' in out and 'stops' not in err


def test_the_others_stop_with_one_line_and_resume_exactly(tmp_path, uninterrupted):
  """Process 1 dies while the checkpoint of step 6 is being written (its slices written,
  process 0's not yet renamed): process 0 stops within the bound, with one line naming
  process 1, the last complete checkpoint (step 3) and the command; the half-written
  checkpoint stays a .tmp- directory. The same commands then resume to the uninterrupted
  run's parameters and optimizer state, bit for bit."""
  output_dir = str(tmp_path)
  ckpt_dir = os.path.join(output_dir, 'checkpoints')
  results = _run(output_dir, [[], ['--die_at_step=6', '--die_while_saving']])
  (status, _, err, end), (killed, out, _, _) = results
  assert killed == -9 and 'saving checkpoint_6' in out
  assert status == hosts.HOST_LOST, err[-3000:]
  _assert_one_line(err, lost=1, me=0, of=2, checkpoint=os.path.join(ckpt_dir, 'checkpoint_3'))
  assert end - _death_time(out) < BOUND_S
  assert [step for step, _ in load_ckpt.complete_checkpoints(ckpt_dir)] == [3]
  assert [n for n in os.listdir(ckpt_dir) if n.startswith('checkpoint_6.tmp-')]

  for status, out, err, _ in _run(output_dir, [[], []]):
    assert status == 0 and f'done at step {STEPS}' in out, err[-3000:]
  _, reference_dir = uninterrupted
  _assert_same_checkpoint(os.path.join(ckpt_dir, f'checkpoint_{STEPS}'),
                          os.path.join(reference_dir, 'checkpoints', f'checkpoint_{STEPS}'))


def test_a_frozen_process_and_three_processes_the_coordinator_stops_last(tmp_path):
  """Process 2 of 3 freezes (SIGSTOP: its connections stay open, the others' collectives hang
  instead of failing). Process 0 finds it first (process 1's --host_timeout is longer) and
  says so; process 1 stops with that verdict, then process 0 (its exit takes JAX's
  coordination service with it, which would abort process 1): one line each, within the
  bound."""
  results = _run(str(tmp_path), [[], [f'--host_timeout={TIMEOUT_S + 2}'],
                                 ['--die_at_step=5', '--die_by=SIGSTOP']], frozen=[2])
  died = _death_time(results[2][1])
  checkpoint = os.path.join(str(tmp_path), 'checkpoints', 'checkpoint_3')
  for me, (status, _, err, end) in enumerate(results[:2]):
    assert status == hosts.HOST_LOST, err[-3000:]
    _assert_one_line(err, lost=2, me=me, of=3, checkpoint=checkpoint,
                     found_by=0 if me == 1 else None)
    assert end - died < BOUND_S
  assert results[0][3] > results[1][3]


def test_when_the_coordinator_dies_jax_ends_the_others_at_once(tmp_path):
  """Process 0 hosts JAX's coordination service; when it dies, JAX's runtime aborts the others
  at once, before any Python code can run (the documented limit): within the bound, not by the
  watchdog, and no half-written checkpoint."""
  ckpt_dir = os.path.join(str(tmp_path), 'checkpoints')
  (_, out, _, _), (status, _, err, end) = _run(str(tmp_path), [['--die_at_step=5'], []])
  assert status not in (0, hosts.HOST_LOST), err[-3000:]
  assert end - _death_time(out) < BOUND_S
  assert [step for step, _ in load_ckpt.complete_checkpoints(ckpt_dir)] == [3]


def test_an_error_in_every_process_is_not_held(tmp_path):
  """The same exception in every process (a non-finite loss) goes on at once, with its own
  traceback and exit status 1: the watchdog holds an exception only while a process might be
  lost."""
  results = _run(str(tmp_path), [['--fail_at_step=1']] * 2)
  last_failed = max(float(re.search(r'failing at ([\d.]+)', out)[1]) for _, out, _, _ in results)
  for status, _, err, end in results:
    assert status == 1 and 'FloatingPointError: loss is nan at step 1' in err, err[-3000:]
    assert 'stops' not in err
    assert end - last_failed < TIMEOUT_S


# ----------------------------------------------------------------------------------------------
# train.py itself on two processes.
# ----------------------------------------------------------------------------------------------

TRAIN_STEPS = 8  # checkpoints at steps 4 and 8


def _train_py(tmp_path, output_dir, kill_at_step):
  """train.py on two processes (a tiny EncT5 on 64 made-up SST-2 rows), process 1 killed
  (SIGKILL) when process 0 logs `kill_at_step`. -> per process (exit status, stderr,
  time.time() when it ended), and the time of the kill."""
  data = tmp_path / 'SST-2'
  data.mkdir()
  rng = np.random.default_rng(0)
  words = 'good bad film plot cast dull great slow'.split()
  for name, rows in (('train.tsv', 64), ('dev.tsv', 16)):
    lines = ['sentence\tlabel'] + [f'{" ".join(rng.choice(words, 5))}\t{rng.integers(2)}'
                                   for _ in range(rows)]
    (data / name).write_text('\n'.join(lines) + '\n')
  vocabularies.train_vocab(words, str(tmp_path / 'vocab'), 40)
  address = f'127.0.0.1:{testutil.free_port()}'
  env = dict({k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', '--task=sst2', f'--data_dir={data}',
       f'--vocab={tmp_path}/vocab.model', f'--output_dir={output_dir}', '--size=tiny',
       '--d_model=16', '--num_heads=2', '--head_dim=8', '--d_ff=32', '--num_layers=1',
       '--max_input_length=32', '--max_target_length=4', '--batch_size=4',
       f'--train_steps={TRAIN_STEPS}', '--eval_every=4', '--log_every=1',
       '--compilation_cache=', f'--host_timeout={TIMEOUT_S}', '--num_processes=2',
       f'--process_id={i}', f'--coordinator_address={address}'],
      stderr=subprocess.PIPE, text=True, env=env, cwd=testutil.REPO) for i in range(2)]
  killed, log = None, []
  try:
    for line in procs[0].stderr:
      log.append(line)
      if killed is None and f'step {kill_at_step}/{TRAIN_STEPS}' in line:
        killed = time.time()
        procs[1].kill()
    ended = time.time()
    procs[0].wait(timeout=60)
    results = [(procs[0].returncode, ''.join(log), ended)]
    results.append((procs[1].wait(timeout=60), procs[1].stderr.read(), None))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results, killed


def test_train_py_stops_with_one_line_when_a_host_dies(tmp_path):
  """train.py on two processes, process 1 killed at step 6 (after the step-4 checkpoint):
  process 0 exits with HOST_LOST within the bound and one line naming process 1, its step,
  checkpoint_4 (complete) and the command. (That the same commands then resume exactly is
  `test_the_others_stop_with_one_line_and_resume_exactly`'s, and train.py's resume
  test_loop's `test_resume_is_bit_identical`.)"""
  output_dir = tmp_path / 'run'
  results, killed = _train_py(tmp_path, output_dir, kill_at_step=6)
  (status, err, ended), (killed_status, _, _) = results
  assert killed_status == -9 and status == hosts.HOST_LOST, err[-3000:]
  assert ended - killed < BOUND_S
  for crash in ('Traceback', 'Fatal Python error', 'Check failure', 'Terminating process'):
    assert crash not in err, err[-3000:]
  [line] = [line for line in err.splitlines() if 'stopped answering' in line]
  checkpoint = os.path.join(output_dir, 'checkpoints', 'checkpoint_4')
  assert line.startswith('train.py: process 1 of 2 stopped answering'), line
  assert f'Last complete checkpoint: {checkpoint}; to resume' in line and \
      '--process_id=0' in line, line
  assert load_ckpt.latest_checkpoint(os.path.join(output_dir, 'checkpoints')) == checkpoint
