"""What the experiment grids share: running one `train.py` cell as a logged subprocess, and
wall times as text."""
import datetime
import os
import subprocess
import sys


def duration(seconds):
  """'12m05s', or '1h07m' from an hour on."""
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def run_logged(argv, log_path, header):
  """Runs train.py's `argv` (python first), its output appended to `log_path` after a dated
  `header`; -> its exit status. Interrupted (Ctrl-C, or SIGTERM: see main), it never leaves
  train.py running on its own."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'a') as log:
    log.write(f'# {datetime.datetime.now().isoformat(timespec="seconds")} {header}\n')
    log.flush()
    proc = subprocess.Popen([sys.executable] + argv[1:], stdout=log, stderr=subprocess.STDOUT)
    try:
      return proc.wait()
    finally:
      if proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
