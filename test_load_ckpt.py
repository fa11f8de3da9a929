"""Tests of load_ckpt.py: T5X-written checkpoints read (../shared/fixtures/SOURCES.md), loaded
into each model, clear errors for damaged ones, and read in shards (written in shards by
save_ckpt.py and restored onto other meshes)."""
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.parse

import jax
import ml_dtypes
import msgpack
import numpy as np
import pytest

import adafactor
import enct5
import load_ckpt
import testutil
from load_ckpt import CheckpointError
from testutil import FIXTURES, REPO, config_of, fixture

TINY = 't5x_tiny_t5_1_1/checkpoint_0'  # emb 8, 4 heads x 3, ff 16, 2+2 layers, step 0
LEGACY = 't5x_tiny_t5_1_1_legacy.msgpack'  # the same values, one msgpack file
MINI = 't5x_mini_t5_1_1/checkpoint_3'  # emb 128, 2 heads x 64, ff 256, trained 3 steps
DENSE = 't5x_testdata_tiny_dense/checkpoint_1'  # T5X's test checkpoint: no .zarray, gfile


def writable_copy(tmp_path, name):
  """A copy of a (read-only) fixture that a test may damage."""
  dst = tmp_path / os.path.basename(name)
  shutil.copytree(fixture(name), dst)
  for directory, _, files in os.walk(dst):
    os.chmod(directory, 0o755)
    for f in files:
      os.chmod(os.path.join(directory, f), 0o644)
  return str(dst)


def edit_index(checkpoint_dir, edit):
  """Rewrites a checkpoint's msgpack index with edit(tree), inline arrays left as they are."""
  index = os.path.join(checkpoint_dir, 'checkpoint')
  with open(index, 'rb') as f:
    tree = msgpack.unpackb(f.read(), ext_hook=msgpack.ExtType, raw=False)
  edit(tree['optimizer'])
  with open(index, 'wb') as f:
    f.write(msgpack.packb(tree, use_bin_type=True))


# ----------------------------------------------------------------------- reading T5X's files

def test_tensorstore_checkpoint_equals_legacy_file():
  ts_tree = load_ckpt.flatten(load_ckpt.read_t5x(fixture(TINY)))
  legacy = load_ckpt.flatten(load_ckpt.read_t5x(fixture(LEGACY)))
  assert len(ts_tree) == 261  # 52 params, 4 Adafactor slots each, the step
  testutil.assert_trees_equal(ts_tree, legacy)
  assert ts_tree['target/decoder/logits_dense/kernel'].shape == (8, 32128)
  assert ts_tree['state/step'].dtype == np.int32 and ts_tree['state/step'] == 0


def test_mini_checkpoint_trained_by_t5x():
  tree = load_ckpt.read_t5x(fixture(MINI))
  assert tree['state']['step'].dtype == np.int32 and tree['state']['step'] == 3
  target, states = load_ckpt.flatten(tree['target']), tree['state']['param_states']
  scales = [x for name, x in target.items() if name.endswith('/scale')]
  assert len(scales) == 12 and not any(np.any(s == 1.0) for s in scales)  # trained norms
  # Factored moments (stored inline in the index): v_row is indexed by the smaller dim.
  for name, v_row, v_col in [('token_embedder/embedding', 128, 32128),
                             ('decoder/logits_dense/kernel', 128, 32128),
                             ('encoder/layers_0/mlp/wo/kernel', 128, 256),  # [F, D]: dim 1
                             ('encoder/layers_1/mlp/wi_0/kernel', 128, 256),
                             ('encoder/layers_0/attention/query/kernel', 128, 128)]:
    slots = load_ckpt.flatten(states)
    assert slots[f'{name}/v_row'].shape == (v_row,) and slots[f'{name}/v_col'].shape == (v_col,)
    assert slots[f'{name}/v'].shape == (1,) and slots[f'{name}/m'].shape == (1,)
    assert np.all(slots[f'{name}/v_row'] > 0)
  norm = states['encoder']['encoder_norm']['scale']
  assert norm['v'].shape == (128,) and norm['v_row'].shape == (1,) and np.all(norm['v'] > 0)
  assert states['encoder']['relpos_bias']['rel_embedding']['v'].shape == (2, 32)


