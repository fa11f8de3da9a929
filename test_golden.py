"""Golden-value tests of enct5.py against Hugging Face transformers (an independent
implementation).

The goldens are made by `python tools/make_golden.py` (torch + transformers, tool-only): see the
`README` entry of each testdata/*.npz for every key. Float32 here, compared at atol 1e-5 on the
positions that carry meaning (real tokens, real slots).
- golden_tiny.npz: a random T5.1.1 (D=16, H=4, K=8 so H*K != D, non-unit norm scales, strong
  relative-position tables, L=160 > 128). Unpacked encoder outputs; a packed batch whose
  reference ran every example alone through HF's encoder and HF's own cross-attention / FFN /
  RMSNorm modules (paper §3's pooling block), so packing is checked against no packing.
- golden_two_task.npz: a two-task EncT5 (a task embedding and a projection per task) on those
  weights; a packed batch mixing the tasks, each slot's reference HF's modules with its own
  task's query and head, run alone.
- golden_fixture_tiny.npz: HF's encoder on the real T5X checkpoint
  fixtures/t5x_tiny_t5_1_1_legacy.msgpack, which this test reads itself (skips if absent).
"""
import dataclasses
import hashlib
import json
import os

import jax
import msgpack
import numpy as np
import pytest

import enct5
import load_ckpt
import testutil

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = testutil.SHARED
LEGACY_FIXTURE = os.path.join(SHARED, 'fixtures', 't5x_tiny_t5_1_1_legacy.msgpack')
ATOL = 1e-5

# The EncT5 subset of a T5.1.1 tree (DESIGN.md "Checkpoints"); everything else is baseline-only.
ENCT5_PATHS = ('token_embedder/', 'encoder/', 'decoder/layers_0/pre_cross_attention_layer_norm/',
               'decoder/layers_0/encoder_decoder_attention/', 'decoder/layers_0/pre_mlp_layer_norm/',
               'decoder/layers_0/mlp/', 'decoder/decoder_norm/', 'decoder/bos_embedding',
               'decoder/class_projection/')


def _config(sizes, num_classes):
  return enct5.get_config('tiny', num_classes=num_classes, dropout_rate=0.0, dtype='float32',
                          **{k: v for k, v in sizes.items() if k != 'num_classes'})


def _assert_close(actual, expected, where, what):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, f'{what}: shape {actual.shape} != {expected.shape}'
  err = np.abs(actual - expected).max(axis=-1) * where  # [..] over meaningful positions
  worst = np.unravel_index(err.argmax(), err.shape)
  assert err.max() <= ATOL, (f'{what}: max |diff| {err.max():.3g} > {ATOL} at {worst}: '
                             f'{actual[worst]} vs golden {expected[worst]}')


@pytest.fixture(scope='module')
def golden():
  with np.load(os.path.join(HERE, 'testdata', 'golden_tiny.npz')) as z:
    g = {k: z[k] for k in z.files}
  sizes = json.loads(str(g['config_json']))
  cfg = _config(sizes, sizes['num_classes'])
  flat = {k[len('param/'):]: v for k, v in g.items() if k.startswith('param/')}
  params = load_ckpt.unflatten({k: v for k, v in flat.items() if k.startswith(ENCT5_PATHS)})
  return g, cfg, params


def test_golden_param_tree_is_enct5_tree(golden):
  _, cfg, params = golden
  specs = load_ckpt.flatten(enct5.param_specs(cfg))
  ours = {k: tuple(v.shape) for k, v in specs.items()}
  theirs = {k: v.shape for k, v in load_ckpt.flatten(params).items()}
  assert ours == theirs


def test_encoder_unpacked_matches_hf(golden):
  g, cfg, params = golden
  out = enct5.encode(params, cfg, g['inputs'])
  _assert_close(out, g['encoder_output'], g['inputs'] != 0, 'unpacked encoder output')


def test_encoder_packed_matches_hf_per_example(golden):
  g, cfg, params = golden
  out = enct5.encode(params, cfg, g['packed_inputs'], g['packed_segment_ids'])
  _assert_close(out, g['packed_encoder_output'], g['packed_segment_ids'] > 0,
                'packed encoder output')


