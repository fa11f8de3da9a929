"""Helpers shared by the test files: where ../shared is, and launching several processes."""
import os
import socket
import subprocess

import tasks

REPO = os.path.dirname(os.path.abspath(__file__))
SHARED = tasks.SHARED  # real GLUE data and T5X-written checkpoints, never copied into the repo


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