def test_t5x_test_checkpoint_without_zarray_and_with_gfile():
  path = fixture(DENSE)
  assert not any(os.path.exists(os.path.join(path, d, '.zarray')) for d in os.listdir(path)
                 if d != 'checkpoint')
  with open(os.path.join(path, 'checkpoint'), 'rb') as f:
    raw = msgpack.unpackb(f.read(), ext_hook=msgpack.ExtType, raw=False)
  assert raw['optimizer']['state']['param_states']['bias']['kvstore']['driver'] == 'gfile'
  assert raw['optimizer']['state']['step'].code == 3  # a numpy scalar

  tree = load_ckpt.read_t5x(path)
  assert tree['target'] == {}
  assert tree['state']['step'].dtype == np.int32 and tree['state']['step'] == 1
  states = tree['state']['param_states']
  np.testing.assert_array_equal(states['bias'], np.ones(5, np.float32))
  assert states['bias'].dtype == np.float32
  assert states['kernel'].dtype == np.float64 and states['kernel'].shape == (10, 5)
  assert np.all((states['kernel'] > 0) & (states['kernel'] < 1))
  assert states['step'].dtype == np.int32 and states['step'].shape == () and states['step'] == 1


def test_single_file_msgpack_with_bfloat16_scalars_and_flax_chunked_arrays(tmp_path):
  def ext(code, x):
    x = np.asarray(x)
    return msgpack.ExtType(code, msgpack.packb([list(x.shape), x.dtype.name, x.tobytes()]))
  big = np.arange(10, dtype=np.float32).reshape(2, 5)
  tree = {'version': 3, 'optimizer': {
      'target': {'w': ext(1, np.array([1.5, -2.0], ml_dtypes.bfloat16)),
                 # flax `_chunk`: arrays over its MAX_CHUNK_SIZE become flat pieces.
                 'big': {'__msgpack_chunked_array__': True, 'shape': {'0': 2, '1': 5},
                         'chunks': {'0': ext(1, big.ravel()[:7]), '1': ext(1, big.ravel()[7:])}}},
      'state': {'step': ext(3, np.int32(7)), 'param_states': {}}}}
  path = tmp_path / 'legacy.msgpack'
  path.write_bytes(msgpack.packb(tree, use_bin_type=True))
  got = load_ckpt.read_t5x(str(path))
  assert got['target']['w'].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got['target']['w'].astype(np.float32), [1.5, -2.0])
  np.testing.assert_array_equal(got['target']['big'], big)
  assert got['state']['step'] == 7 and got['state']['step'].dtype == np.int32


@pytest.mark.parametrize('spec, directory, kvstore', [
    # As T5X writes locally: path relative, in the kvstore.
    ({'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': 'target.a.kernel/'}},
     '/ckpt/checkpoint_3', {'driver': 'file', 'path': '/ckpt/checkpoint_3/target.a.kernel/'}),
    # T5X inside Google: gfile is a local file for us.
    ({'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'state.param_states.bias/'}},
     '/ckpt/checkpoint_1',
     {'driver': 'file', 'path': '/ckpt/checkpoint_1/state.param_states.bias/'}),
    # As T5X writes to GCS: placeholder bucket, path at the top level (older spec format).
    ({'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 't5x-dummy-bucket'},
      'path': 'target.token_embedder.embedding'},
     'gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000',
     {'driver': 'gcs', 'bucket': 't5-data', 'path': 'pretrained_models/t5x/t5_1_1_small/'
      'checkpoint_1000000/target.token_embedder.embedding/'}),
    # A local checkpoint read from a bucket, and a bucket's checkpoint copied to disk.
    ({'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': 'target.x/'}},
     'gs://bucket/run/checkpoint_5', {'driver': 'gcs', 'bucket': 'bucket',
                                      'path': 'run/checkpoint_5/target.x/'}),
    ({'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 't5x-dummy-bucket',
                                    'path': 'target.x'}},
     '/local/checkpoint_5', {'driver': 'file', 'path': '/local/checkpoint_5/target.x/'}),
])
def test_spec_paths_are_joined_to_the_checkpoint_directory(spec, directory, kvstore):
  spec = dict(spec, dtype='float32', metadata={'shape': [2], 'chunks': [2]})
  out = load_ckpt.absolute_spec(spec, directory)
  assert out['kvstore'] == kvstore and 'path' not in out
  assert out['dtype'] == 'float32' and out['metadata'] == spec['metadata']


