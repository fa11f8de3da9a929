"""Tests of hf_ckpt.py: Hugging Face checkpoints of the T5.1.1 family (T5.1.1, mT5, ByT5), their
names, layouts and configs, against transformers' own values, and fine-tuned from by train.py.

Fixtures: ../shared/fixtures/hf_* (transformers' own `save_pretrained`; SOURCES.md there).
Golden values: testdata/golden_hf_*.npz, from transformers in float64 (tools/make_hf_golden.py).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import enct5
import hf_ckpt
import load_ckpt
import t5
import vocabularies
from testutil import FIXTURES, REPO, config_of, fixture

FAMILIES = ('hf_t5_v1_1_tiny', 'hf_mt5_tiny', 'hf_byt5_tiny')  # T5.1.1, mT5, ByT5


def golden(name):
  data = dict(np.load(os.path.join(REPO, 'testdata', f'golden_{name}.npz')))
  with open(os.path.join(fixture(name), hf_ckpt.WEIGHTS_FILE), 'rb') as f:
    assert hashlib.sha256(f.read()).hexdigest() == str(data['sha256']), (
        f'{name} is not the fixture the golden values were made from: '
        'rerun tools/make_hf_golden.py')
  return data


def hf_copy(tmp_path, name, **config_changes):
  """A copy of a fixture whose config.json is changed (None deletes a key)."""
  dst = tmp_path / name
  shutil.copytree(fixture(name), dst)
  os.chmod(dst, 0o755)
  for f in os.listdir(dst):
    os.chmod(dst / f, 0o644)
  config = json.loads((dst / hf_ckpt.CONFIG_FILE).read_text())
  for key, value in config_changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  (dst / hf_ckpt.CONFIG_FILE).write_text(json.dumps(config))
  return str(dst)


# ------------------------------------------------------------------------------- the name map

def test_name_map_covers_every_parameter_both_ways():
  cfg = enct5.get_config('byt5-tiny')
  names = set(load_ckpt.flatten(enct5.param_specs(cfg, 't5')))
  for name in names:
    assert hf_ckpt.t5x_name(hf_ckpt.hf_name(name)) == name
  assert hf_ckpt.hf_name('encoder/layers_2/attention/value/kernel') == (
      'encoder.block.2.layer.0.SelfAttention.v.weight')
  assert hf_ckpt.hf_name('decoder/layers_0/mlp/wo/kernel') == (
      'decoder.block.0.layer.2.DenseReluDense.wo.weight')
  assert hf_ckpt.t5x_name('lm_head.weight') == 'decoder/logits_dense/kernel'
  assert hf_ckpt.t5x_name('encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight') \
      is None  # HF keeps the table in block 0 only
  # EncT5's own parameters have no HF counterpart.
  for name in load_ckpt.FRESH_PARAMS:
    assert hf_ckpt.hf_name(name) is None


@pytest.mark.parametrize('name', FAMILIES)
def test_config_from_checkpoint_reads_config_json_geometry(name):
  path = fixture(name)
  config = json.loads(open(os.path.join(path, hf_ckpt.CONFIG_FILE)).read())
  assert load_ckpt.config_from_checkpoint(path) == dict(
      vocab_size=config['vocab_size'], d_model=config['d_model'], num_heads=config['num_heads'],
      head_dim=config['d_kv'], d_ff=config['d_ff'], num_layers=config['num_layers'],
      num_decoder_layers=config['num_decoder_layers'])


def test_lazy_tensor_slices_in_t5x_layout():
  leaf = load_ckpt.flatten(hf_ckpt.read_index(fixture('hf_byt5_tiny')))[
      'target/encoder/layers_1/mlp/wo/kernel']
  assert leaf.shape == (96, 48)  # HF stores [48, 96]
  full = np.asarray(leaf)
  np.testing.assert_array_equal(leaf[10:20, 5:7], full[10:20, 5:7])
  np.testing.assert_array_equal(leaf[3], full[3])


# ------------------------------------------------------------------- against transformers

@pytest.mark.parametrize('name', FAMILIES)
def test_encode_matches_hugging_face(name):
  path, data = fixture(name), golden(name)
  cfg = config_of(path)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0))
  encoded = np.asarray(enct5.encode(params, cfg, data['inputs']))
  real = data['inputs'] > 0
  np.testing.assert_allclose(encoded[real], data['encoded'][real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', FAMILIES)
def test_t5_teacher_forced_logits_match_hugging_face(name):
  path, data = fixture(name), golden(name)
  cfg = config_of(path)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), model='t5')
  batch = {key: data[key] for key in ('inputs', 'decoder_input_tokens', 'decoder_target_tokens')}
  logits = np.asarray(t5.apply(params, cfg, batch), np.float64)
  real = data['decoder_target_tokens'] > 0
  np.testing.assert_allclose(logits[..., data['logits_ids']][real], data['logits'][real],
                             rtol=1e-5, atol=1e-5)
  logsumexp = np.asarray(jax.scipy.special.logsumexp(logits, axis=-1))
  np.testing.assert_allclose(logsumexp[real], data['logsumexp'][real], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- checkpoint layouts

def test_sharded_copy_equals_single_file():
  single = load_ckpt.flatten(load_ckpt.read_t5x(fixture('hf_t5_v1_1_tiny')))
  sharded = load_ckpt.flatten(load_ckpt.read_t5x(fixture('hf_t5_v1_1_tiny_sharded')))
  assert sorted(single) == sorted(sharded) and len(single) == 52
  for name in single:
    np.testing.assert_array_equal(single[name], sharded[name])


def test_encoder_only_needs_an_explicit_fresh_pooling_block():
  path = fixture('hf_t5_v1_1_tiny_encoder_only')
  cfg = config_of(path)
  with pytest.raises(load_ckpt.CheckpointError,
                     match=r'encoder-only.*decoder/layers_0/encoder_decoder_attention/query/'
                           r'kernel.*fresh_pooling_block'):
    load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0))
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), fresh_pooling_block=True)
  full = load_ckpt.load_params(fixture('hf_t5_v1_1_tiny'), cfg, jax.random.PRNGKey(0))
  fresh = enct5.init_params(jax.random.PRNGKey(0), cfg)
  jax.tree.map(np.testing.assert_array_equal, params['encoder'], full['encoder'])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), params['decoder'],
               fresh['decoder'])  # init under jit: float32 rounding may differ
  with pytest.raises(load_ckpt.CheckpointError, match='decoder'):  # T5 needs its decoder
    load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), model='t5')


@pytest.mark.parametrize('changes, message', [
    (dict(tie_word_embeddings=True), 'tie_word_embeddings=True.*original T5'),
    (dict(tie_word_embeddings=None), 'tie_word_embeddings=True'),  # HF's default is to tie
    (dict(feed_forward_proj='relu'), "feed_forward_proj='relu'"),
    (dict(model_type='umt5'), "model_type='umt5'"),
])
def test_configs_that_are_not_t5_1_1_are_rejected(tmp_path, changes, message):
  path = hf_copy(tmp_path, 'hf_t5_v1_1_tiny', **changes)
  with pytest.raises(hf_ckpt.HFCheckpointError, match=message):
    load_ckpt.config_from_checkpoint(path)


def test_enct5_reads_only_the_tensors_it_needs(monkeypatch):
  """EncT5 never reads lm_head nor the decoder's self-attention; the bytes it saves."""
  path = fixture('hf_t5_v1_1_tiny')
  read = []
  original = hf_ckpt.LazyTensor.__getitem__
  monkeypatch.setattr(hf_ckpt.LazyTensor, '__getitem__',
                      lambda self, index: read.append(self.hf_name) or original(self, index))
  load_ckpt.load_params(path, config_of(path), jax.random.PRNGKey(0))
  assert 'lm_head.weight' not in read and 'shared.weight' in read
  assert not [name for name in read if 'decoder.block.0.layer.0.' in name]  # self-attention
  assert not [name for name in read if 'decoder.block.1.' in name]
  index = hf_ckpt.read_index(path)
  nbytes = {leaf.hf_name: 4 * np.prod(leaf.shape)
            for leaf in load_ckpt.flatten(index).values()}
  file_bytes = os.path.getsize(os.path.join(path, hf_ckpt.WEIGHTS_FILE))
  saved = file_bytes - sum(nbytes[name] for name in set(read))
  # The tiny T5.1.1 (d_model 32, vocab 32128): 4,192,872 of 8,429,672 bytes never read.
  assert saved > nbytes['lm_head.weight'] and saved / file_bytes > 0.49, (saved, file_bytes)


