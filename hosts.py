"""Many hosts: the processes of one run joined with JAX's own runtime (every process runs the
same command; the mesh spans all processes' devices), and what happens when one of them dies.

`initialize_distributed` joins them; `HostWatchdog` stops the others, with one line on stderr
and exit status HOST_LOST, when one process of the run stops answering (killed, preempted,
frozen), instead of letting them hang in a collective until JAX's runtime aborts them with
pages of C++ frames.
"""
import json
import os
import sys
import threading
import time

import jax


# Exit status of a process that stops because another process of its run stopped answering
# (`HostWatchdog`); the command lines document it with their other exit statuses.
HOST_LOST = 4
HOST_TIMEOUT_S = 60  # default of --host_timeout: seconds without a heartbeat before a host is lost


def initialize_distributed(coordinator_address=None, num_processes=1, process_id=0,
                           host_timeout_s=HOST_TIMEOUT_S):
  """Many hosts with JAX's own runtime: every process runs this same program, and the mesh
  spans all processes' devices. On CPU the cross-process collectives are gloo (jax's default
  `jax_cpu_collectives_implementation`).

  `host_timeout_s` is the `HostWatchdog`'s. JAX's coordination service has a heartbeat of its
  own: when a process misses it, JAX aborts every other process (SIGABRT, pages of C++ frames).
  Its timeout is set to 2 * host_timeout_s + 10 s, so that the watchdog, which reports a lost
  process within 1.5 * host_timeout_s, always speaks first.
  """
  if num_processes > 1:
    if not coordinator_address:
      raise ValueError('--num_processes > 1 needs --coordinator_address (host:port of process 0)')
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=int(2 * host_timeout_s + 10))