class _FakeGcs(http.server.BaseHTTPRequestHandler):
  """The one GCS JSON API call TensorStore's reads make: GET /storage/v1/b/<bucket>/o/<object>
  ?alt=media. Serves <root>/<bucket>/<object>; records every object asked for."""
  root, requested = None, []

  def do_GET(self):
    parts = urllib.parse.urlparse(self.path).path.split('/')  # '', storage, v1, b, B, o, O
    name = urllib.parse.unquote('/'.join(parts[6:]))
    self.requested.append(name)
    path = os.path.join(self.root, parts[4], name)
    data = open(path, 'rb').read() if parts[1:4] == ['storage', 'v1', 'b'] and \
        os.path.isfile(path) else None
    self.send_response(404 if data is None else 200)
    self.send_header('Content-Length', str(len(data or b'')))
    self.end_headers()
    self.wfile.write(data or b'')

  def log_message(self, *args):
    pass


_GS_CLIENT = textwrap.dedent('''
    import json, sys, jax, numpy as np, enct5, load_ckpt
    what, gs, local = sys.argv[1:4]
    def same(a, b):
      a, b = load_ckpt.flatten(a), load_ckpt.flatten(b)
      return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                          for k in a)
    if what == 'enct5':
      cfg = enct5.get_config('tiny', **load_ckpt.config_from_checkpoint(gs))
      ok = same(load_ckpt.load_params(gs, cfg, jax.random.PRNGKey(0)),
                load_ckpt.load_params(local, cfg, jax.random.PRNGKey(0)))
    else:
      ok = same(load_ckpt.read_t5x(gs), load_ckpt.read_t5x(local))
    print(json.dumps(ok))
''')


