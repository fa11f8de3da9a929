"""Tests of save_ckpt.py: checkpoints written in T5X's layout, bit-exact when read back,
atomic (a crash leaves no partial checkpoint), the last few kept. Writing in shards by several
processes is tested with sharded reading, in test_load_ckpt.py."""
import json
import os

import ml_dtypes
import msgpack
import numpy as np
import pytest

import adafactor
import enct5
import load_ckpt
import save_ckpt
import testutil


def random_t5_state(seed=0):
  """Random T5.1.1-shaped params and Adafactor state (every slot non-zero). Sizes chosen so
  some matrices are factored (embedding, FFN) and some are not (attention [128, 16])."""
  cfg = enct5.get_config('tiny', vocab_size=256, d_model=128, num_heads=2, head_dim=8,
                         d_ff=160, num_layers=1, num_decoder_layers=1)
  rng = np.random.default_rng(seed)
  specs = load_ckpt.flatten(enct5.param_specs(cfg, 't5'))
  params = {name: rng.standard_normal(s.shape).astype(np.float32) for name, s in specs.items()}
  slots = {f'{name}/{slot}': rng.random(shape).astype(np.float32) + 0.5
           for name, s in specs.items()
           for slot, shape in adafactor.state_shapes(s.shape).items()}
  opt_state = {'step': np.int32(1000 + seed),
               'param_states': load_ckpt.unflatten(slots)}
  return load_ckpt.unflatten(params), opt_state


def test_save_then_restore_is_bit_exact_and_in_t5x_layout(tmp_path, monkeypatch):
  monkeypatch.setattr(save_ckpt, '_CHUNK_BYTES', 16384)  # several chunks per large array
  params, opt_state = random_t5_state()
  path = save_ckpt.save_checkpoint(str(tmp_path), 1000, params, opt_state)
  assert path == str(tmp_path / 'checkpoint_1000') and os.listdir(tmp_path) == ['checkpoint_1000']
  got_params, got_state = load_ckpt.restore_checkpoint(str(tmp_path))
  expected_state = dict(opt_state, step=np.asarray(opt_state['step']))
  testutil.assert_trees_equal(got_params, params)
  testutil.assert_trees_equal(got_state, expected_state)
  testutil.assert_trees_equal(load_ckpt.read_t5x(path), {'target': params, 'state': expected_state})

  # T5X's conventions: the index format of the fixtures, arrays where T5X puts them.
  with open(os.path.join(path, 'checkpoint'), 'rb') as f:
    raw = msgpack.unpackb(f.read(), ext_hook=msgpack.ExtType, raw=False)
  assert raw['version'] == 3 and sorted(raw['optimizer']) == ['state', 'target']
  kernel = raw['optimizer']['target']['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel == {'driver': 'zarr', 'dtype': 'float32',
                    'kvstore': {'driver': 'file',
                                'path': 'target.encoder.layers_0.mlp.wi_0.kernel/'},
                    'metadata': {'chunks': [64, 40], 'compressor': {'id': 'gzip', 'level': 1},
                                 'shape': [128, 160]}}
  state = raw['optimizer']['state']
  assert state['step'].code == 1
  factored = state['param_states']['token_embedder']['embedding']  # [256, 128]
  assert {k: type(v).__name__ for k, v in factored.items()} == dict.fromkeys(
      ['m', 'v', 'v_col', 'v_row'], 'ExtType')  # inline, as T5X
  unfactored = state['param_states']['encoder']['layers_0']['attention']['query']['kernel']
  assert unfactored['v']['kvstore']['path'] == (
      'state.param_states.encoder.layers_0.attention.query.kernel.v/')
  with open(os.path.join(path, 'target.token_embedder.embedding', '.zarray')) as f:
    zarray = json.load(f)
  assert zarray['dimension_separator'] == '.' and zarray['dtype'] == '<f4'
  assert zarray['compressor'] == {'id': 'gzip', 'level': 1}


def test_save_keeps_dtypes_bfloat16_and_float64(tmp_path):
  params = {'a': np.array([[1.5, -3.0]], ml_dtypes.bfloat16), 'b': np.arange(3.0)}
  opt_state = {'step': np.int32(2), 'param_states': {
      'a': {'m': np.zeros(1, np.float32), 'v': np.ones((1, 2), np.float32),
            'v_row': np.zeros(1, np.float32), 'v_col': np.zeros(1, np.float32)},
      'b': {'m': np.zeros(1, np.float32), 'v': np.ones(3, np.float32),
            'v_row': np.zeros(1, np.float32), 'v_col': np.zeros(1, np.float32)}}}
  save_ckpt.save_checkpoint(str(tmp_path), 2, params, opt_state)
  got_params, _ = load_ckpt.restore_checkpoint(str(tmp_path))
  testutil.assert_trees_equal(got_params, params)


def test_keeps_the_last_n_and_never_overwrites(tmp_path):
  params, opt_state = random_t5_state()
  for step in (1, 2, 3, 4):
    save_ckpt.save_checkpoint(str(tmp_path), step, params, dict(opt_state, step=np.int32(step)),
                              keep=2)
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_3', 'checkpoint_4']
  other_params, other_state = random_t5_state(seed=1)
  save_ckpt.save_checkpoint(str(tmp_path), 4, other_params, other_state, keep=2)
  testutil.assert_trees_equal(load_ckpt.restore_checkpoint(str(tmp_path))[0], params)  # as T5X: kept


@pytest.mark.parametrize('crash_in', ['_inline', '_fsync_tree'])
def test_interrupted_write_is_ignored(tmp_path, monkeypatch, crash_in):
  """A crash mid-arrays (no index yet), or with everything written but not renamed."""
  params, opt_state = random_t5_state()
  save_ckpt.save_checkpoint(str(tmp_path), 1, params, dict(opt_state, step=np.int32(1)))
  new_params, new_state = random_t5_state(seed=1)

  def crash(*args, **kwargs):
    raise KeyboardInterrupt('simulated crash')
  with monkeypatch.context() as patch:
    patch.setattr(save_ckpt, crash_in, crash)
    with pytest.raises(KeyboardInterrupt):
      save_ckpt.save_checkpoint(str(tmp_path), 2, new_params, new_state)
  leftovers = [d for d in os.listdir(tmp_path) if d.startswith('checkpoint_2.tmp-')]
  assert len(leftovers) == 1 and 'checkpoint_2' not in os.listdir(tmp_path)
  os.makedirs(tmp_path / 'checkpoint_9')  # a directory without an index is not a checkpoint
  assert load_ckpt.latest_checkpoint(str(tmp_path)) == str(tmp_path / 'checkpoint_1')
  got_params, got_state = load_ckpt.restore_checkpoint(str(tmp_path))
  testutil.assert_trees_equal(got_params, params) and int(got_state['step']) == 1
  save_ckpt.save_checkpoint(str(tmp_path), 2, new_params, new_state)  # the next try succeeds
  testutil.assert_trees_equal(load_ckpt.restore_checkpoint(str(tmp_path))[0], new_params)


def test_restore_from_an_empty_directory(tmp_path):
  assert load_ckpt.restore_checkpoint(str(tmp_path)) is None
  assert load_ckpt.latest_checkpoint(str(tmp_path / 'absent')) is None


def test_chunk_shape_as_t5x():
  # 32128 x 2048 float32 (xl embedding) is 251 MiB: the vocab dim is halved until <= 64 MiB.
  assert save_ckpt._chunk_shape((32128, 2048), 4) == [8032, 2048]
  assert save_ckpt._chunk_shape((512, 1024), 4) == [512, 1024]
  assert save_ckpt._chunk_shape((), 4) == []