class HostWatchdog:
  """Ends this process with one line on stderr and exit status HOST_LOST, within
  1.5 * timeout_s, when another process of the run stops answering. Everything after
  `initialize_distributed` runs inside it (a process that has not entered it looks silent):

    with hosts.HostWatchdog(timeout_s, describe_resume) as watchdog:
      ...  # restore or initialize, compile
      for step in range(start + 1, train_steps + 1):
        watchdog.step = step
        ...

  `describe_resume()` -> the end of the line: the last complete checkpoint, how to resume.

  Without it, the others fail (or hang) in their next collective, then wait in JAX's exit-time
  shutdown until JAX's heartbeat timeout aborts them: SIGABRT and pages of C++ frames.

  A daemon thread in each process publishes a heartbeat every timeout_s / 10 to the key-value
  store of JAX's coordination service and reads the others'. Liveness comes from that thread,
  not from the loop: a slow step (a first compilation of minutes) is not a lost process. A
  process whose heartbeat has not changed for timeout_s is lost (process 0, if the store it
  hosts does not answer for timeout_s); the first process to find it says so in its heartbeat,
  and each survivor prints its line and calls os._exit at its next one (the main thread may be
  blocked in a collective), process 0 last. A checkpoint being written stays a `.tmp-`
  directory, which `load_ckpt.latest_checkpoint` ignores. An exception leaving the block (a
  collective whose peer died raises at once; in JAX 0.10.2 on CPU, ValueError "Gloo ...
  Connection closed by peer") waits for that verdict, but goes on at once if every other
  process failed too (the same non-finite loss everywhere).

  Limit: when process 0 dies, JAX aborts every other process at once (SIGABRT, "Terminating
  process because the JAX distributed service detected fatal errors") before Python can act:
  jaxlib 0.10.2 cannot hand that error to a Python callback. With one process the block does
  nothing.
  """

  def __init__(self, timeout_s, describe_resume):
    self.step = None  # the loop's current step, named in the line
    self.timeout_s = timeout_s
    self.describe_resume = describe_resume
    self._interval = timeout_s / 10
    self._beat = 0
    self._ending = None  # how the block ended: 'done', or 'failed' (an exception left it)
    self._verdict = None  # [lost process, what happened to it, the process that found it]
    self._records = {}  # process -> (its last record, the monotonic time that record changed)
    self._started = self._answered = None  # monotonic times: entered; the store's last answer
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, name='host watchdog', daemon=True)

  def __enter__(self):
    if jax.process_count() > 1:
      self._started = self._answered = time.monotonic()
      self._thread.start()
    return self

  def __exit__(self, exc_type, exc, traceback):
    if not self._thread.is_alive():
      return False
    if exc_type is None:
      self._ending = 'done'
    elif issubclass(exc_type, Exception):
      self._ending = 'failed'
      deadline = time.monotonic() + 1.5 * self.timeout_s
      while (time.monotonic() < deadline and
             not all(self._published(p)['state'] == 'failed' for p in self._others())):
        time.sleep(self._interval / 4)  # meanwhile the thread ends the process if one is lost
    self._stop.set()
    self._thread.join()
    return False

  def _watch(self):
    """The thread: a heartbeat every interval while the block runs, then a last one."""
    while not self._stop.is_set():
      self._heartbeat()
      verdict = self._lost()
      if verdict is not None:
        self._end_process(verdict)
      self._stop.wait(self._interval)
    self._heartbeat()

  def _heartbeat(self):
    """Publish this process's record; note the time of each change in the others'. A record:
    {beat, state: running, failed, done or lost (this process stops for a lost one), the
    loop's step, lost: the verdict}."""
    self._beat += 1
    state = 'lost' if self._verdict else self._ending or 'running'
    record = {'beat': self._beat, 'state': state, 'step': self.step, 'lost': self._verdict}
    try:
      records = _exchange_heartbeats(jax.process_index(), json.dumps(record))
    except Exception:  # the store, on process 0, did not answer
      return
    now = self._answered = time.monotonic()
    seen = {}
    for p, record in records.items():
      old = self._records.get(p)
      seen[p] = old if old is not None and old[0] == record else (record, now)
    self._records = seen  # a new dict: the main thread may be reading the old one

  def _others(self):
    return [p for p in range(jax.process_count()) if p != jax.process_index()]

  def _published(self, p):
    """Process p's last record."""
    return json.loads(self._records.get(p, ('{"state": "running", "step": null}',))[0])

  def _silent(self, p):
    """Seconds since process p's record last changed."""
    return time.monotonic() - self._records.get(p, (None, self._started))[1]

  def _lost(self):
    """The verdict on a lost process (another process's, if one found it first), or None."""
    me = jax.process_index()
    if time.monotonic() - self._answered > self.timeout_s:
      return [0, f'(the coordinator) stopped answering for {self.timeout_s:g} s', me]
    for p in self._others():
      if self._published(p)['state'] == 'lost':
        return self._published(p)['lost']
    for p in self._others():
      record = self._published(p)
      if record['state'] != 'done' and self._silent(p) > self.timeout_s:
        if record['state'] == 'failed':
          return [p, f'failed {_at(record["step"])} (its log says why)', me]
        return [p, f'stopped answering (no heartbeat for {self.timeout_s:g} s; the last one '
                   f'{_at(record["step"])})', me]
    return None

  def _end_process(self, verdict):
    """The one line on stderr; the verdict in a last heartbeat; os._exit(HOST_LOST)."""
    try:
      resume = self.describe_resume()
    except Exception as e:  # the line and the exit must come whatever this does
      resume = f'(describe_resume failed: {e!r})'
    (lost, what, finder), me = verdict, jax.process_index()
    found = '' if finder == me else f' (found by process {finder})'
    print(f'{os.path.basename(sys.argv[0])}: process {lost} of {jax.process_count()} {what}'
          f'{found}; process {me} stops {_at(self.step)} with exit status {HOST_LOST}. '
          f'{resume}', file=sys.stderr, flush=True)
    self._verdict = verdict
    self._heartbeat()
    if me == 0:
      self._wait_for_the_others()
    sys.stdout.flush()
    os._exit(HOST_LOST)

  def _wait_for_the_others(self):
    """Process 0 stops last: when its coordination service goes, JAX aborts the others at once.
    It waits (at most timeout_s) for each to have stopped too, or to be silent."""
    deadline = time.monotonic() + self.timeout_s
    while time.monotonic() < deadline and not all(
        self._published(p)['state'] in ('lost', 'done') or self._silent(p) > self.timeout_s
        for p in self._others()):
      time.sleep(self._interval / 4)
      self._heartbeat()
    time.sleep(self._interval / 4)  # their os._exit follows their last heartbeat


def _at(step):
  return 'before its first step' if step is None else f'at its step {step}'


_HEARTBEATS = 'enct5/host_watchdog/'  # key prefix in the coordination service's store


def _exchange_heartbeats(process, record):
  """Publish this process's heartbeat record, read everyone's: -> {process: record}.

  NOTE: JAX has no public key-value API; this is the client of its coordination service's
  store (on process 0), which `jax.experimental.multihost_utils` and JAX's array serialization
  use too. A private API, used here only.
  """
  from jax._src import distributed
  client = distributed.global_state.client
  client.key_value_set(f'{_HEARTBEATS}{process}', record, allow_overwrite=True)
  return {int(key.rsplit('/', 1)[1]): value
          for key, value in client.key_value_dir_get(_HEARTBEATS)}