def test_gs_paths_through_tensorstore_gcs_kvstore():
  """gs://bucket/... read by TensorStore's own gcs driver from a local fake GCS server
  (TENSORSTORE_GCS_HTTP_URL; a subprocess, so the variable is seen at first use)."""
  fixture(TINY), fixture(LEGACY)
  _FakeGcs.root, _FakeGcs.requested = os.path.dirname(FIXTURES), []
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _FakeGcs)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  env = dict(os.environ, PYTHONPATH=REPO,
             TENSORSTORE_GCS_HTTP_URL=f'http://127.0.0.1:{server.server_address[1]}')
  bucket = 'gs://' + os.path.basename(FIXTURES)  # the fixtures directory plays the bucket

  def run(what, name):
    out = subprocess.run([sys.executable, '-c', _GS_CLIENT, what, f'{bucket}/{name}',
                          fixture(TINY)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
  try:
    assert run('enct5', TINY)
    requested_by_enct5 = list(_FakeGcs.requested)
    assert run('all', TINY) and run('all', LEGACY)
  finally:
    server.shutdown()
  # EncT5 asks for the encoder but never for the vocabulary projection or other decoder blocks.
  arrays = {name.split('/')[-2] for name in requested_by_enct5 if name.count('/') >= 3}
  assert 'target.encoder.layers_1.mlp.wo.kernel' in arrays
  assert not any('logits_dense' in a or 'self_attention' in a or 'decoder.layers_1' in a
                 for a in arrays), arrays


def test_unknown_kvstore_driver_is_an_error():
  with pytest.raises(CheckpointError, match='kvstore driver'):
    load_ckpt.absolute_spec({'driver': 'zarr', 'kvstore': {'driver': 's3', 'path': 'x/'}}, '/c')


def test_only_selected_leaves_are_read(tmp_path):
  path = writable_copy(tmp_path, TINY)
  # Remove what EncT5 never needs: a full read now fails, the selected ones do not.
  for name in os.listdir(path):
    if name.startswith(('target.decoder.logits_dense', 'target.decoder.layers_1')):
      shutil.rmtree(os.path.join(path, name))
  with pytest.raises(CheckpointError, match='logits_dense|layers_1'):
    load_ckpt.read_t5x(path)
  tree = load_ckpt.read_t5x(path, ['target/encoder', 'state/step'])
  assert sorted(tree) == ['state', 'target'] and sorted(tree['target']) == ['encoder']
  reference = load_ckpt.read_t5x(fixture(TINY), ['target/encoder', 'state/step'])
  testutil.assert_trees_equal(tree, reference)
  with pytest.raises(CheckpointError, match='target/nope'):
    load_ckpt.read_t5x(path, ['target/nope'])
  load_ckpt.load_params(path, config_of(path), jax.random.PRNGKey(0))  # never reads them


def test_config_from_checkpoint():
  assert load_ckpt.config_from_checkpoint(fixture(MINI)) == dict(
      vocab_size=32128, d_model=128, num_heads=2, head_dim=64, d_ff=256, num_layers=2,
      num_decoder_layers=2)
  tiny = dict(vocab_size=32128, d_model=8, num_heads=4, head_dim=3, d_ff=16, num_layers=2,
              num_decoder_layers=2)
  assert load_ckpt.config_from_checkpoint(fixture(TINY)) == tiny
  assert load_ckpt.config_from_checkpoint(fixture(LEGACY)) == tiny
  with pytest.raises(CheckpointError, match='not a T5.1.1 checkpoint'):
    load_ckpt.config_from_checkpoint(fixture(DENSE))


# -------------------------------------------------------------------- T5.1.1 -> EncT5 (§4.2)

@pytest.fixture(scope='module')
def mini_loaded():
  path = fixture(MINI)
  cfg = config_of(path, num_classes=3)
  params, opt_state = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(7),
                                            with_optimizer_state=True)
  return path, cfg, params, opt_state


def test_enct5_params_from_trained_checkpoint(mini_loaded):
  path, cfg, params, _ = mini_loaded
  raw = load_ckpt.flatten(load_ckpt.read_t5x(path)['target'])
  flat = load_ckpt.flatten(params)
  specs = load_ckpt.flatten(enct5.param_specs(cfg))
  assert sorted(flat) == sorted(specs)
  for name, x in flat.items():
    assert x.dtype == np.float32 and x.shape == specs[name].shape, name
    if name not in load_ckpt.FRESH_PARAMS:
      np.testing.assert_array_equal(x, raw[name], err_msg=name)
  fresh = load_ckpt.flatten(jax.jit(enct5.init_params, static_argnums=1)(jax.random.PRNGKey(7),
                                                                         cfg))
  for name in load_ckpt.FRESH_PARAMS:
    np.testing.assert_array_equal(flat[name], fresh[name], err_msg=name)
  assert flat['decoder/class_projection/kernel'].shape == (128, 4)  # n + 1 outputs
  assert not any('self_attention' in n or 'logits_dense' in n or 'layers_1' in n.split('/')[1]
                 for n in flat if n.startswith('decoder/'))


def test_enct5_optimizer_state_from_trained_checkpoint(mini_loaded):
  path, cfg, params, opt_state = mini_loaded
  raw = load_ckpt.flatten(load_ckpt.read_t5x(path)['state'])
  assert opt_state['step'] == 3 and opt_state['step'].dtype == np.int32
  # Same layout as adafactor.py's state.
  reference = adafactor.init(params)
  assert (jax.tree.structure(reference) == jax.tree.structure(opt_state))
  assert jax.tree.map(np.shape, reference) == jax.tree.map(np.shape, opt_state)
  states = opt_state['param_states']
  embedding = states['token_embedder']['embedding']
  assert embedding['v_row'].shape == (128,) and embedding['v_col'].shape == (32128,)
  wo = states['decoder']['layers_0']['mlp']['wo']['kernel']
  assert wo['v_row'].shape == (128,) and wo['v_col'].shape == (256,)
  for name, x in load_ckpt.flatten(states).items():
    if name.startswith(('decoder/bos_embedding', 'decoder/class_projection')):
      assert not np.any(x), name  # fresh parameters: fresh state
    else:
      np.testing.assert_array_equal(x, raw[f'param_states/{name}'], err_msg=name)


def test_loaded_adafactor_state_and_step_reach_the_optimizer(mini_loaded):
  """One update from the loaded state decays v_row with rho(step 3), not from scratch."""
  _, _, params, opt_state = mini_loaded
  name = ('encoder', 'layers_0', 'attention', 'query', 'kernel')
  pick = lambda tree: tree[name[0]][name[1]][name[2]][name[3]][name[4]]
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.01, np.float32), params)
  _, new_state = jax.jit(adafactor.update)(grads, opt_state, params, 1e-3)
  assert int(new_state['step']) == 4
  rho = 1.0 - 4.0 ** -0.8  # T5X: 1 - (step + 1)^-0.8 with the loaded step 3
  old = pick(opt_state['param_states'])['v_row']
  expected = rho * old + (1 - rho) * (0.01 ** 2 + 1e-30)
  np.testing.assert_allclose(pick(new_state['param_states'])['v_row'], expected, rtol=1e-5)