def test_t5x_checkpoint_and_its_hf_copy_give_the_same_params(tmp_path):
  """A round trip: the T5X fixture written in HF's layout (names from NAME_MAP, matrices
  transposed) loads into the same parameters, for EncT5 and T5."""
  t5x_path = os.path.join(FIXTURES, 't5x_mini_t5_1_1', 'checkpoint_3')
  if not os.path.exists(t5x_path):
    pytest.skip(f'fixture not found at {t5x_path}')
  shape = load_ckpt.config_from_checkpoint(t5x_path)
  target = load_ckpt.flatten(load_ckpt.read_t5x(t5x_path, ['target'])['target'])
  tensors = {hf_ckpt.hf_name(name): np.ascontiguousarray(x.T if hf_ckpt.is_transposed(name)
                                                          else x)
             for name, x in target.items()}
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  save_file(tensors, str(hf_dir / hf_ckpt.WEIGHTS_FILE), metadata={'format': 'pt'})
  (hf_dir / hf_ckpt.CONFIG_FILE).write_text(json.dumps(dict(
      model_type='t5', feed_forward_proj='gated-gelu', tie_word_embeddings=False,
      vocab_size=shape['vocab_size'], d_model=shape['d_model'], num_heads=shape['num_heads'],
      d_kv=shape['head_dim'], d_ff=shape['d_ff'], num_layers=shape['num_layers'],
      num_decoder_layers=shape['num_decoder_layers'])))
  assert load_ckpt.config_from_checkpoint(str(hf_dir)) == shape
  cfg = enct5.get_config('tiny', **shape)
  for model in ('enct5', 't5'):
    ours = load_ckpt.load_params(t5x_path, cfg, jax.random.PRNGKey(1), model=model)
    theirs = load_ckpt.load_params(str(hf_dir), cfg, jax.random.PRNGKey(1), model=model)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


