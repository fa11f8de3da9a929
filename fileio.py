"""Files: the error for a data file that cannot be used, reading local or gs:// bytes, and
atomic writes (a reader sees the old file or the whole new one, never a part).

The ground floor of the data layer, the checkpoints and the training loop; it imports nothing
of the project.
"""
import contextlib
import os
import re
import socket

import tensorstore as ts


class DataError(ValueError):
  """A data or vocabulary file that cannot be used as it is; the message names it (and the
  line) and says what is wrong."""


def kvstore(path):
  """TensorStore kvstore spec of a local path or 'gs://bucket/path'."""
  match = re.fullmatch(r'gs://([^/]+)/?(.*)', path)
  if match:
    return {'driver': 'gcs', 'bucket': match[1], 'path': match[2]}
  return {'driver': 'file', 'path': os.path.abspath(path) + ('/' if path.endswith('/') else '')}


def read_bytes(path):
  """The bytes of a local or gs:// file, or None when there is no such file."""
  if path.startswith('gs://'):
    directory, name = path.rsplit('/', 1)
    result = ts.KvStore.open(kvstore(directory + '/')).result().read(name).result()
    return result.value if result.state == 'value' else None
  if not os.path.isfile(path):
    return None
  with open(path, 'rb') as f:
    return f.read()


@contextlib.contextmanager
def atomic_file(path, mode='wb'):
  """A file open for writing at a temporary sibling of `path`, renamed to `path` when the block
  ends without an error (removed when it raises): a reader sees the old file or the whole new
  one, never a part. Every process of a run may write the same file."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{socket.gethostname()}-{os.getpid()}'
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomically(path, data):
  """Writes bytes `data` to `path` (`atomic_file`)."""
  with atomic_file(path) as f:
    f.write(data)