@pytest.mark.parametrize('model, decoder_layers', [('t5', 2), ('1dect5', 1)])
def test_baseline_params_from_trained_checkpoint(model, decoder_layers):
  """T5 and 1decT5 (paper §4.3) read their whole tree, with its Adafactor state, as T5X wrote it;
  1decT5 keeps decoder layer 0 with its self-attention, the relpos table, norm and logits."""
  path = fixture(MINI)
  cfg = config_of(path)
  params, opt_state = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), model=model,
                                            with_optimizer_state=True)
  raw = load_ckpt.read_t5x(path)
  flat, raw_params = load_ckpt.flatten(params), load_ckpt.flatten(raw['target'])
  assert sorted(flat) == sorted(load_ckpt.flatten(enct5.param_specs(cfg, model)))
  for name, x in flat.items():
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, raw_params[name], err_msg=name)
  assert {n.split('/')[1] for n in flat if n.startswith('decoder/layers_')} == {
      f'layers_{i}' for i in range(decoder_layers)}
  for name in ('decoder/layers_0/self_attention/query/kernel', 'decoder/logits_dense/kernel',
               'decoder/relpos_bias/rel_embedding', 'decoder/decoder_norm/scale'):
    assert name in flat, name
  assert int(opt_state['step']) == 3
  reference = adafactor.init(params)
  assert jax.tree.map(np.shape, reference) == jax.tree.map(np.shape, opt_state)
  raw_states = load_ckpt.flatten(raw['state']['param_states'])
  for name, x in load_ckpt.flatten(opt_state['param_states']).items():
    np.testing.assert_array_equal(x, raw_states[name], err_msg=name)


def test_1dect5_never_reads_later_decoder_layers(tmp_path):
  path = writable_copy(tmp_path, TINY)
  for name in os.listdir(path):
    if name.startswith('target.decoder.layers_1'):
      shutil.rmtree(os.path.join(path, name))
  cfg = config_of(path)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), model='1dect5')
  assert 'layers_1' not in params['decoder'] and 'logits_dense' in params['decoder']
  with pytest.raises(CheckpointError, match='layers_1'):
    load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), model='t5')


def test_encode_matches_golden_values_from_the_tensorstore_checkpoint():
  """Golden encoder outputs of Hugging Face T5 (tools/make_golden.py) for the tiny fixture."""
  golden_path = os.path.join(REPO, 'testdata', 'golden_fixture_tiny.npz')
  if not os.path.exists(golden_path):
    pytest.skip(f'golden values not found at {golden_path}')
  golden = np.load(golden_path)
  path = fixture(TINY)
  cfg = config_of(path, dropout_rate=0.0)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0))
  inputs = golden['inputs']
  encoded = np.asarray(jax.jit(enct5.encode, static_argnums=1)(params, cfg, inputs))
  real = inputs != 0
  np.testing.assert_allclose(encoded[real], golden['encoder_output'][real], atol=2e-5, rtol=1e-4)


# -------------------------------------------------------------------------- clear errors

def test_truncated_chunk(tmp_path):
  path = writable_copy(tmp_path, TINY)
  chunk = os.path.join(path, 'target.encoder.layers_0.mlp.wi_0.kernel', '0.0')
  with open(chunk, 'r+b') as f:
    f.truncate(os.path.getsize(chunk) // 2)
  pattern = r"'target/encoder/layers_0/mlp/wi_0/kernel'.*wi_0\.kernel/0\.0"
  with pytest.raises(CheckpointError, match=pattern):
    load_ckpt.read_t5x(path)
  with pytest.raises(CheckpointError, match=pattern):
    load_ckpt.load_params(path, config_of(path), jax.random.PRNGKey(0))


def test_missing_array_directory(tmp_path):
  path = writable_copy(tmp_path, TINY)
  shutil.rmtree(os.path.join(path, 'target.encoder.layers_1.attention.out.kernel'))
  with pytest.raises(CheckpointError, match="'target/encoder/layers_1/attention/out/kernel'.*"
                     'missing'):
    load_ckpt.load_params(path, config_of(path), jax.random.PRNGKey(0))


def test_wrong_shape_in_the_index(tmp_path):
  path = writable_copy(tmp_path, TINY)
  cfg = config_of(path)

  def widen(tree):
    tree['target']['encoder']['layers_1']['mlp']['wi_1']['kernel']['metadata']['shape'] = [8, 17]
  edit_index(path, widen)
  with pytest.raises(CheckpointError, match=r"'target/encoder/layers_1/mlp/wi_1/kernel' has "
                     r'shape \(8, 17\) in the checkpoint, expected \(8, 16\)'):
    load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0))
  with pytest.raises(CheckpointError, match=r"'target/encoder/layers_1/mlp/wi_1/kernel'.*does "
                     'not match the checkpoint index'):
    load_ckpt.read_t5x(path)  # the .zarray says (8, 16)