_SHARDED_WORKER = textwrap.dedent('''
    import json, os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax, numpy as np
    import enct5, load_ckpt, partitioning
    path = sys.argv[1]
    cfg = enct5.get_config('tiny', **load_ckpt.config_from_checkpoint(path))
    shardings = partitioning.Shardings(enct5.param_specs(cfg), partitioning.make_mesh('1x4'))
    params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0), shardings=shardings.params)
    whole = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(0))
    ok = all(x.sharding == s for x, s in zip(jax.tree.leaves(params),
                                             jax.tree.leaves(shardings.params)))
    ok &= all(np.array_equal(np.asarray(x), y)
              for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(whole)))
    embedding = params['token_embedder']['embedding']
    shards = {str(s.index) for s in embedding.addressable_shards}
    print(json.dumps({'ok': bool(ok), 'shards': len(shards)}))
''')


def test_sharded_load_reads_each_device_slice():
  """4 CPU devices, parameters split over 'model': each device's slice read from the file."""
  path = fixture('hf_byt5_tiny')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', _SHARDED_WORKER, path], capture_output=True,
                       text=True, timeout=300, env=env, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {'ok': True, 'shards': 4}, result


# ------------------------------------------------------------------------ train.py, per family

@pytest.mark.parametrize('name, flags', [
    ('hf_t5_v1_1_tiny', []), ('hf_mt5_tiny', []), ('hf_byt5_tiny', []),
    ('hf_t5_v1_1_tiny_encoder_only', ['--fresh_pooling_block'])])
def test_train_fine_tunes_from_a_hugging_face_checkpoint(tmp_path, name, flags):
  """A few steps of the demo task from each family's HF checkpoint, with its tokenizer: ByT5's
  bytes, which its config.json names; for T5.1.1 and mT5 (the fixtures have no spiece.model) a
  SentencePiece model trained on the task, which fits their embeddings."""
  path, output_dir = fixture(name), tmp_path / 'run'
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'train.py'), f'--checkpoint={path}',
       f'--output_dir={output_dir}', '--train_steps=3', '--eval_every=3', '--log_every=1',
       '--batch_size=4', '--max_input_length=64', '--max_target_length=4', *flags],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env={k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'})
  assert out.returncode == 0, out.stderr[-3000:]
  record = json.loads((output_dir / 'run_config.json').read_text())
  assert record['model_config']['d_model'] == load_ckpt.config_from_checkpoint(path)['d_model']
  if name == 'hf_byt5_tiny':
    assert record['vocab_file'] == vocabularies.BYT5_VOCAB and not (output_dir / 'vocab').exists()
  else:
    assert record['vocab_file'].startswith(str(output_dir / 'vocab'))
  metrics = [json.loads(line) for line in open(output_dir / 'metrics.jsonl')]
  assert metrics[-1]['step'] == 3 and np.isfinite(metrics[-1]['train_loss']), metrics