def test_apply_packed_matches_hf_per_example(golden):
  g, cfg, params = golden
  batch = dict(inputs=g['packed_inputs'], inputs_segment_ids=g['packed_segment_ids'],
               inputs_positions=g['packed_positions'], targets=g['packed_targets'])
  assert (g['packed_slot_valid'] == (g['packed_targets'] > 0)).all()
  logits = enct5.apply(params, cfg, batch)
  _assert_close(logits, g['packed_logits'], g['packed_slot_valid'], 'packed EncT5 logits')
  jitted = jax.jit(enct5.apply, static_argnums=1)(params, cfg, batch)
  _assert_close(jitted, g['packed_logits'], g['packed_slot_valid'], 'jitted EncT5 logits')


def test_two_task_packed_matches_hf_per_example(golden):
  """Multi-task EncT5 (`EncT5Config.heads`): each slot reads with its own task's embedding and
  is projected by its own task's head, whatever the other slots of its row are."""
  g, cfg, params = golden
  with np.load(os.path.join(HERE, 'testdata', 'golden_two_task.npz')) as z:
    t = {k: z[k] for k in z.files}
  cfg = dataclasses.replace(cfg, heads=(enct5.Head('nli', 3), enct5.Head('score', 1)))
  shared = {k: v for k, v in params['decoder'].items()
            if k not in ('bos_embedding', 'class_projection')}
  heads = load_ckpt.unflatten({k[len('head/'):]: v for k, v in t.items()
                               if k.startswith('head/')})
  params = {**params, 'decoder': {**shared, 'heads': heads}}
  specs = enct5.param_specs(cfg)
  assert jax.tree.map(np.shape, params) == jax.tree.map(
      lambda spec: spec.shape, specs, is_leaf=lambda x: isinstance(x, enct5.ParamSpec))
  batch = dict(inputs=t['packed_inputs'], inputs_segment_ids=t['packed_segment_ids'],
               inputs_positions=t['packed_positions'], task_ids=t['packed_task_ids'])
  logits = jax.jit(enct5.apply, static_argnums=1)(params, cfg, batch)
  for task_id, name in enumerate(('nli', 'score')):
    mine = t['packed_slot_valid'] & (t['packed_task_ids'] == task_id)
    got, expected = logits[name], t[f'logits_{name}']
    if name == 'score':  # regression: one output a slot
      got, expected = got[..., None], expected[..., None]
    _assert_close(got, expected, mine, f'{name} logits')


# ------------------------------------------------------------------------------------------
# The real T5X checkpoint, read here with msgpack + numpy only (independent of load_ckpt.py).
# ------------------------------------------------------------------------------------------

def _read_legacy_t5x(path):
  """A legacy single-file T5X checkpoint: msgpack with ext type 1 = [shape, dtype, bytes]."""
  def ext_hook(code, data):
    if code in (1, 3):  # 3: a numpy scalar, same payload
      shape, dtype, buf = msgpack.unpackb(data)
      return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
    raise ValueError(f'{path}: unexpected msgpack ext type {code}')
  with open(path, 'rb') as f:
    data = f.read()
  return msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False), data


def test_encoder_on_real_t5x_checkpoint_matches_hf():
  if not os.path.exists(LEGACY_FIXTURE):
    pytest.skip(f'T5X legacy fixture not found at {LEGACY_FIXTURE} (set ENCT5_SHARED)')
  with np.load(os.path.join(HERE, 'testdata', 'golden_fixture_tiny.npz')) as z:
    g = {k: z[k] for k in z.files}
  tree, data = _read_legacy_t5x(LEGACY_FIXTURE)
  assert hashlib.sha256(data).hexdigest() == str(g['fixture_sha256']), (
      f'{LEGACY_FIXTURE} is not the file the golden was made from')
  target = load_ckpt.flatten(tree['optimizer']['target'])
  cfg = _config(json.loads(str(g['config_json'])), num_classes=2)
  params = load_ckpt.flatten(enct5.init_params(jax.random.PRNGKey(0), cfg))
  for path in params:  # every EncT5 parameter the checkpoint has; the new ones stay random
    if path in target:
      assert params[path].shape == target[path].shape, path
      params[path] = target[path]
  assert all(p in target for p in params if p.startswith(('token_embedder/', 'encoder/')))
  out = enct5.encode(load_ckpt.unflatten(params), cfg, g['inputs'])
  _assert_close(out, g['encoder_output'], g['inputs'] != 0, 'encoder output on T5X fixture')