def test_parameter_missing_from_the_index(tmp_path):
  path = writable_copy(tmp_path, TINY)
  edit_index(path, lambda tree: tree['target']['encoder']['layers_1']['mlp'].pop('wo'))
  with pytest.raises(CheckpointError, match="'target/encoder/layers_1/mlp/wo/kernel' is missing"):
    load_ckpt.load_params(path, config_of(path), jax.random.PRNGKey(0))


@pytest.mark.parametrize('overrides, message', [
    (dict(num_layers=3), r'num_layers 3 \(config\) vs 2 \(checkpoint\)'),
    (dict(num_heads=2, head_dim=6), r'num_heads 2 \(config\) vs 4.*head_dim 6 \(config\) vs 3'),
    (dict(d_model=16), r'd_model 16 \(config\) vs 8'),
    (dict(d_ff=32), r'd_ff 32 \(config\) vs 16'),
    (dict(vocab_size=32000), r'vocab_size 32000 \(config\) vs 32128'),
])
def test_config_that_does_not_match(overrides, message):
  path = fixture(TINY)
  with pytest.raises(CheckpointError, match=message):
    load_ckpt.load_params(path, config_of(path, **overrides), jax.random.PRNGKey(0))


def test_unreadable_index_and_missing_checkpoint(tmp_path):
  path = writable_copy(tmp_path, TINY)
  index = os.path.join(path, 'checkpoint')
  with open(index, 'r+b') as f:
    f.truncate(1000)
  with pytest.raises(CheckpointError, match='cannot decode the msgpack index .*checkpoint'):
    load_ckpt.read_t5x(path)
  with pytest.raises(CheckpointError, match='no T5X checkpoint at'):
    load_ckpt.read_t5x(str(tmp_path / 'nothing_here'))


# ----------------------------------------------------------------------- sharded reading

