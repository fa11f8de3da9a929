"""Tests of fileio.py: atomic writes (a reader sees the old file or the whole new one; nothing
is left behind when the writing fails), bytes read from a local path, and TensorStore's
kvstore of a local or gs:// path."""
import os

import pytest

import fileio


def test_atomic_file_replaces_the_file_only_when_the_writing_ends(tmp_path):
  path = tmp_path / 'out' / 'predictions.jsonl'  # its folder is made
  fileio.write_atomically(str(path), b'old\n')
  with fileio.atomic_file(str(path), 'w') as f:
    f.write('new, part one\n')
    f.flush()
    assert path.read_bytes() == b'old\n'  # a reader meanwhile sees the old file whole
    f.write('new, part two\n')
  assert path.read_text() == 'new, part one\nnew, part two\n'
  assert os.listdir(path.parent) == ['predictions.jsonl']


@pytest.mark.parametrize('error', [ValueError('bad row'), KeyboardInterrupt()])
def test_atomic_file_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, error):
  path = tmp_path / 'run_config.json'
  path.write_bytes(b'{"old": 1}\n')
  with pytest.raises(type(error)):
    with fileio.atomic_file(str(path)) as f:
      f.write(b'{"new"')
      raise error
  assert path.read_bytes() == b'{"old": 1}\n' and os.listdir(tmp_path) == ['run_config.json']


def test_read_bytes_of_a_local_file_or_none(tmp_path):
  (tmp_path / 'vocab.model').write_bytes(b'\x00\x01')
  assert fileio.read_bytes(str(tmp_path / 'vocab.model')) == b'\x00\x01'
  assert fileio.read_bytes(str(tmp_path / 'absent.model')) is None
  assert fileio.read_bytes(str(tmp_path)) is None  # a folder is no file


def test_kvstore_of_local_and_gs_paths(tmp_path, monkeypatch):
  assert fileio.kvstore('gs://t5-data/pretrained_models/small/') == {
      'driver': 'gcs', 'bucket': 't5-data', 'path': 'pretrained_models/small/'}
  assert fileio.kvstore('gs://bucket') == {'driver': 'gcs', 'bucket': 'bucket', 'path': ''}
  assert fileio.kvstore(f'{tmp_path}/ckpt/') == {'driver': 'file', 'path': f'{tmp_path}/ckpt/'}
  monkeypatch.chdir(tmp_path)
  assert fileio.kvstore('ckpt') == {'driver': 'file', 'path': f'{tmp_path}/ckpt'}