_SHARDED_WORKER = textwrap.dedent('''
    import json, os, sys
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax, numpy as np
    if num_processes > 1:
      jax.distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
    import enct5, load_ckpt, partitioning, save_ckpt

    elements_read = {}  # name -> elements this process read through TensorStore
    original_result = load_ckpt._result
    def counting_result(future, name, spec):
      out = original_result(future, name, spec)
      elements_read[name] = elements_read.get(name, 0) + np.size(out)
      return out
    load_ckpt._result = counting_result

    path = sys.argv[4]
    cfg = enct5.get_config('tiny', **load_ckpt.config_from_checkpoint(path))
    mesh = partitioning.make_mesh('1x%d' % jax.device_count())  # 'model' spans every process
    shardings = partitioning.Shardings(enct5.param_specs(cfg), mesh)
    params, opt_state = load_ckpt.load_params(
        path, cfg, jax.random.PRNGKey(0), with_optimizer_state=True,
        shardings=shardings.params, opt_shardings=shardings.opt_state)
    ok = all(x.sharding == s for x, s in zip(jax.tree.leaves(params),
                                             jax.tree.leaves(shardings.params)))
    ok &= all(x.sharding == s for x, s in zip(jax.tree.leaves(opt_state),
                                              jax.tree.leaves(shardings.opt_state)))
    embedding_read = elements_read['target/token_embedder/embedding']
    # Every addressable shard holds the checkpoint's values at its index.
    raw = load_ckpt.flatten(load_ckpt.read_t5x(path, ['target', 'state']))
    flat = {'target/' + k: v for k, v in load_ckpt.flatten(params).items()}
    flat.update({'state/' + k: v for k, v in load_ckpt.flatten(opt_state).items()})
    for name, x in flat.items():
      if name in raw:
        for shard in x.addressable_shards:
          ok &= bool(np.array_equal(np.asarray(shard.data), raw[name][shard.index]))
    default = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0),
                                    with_optimizer_state=True, shardings=shardings.params)
    v_row = default[1]['param_states']['token_embedder']['embedding']['v_row']

    # Save: every process writes its own slices; only inline vectors are gathered.
    written, gathered_ndims = {}, []
    original_own_slices, original_host = save_ckpt._own_slices, save_ckpt._host
    def counting_own_slices(x):
      out = original_own_slices(x)
      written[x.shape] = written.get(x.shape, 0) + sum(np.size(part) for _, part in out)
      return out
    def recording_host(x):
      if isinstance(x, jax.Array) and not x.is_fully_replicated:
        gathered_ndims.append(x.ndim)
      return original_host(x)
    save_ckpt._own_slices, save_ckpt._host = counting_own_slices, recording_host
    save_ckpt.save_checkpoint(sys.argv[5], 3, params, opt_state)

    # Restored on the same mesh: the same shards, bit for bit.
    restored = load_ckpt.restore_checkpoint(sys.argv[5], shardings=shardings.params,
                                            opt_shardings=shardings.opt_state)
    ok &= jax.tree.structure((params, opt_state)) == jax.tree.structure(restored)
    for x, y in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves(restored)):
      ok &= x.sharding == y.sharding and x.dtype == y.dtype
      for a, b in zip(x.addressable_shards, y.addressable_shards):
        ok &= a.index == b.index and np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes()
    # Restored onto another mesh (2 x half the devices): each shard as the saved array's slice.
    other = partitioning.Shardings(enct5.param_specs(cfg),
                                   partitioning.make_mesh('2x%d' % (jax.device_count() // 2)))
    moved = load_ckpt.restore_checkpoint(sys.argv[5], shardings=other.params,
                                         opt_shardings=other.opt_state)
    saved = load_ckpt.flatten(load_ckpt.read_t5x(load_ckpt.latest_checkpoint(sys.argv[5])))
    flat = {'target/' + k: v for k, v in load_ckpt.flatten(moved[0]).items()}
    flat.update({'state/' + k: v for k, v in load_ckpt.flatten(moved[1]).items()})
    ok &= sorted(flat) == sorted(saved)
    for name, x in flat.items():
      for shard in x.addressable_shards:
        ok &= np.asarray(shard.data).tobytes() == saved[name][shard.index].tobytes()
    print(json.dumps({'ok': ok, 'devices': jax.device_count(),
                      'embedding_read': embedding_read,
                      'embedding_written': written[(32128, 128)],
                      'gathered_ndims': sorted(set(gathered_ndims)),
                      'embedding_spec': str(shardings.params['token_embedder']['embedding'].spec),
                      'default_v_row_replicated': v_row.sharding.is_fully_replicated}))
''')


@pytest.mark.parametrize('num_processes', [2])
def test_sharded_load_reads_only_each_process_slices(tmp_path, num_processes):
  """4 CPU devices per process; with 2 processes 'model' spans both, so each reads half the
  vocabulary rows of the embedding (T5X's rules shard 'vocab' on 'model'). Then every process
  saves its own half (nothing but inline vectors gathered); restores on the same mesh and on
  another one give the saved values, and one process reads the checkpoint back bit for bit."""
  path = fixture(MINI)
  script = tmp_path / 'worker.py'
  script.write_text(_SHARDED_WORKER)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = REPO
  port = testutil.free_port()
  outputs = testutil.run_processes(
      [[sys.executable, str(script), str(i), str(num_processes), str(port), path,
        str(tmp_path / 'run')] for i in range(num_processes)], env, timeout=180)
  for out in outputs:
    result = json.loads(out.strip().splitlines()[-1])
    assert result['ok'] and result['devices'] == 4 * num_processes
    assert result['embedding_spec'] == "P('model', None)"
    assert result['embedding_read'] == 32128 * 128 // num_processes
    assert result['embedding_written'] == 32128 * 128 // num_processes
    assert result['gathered_ndims'] in ([], [1])  # factored v_row / v_col only
    assert result['default_v_row_replicated']
  cfg = enct5.get_config('tiny', **load_ckpt.config_from_checkpoint(path))
  expected = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), with_optimizer_state=True)
  params, opt_state = load_ckpt.restore_checkpoint(str(tmp_path / 'run'))
  testutil.assert_trees_equal({'target': params, 'state': opt_state},
                     {'target': expected[0], 'state': expected[1]})
