"""Tests of t5.py: the T5 and 1decT5 baselines (paper §4.3): teacher-forced logits, the loss,
greedy decoding, and the labels as T5's text (decoded strings mapped back to labels).

Golden values: testdata/golden_tiny.npz (short targets) and testdata/golden_baselines.npz
(targets up to 136 tokens, unpacked and packed), made by tools/make_golden.py from Hugging
Face's T5ForConditionalGeneration (full, and with one decoder layer) on the same tiny weights.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enct5
import metrics
import t5
import t5_layers
import tasks
import vocabularies

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata', 'golden_tiny.npz')
LONG_GOLDEN = os.path.join(os.path.dirname(GOLDEN), 'golden_baselines.npz')


@pytest.fixture(scope='module')
def golden():
  if not os.path.exists(GOLDEN):
    pytest.skip(f'golden values not found at {GOLDEN} (python tools/make_golden.py)')
  with np.load(GOLDEN) as data:
    return {k: data[k] for k in data.files}


def golden_config(golden):
  sizes = json.loads(str(golden['config_json']))
  return enct5.get_config('tiny', **sizes, dropout_rate=0.1)


def golden_params(golden, cfg, model):
  """The golden weights, restricted to `model`'s tree (every declared parameter must exist)."""
  def take(specs, prefix):
    if isinstance(specs, enct5.ParamSpec):
      value = golden[f'param/{prefix}']
      assert value.shape == specs.shape, prefix
      return jnp.asarray(value)
    return {name: take(sub, f'{prefix}/{name}' if prefix else name)
            for name, sub in specs.items()}
  return take(enct5.param_specs(cfg, model), '')


def teacher_forcing_batch(golden):
  return {'inputs': golden['inputs'], 'decoder_input_tokens': golden['decoder_input_tokens'],
          'decoder_target_tokens': golden['decoder_target_tokens']}


# ------------------------------------------------------------------------------ golden values

@pytest.mark.parametrize('model, prefix', [('t5', 't5'), ('1dect5', 'dec1')])
def test_forward_matches_hugging_face(golden, model, prefix):
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, model)
  batch = teacher_forcing_batch(golden)
  real = golden['decoder_target_tokens'] > 0  # HF's values elsewhere are not meaningful

  segment_ids = (batch['inputs'] != 0).astype(np.int32)
  encoded = enct5.encode(params, cfg, batch['inputs'], segment_ids)
  targets = batch['decoder_target_tokens']
  decoded = t5.decode(
      params, cfg, encoded, batch['decoder_input_tokens'],
      t5_layers.decoder_self_attention_mask(targets),
      t5_layers.decoder_cross_attention_mask(targets, segment_ids), model=model)
  np.testing.assert_allclose(np.asarray(decoded)[real], golden[f'{prefix}_decoder_output'][real],
                             rtol=1e-5, atol=1e-5)

  logits = t5.apply(params, cfg, batch, model=model)
  assert logits.shape == (*targets.shape, cfg.vocab_size) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits)[real], golden[f'{prefix}_logits'][real],
                             rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def long_golden():
  """testdata/golden_baselines.npz: targets of 24 to 136 tokens, unpacked and packed."""
  with np.load(LONG_GOLDEN) as data:
    return {k: data[k] for k in data.files}


def _decoded_and_logits(params, cfg, batch, model):
  """The decoder's output [B, Ld, D] and t5.apply's logits [B, Ld, V] for a (packed) batch."""
  segment_ids = batch.get('inputs_segment_ids', (batch['inputs'] != 0).astype(np.int32))
  targets, decoder_segment_ids = batch['decoder_target_tokens'], batch.get('decoder_segment_ids')
  encoded = enct5.encode(params, cfg, batch['inputs'], segment_ids)
  decoded = t5.decode(
      params, cfg, encoded, batch['decoder_input_tokens'],
      t5_layers.decoder_self_attention_mask(targets, decoder_segment_ids),
      t5_layers.decoder_cross_attention_mask(targets, segment_ids, decoder_segment_ids),
      model=model)
  return np.asarray(decoded), np.asarray(t5.apply(params, cfg, batch, model=model), np.float64)


@pytest.mark.parametrize('packed', [False, True], ids=['unpacked', 'packed'])
@pytest.mark.parametrize('model, prefix', [('t5', 't5'), ('1dect5', 'dec1')])
def test_long_targets_match_hugging_face(golden, long_golden, model, prefix, packed):
  """Targets of up to 136 tokens, where the decoder's causal relative-position buckets differ
  from the encoder's bidirectional ones (from distance 8 on; the last bucket from 112). Packed:
  three examples in one row, HF having run each alone. Checks the decoder's output, the
  vocabulary logits (through log Z and the target's logit) and T5X's summed loss."""
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, model)
  g = {k[len('packed_'):]: v for k, v in long_golden.items() if k.startswith('packed_')} \
      if packed else long_golden
  batch = {k: g[k] for k in ('inputs', 'decoder_input_tokens', 'decoder_target_tokens')}
  if packed:
    batch.update(inputs_segment_ids=g['inputs_segment_ids'],
                 decoder_segment_ids=g['decoder_segment_ids'])
  real = batch['decoder_target_tokens'] > 0
  assert real.sum(axis=1).max() == 136

  decoded, logits = _decoded_and_logits(params, cfg, batch, model)
  np.testing.assert_allclose(decoded[real], g[f'{prefix}_decoder_output'][real],
                             rtol=1e-5, atol=1e-5)
  log_z = np.log(np.exp(logits).sum(-1))
  target_logit = np.take_along_axis(logits, batch['decoder_target_tokens'][..., None], -1)[..., 0]
  np.testing.assert_allclose(log_z[real], g[f'{prefix}_log_z'][real], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(target_logit[real], g[f'{prefix}_target_logit'][real],
                             rtol=1e-5, atol=1e-5)

  hf_log_z = g[f'{prefix}_log_z'].astype(np.float64)
  expected = np.sum((hf_log_z - g[f'{prefix}_target_logit'] + t5.Z_LOSS * hf_log_z ** 2)[real])
  loss, _ = t5.loss_fn(params, cfg, batch, model=model)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ------------------------------------------------------------------------- packing and masks

def test_packed_decoder_equals_unpacked(golden):
  """Two examples in one row (inputs and targets packed, decoder segment ids) give the same
  logits as each run alone."""
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, 't5')
  rows = (1, 3)  # inputs of 37 and 3 tokens, targets of 6 and 4 tokens
  inputs = [golden['inputs'][r][golden['inputs'][r] > 0] for r in rows]
  targets = [golden['decoder_target_tokens'][r][golden['decoder_target_tokens'][r] > 0]
             for r in rows]
  length, target_length = 48, 12

  def row(pieces, width, fill=None):
    values = np.concatenate([p if fill is None else np.full(len(p), fill(i))
                             for i, p in enumerate(pieces)])
    return np.pad(values, (0, width - len(values)))[None].astype(np.int32)

  shifted = [np.concatenate([[0], t[:-1]]) for t in targets]  # BOS 0 restarts per segment
  packed = {'inputs': row(inputs, length),
            'inputs_segment_ids': row(inputs, length, fill=lambda i: i + 1),
            'decoder_input_tokens': row(shifted, target_length),
            'decoder_target_tokens': row(targets, target_length),
            'decoder_segment_ids': row(targets, target_length, fill=lambda i: i + 1)}
  packed_logits = np.asarray(t5.apply(params, cfg, packed))[0]

  start = 0
  for x, t, s in zip(inputs, targets, shifted):
    alone = {'inputs': x[None], 'decoder_input_tokens': s[None], 'decoder_target_tokens': t[None]}
    alone_logits = np.asarray(t5.apply(params, cfg, alone))[0]
    np.testing.assert_allclose(packed_logits[start:start + len(t)], alone_logits,
                               rtol=1e-5, atol=1e-5)
    start += len(t)


@pytest.mark.parametrize('model', ['t5', '1dect5'])
def test_decoder_is_causal(golden, model):
  """Changing decoder input k changes no logits before k, and does change those from k on."""
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, model)
  batch = {k: v[1:2] for k, v in teacher_forcing_batch(golden).items()}  # 6 real targets
  k = 3
  changed = dict(batch, decoder_input_tokens=batch['decoder_input_tokens'].copy())
  changed['decoder_input_tokens'][0, k] += 7
  before = np.asarray(t5.apply(params, cfg, batch, model=model))
  after = np.asarray(t5.apply(params, cfg, changed, model=model))
  np.testing.assert_array_equal(before[:, :k], after[:, :k])
  assert np.all(np.abs(before[:, k:] - after[:, k:]).max(axis=-1) > 1e-4)


# ----------------------------------------------------------------------------------- the loss

def test_loss_by_hand():
  """Per token: logsumexp(z) - z[target] + 1e-4 logsumexp(z)^2, summed over real tokens."""
  logits = jnp.array([[[0.0, 0.0, np.log(2.0)],  # logsumexp = ln 4, target 2: ln 4 - ln 2
                       [0.0, 0.0, 0.0],  # logsumexp = ln 3, target 1: ln 3
                       [50.0, -50.0, 9.0]]])  # padding: ignored
  targets = jnp.array([[2, 1, 0]])
  loss, z_loss = t5.cross_entropy_with_z_loss(logits, targets, targets > 0)
  expected_z = 1e-4 * (np.log(4.0) ** 2 + np.log(3.0) ** 2)
  np.testing.assert_allclose(z_loss, expected_z, rtol=1e-6)
  np.testing.assert_allclose(loss, np.log(2.0) + np.log(3.0) + expected_z, rtol=1e-6)


def test_loss_fn_sums_real_tokens(golden):
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, '1dect5')
  batch = teacher_forcing_batch(golden)
  loss, aux = t5.loss_fn(params, cfg, batch, model='1dect5')
  targets = golden['decoder_target_tokens']
  logits = np.asarray(t5.apply(params, cfg, batch, model='1dect5'), np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  target_logits = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  expected = np.sum(np.where(targets > 0, log_z - target_logits + 1e-4 * log_z ** 2, 0.0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert int(aux['num_tokens']) == int((targets > 0).sum()) == 14
  np.testing.assert_allclose(aux['loss_sum'] / aux['num_tokens'], expected / 14, rtol=1e-5)
  assert int(aux['num_examples']) == int((targets > 0).any(1).sum())  # one example a row


def test_dropout_only_with_rng(golden):
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, '1dect5')
  batch = teacher_forcing_batch(golden)
  plain = t5.apply(params, cfg, batch, model='1dect5')
  dropped = t5.apply(params, cfg, batch, model='1dect5', rng=jax.random.PRNGKey(0))
  assert np.all(np.isfinite(dropped)) and not np.allclose(plain, dropped)


def test_wrong_tree_is_a_clear_error(golden):
  cfg = golden_config(golden)
  with pytest.raises(ValueError, match='layers_1'):
    t5.apply(golden_params(golden, cfg, '1dect5'), cfg, teacher_forcing_batch(golden),
             model='t5')
  with pytest.raises(ValueError, match='logits_dense'):
    t5.apply(golden_params(golden, cfg, 'enct5'), cfg, teacher_forcing_batch(golden),
             model='1dect5')
  with pytest.raises(ValueError, match='baseline model'):
    t5.apply(golden_params(golden, cfg, 't5'), cfg, teacher_forcing_batch(golden),
             model='enct5')


# ------------------------------------------------------------------------------------ decoding

def test_greedy_decode_agrees_with_teacher_forcing(golden):
  """Each decoded token is the argmax of the teacher-forced logits given the tokens before it."""
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, 't5')
  decode = jax.jit(t5.greedy_decode, static_argnums=(1,),
                   static_argnames=('max_length', 'model'))
  tokens = np.asarray(decode(params, cfg, golden['inputs'], max_length=5, model='t5'))
  assert tokens.shape == (4, 5)
  shifted = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
  logits = t5.apply(params, cfg, {'inputs': golden['inputs'],
                                  'decoder_input_tokens': shifted,
                                  'decoder_target_tokens': tokens})
  real = tokens > 0
  np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1)[real], tokens[real])


def test_greedy_decode_stops_at_eos(golden):
  """Relabel the step-1 token as EOS (swap two logits_dense columns): rows read [t0, EOS, 0, 0]."""
  cfg = golden_config(golden)
  params = golden_params(golden, cfg, '1dect5')
  inputs = golden['inputs'][:1]
  t0, t1 = np.asarray(t5.greedy_decode(params, cfg, inputs, max_length=2,
                                       model='1dect5'))[0]
  assert len({int(t0), int(t1), vocabularies.EOS_ID}) == 3  # the swap below moves only t1's logit
  kernel = np.asarray(params['decoder']['logits_dense']['kernel']).copy()
  kernel[:, [t1, vocabularies.EOS_ID]] = kernel[:, [vocabularies.EOS_ID, t1]]
  params['decoder']['logits_dense']['kernel'] = jnp.asarray(kernel)
  tokens = t5.greedy_decode(params, cfg, inputs, max_length=4, model='1dect5')
  np.testing.assert_array_equal(tokens, [[t0, vocabularies.EOS_ID, 0, 0]])


# ------------------------------------------------------------------------------- labels as text

def test_label_text_as_t5():
  """T5's target strings (`preprocessors.glue` with `glue_utils` label names; STS-B:
  `preprocessors.stsb`, round(5x) / 5 half to even, one decimal)."""
  names = {'cola': ['unacceptable', 'acceptable'], 'sst2': ['negative', 'positive'],
           'mrpc': ['not_equivalent', 'equivalent'], 'qqp': ['not_duplicate', 'duplicate'],
           'mnli': ['entailment', 'neutral', 'contradiction'],
           'qnli': ['entailment', 'not_entailment'], 'rte': ['entailment', 'not_entailment']}
  for name, texts in names.items():
    task = tasks.get_task(name)
    assert [t5.label_text(task, i + 1) for i in range(len(texts))] == texts
    assert t5.label_texts(task) == texts
  stsb = tasks.get_task('stsb')
  for score, text in [(0.0, '0.0'), (1.8, '1.8'), (2.5, '2.4'), (3.5, '3.6'), (3.13, '3.2'),
                      (4.9, '4.8'), (5.0, '5.0')]:
    assert t5.label_text(stsb, score) == text, score
  assert t5.label_texts(stsb) == [f'{i / 5:.1f}' for i in range(26)]


@pytest.fixture(scope='module')
def label_vocab(tmp_path_factory):
  """A small SentencePiece model that spells SST-2's and STS-B's labels (and has no '_')."""
  texts = (['a good movie', 'not a bad film', 'negative positive', 'the end'] * 50 +
           [f'{i / 5:.1f}' for i in range(26)] * 10)
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('vocab') / 'labels'), 80)


def _rows(rows):
  """Token lists as one [B, width] array, zero-padded as greedy decoding leaves them."""
  width = max(map(len, rows))
  return np.array([row + [0] * (width - len(row)) for row in rows])


def test_decoded_strings_map_back_to_labels(label_vocab):
  """T5's postprocessors: the text before EOS is a label's class id, else -1 (counted wrong);
  STS-B: a float, else -1.0."""
  sst2 = tasks.get_task('sst2')
  labels = t5.LabelText(sst2, label_vocab)
  encode = lambda text: label_vocab.encode(text) + [vocabularies.EOS_ID]
  assert labels.tokens([2, 1]) == [encode('positive'), encode('negative')]
  assert labels.decode_length == max(len(encode('positive')), len(encode('negative')))
  rows = [encode('positive'), encode('negative'), encode('neutral'), encode('positive positive'),
          encode('positive')[:-1] + [label_vocab.GetPieceSize() + 3],  # id past the vocab
          encode('negative') + encode('bad')]  # after EOS: ignored
  predictions = labels.parse(_rows(rows))
  np.testing.assert_array_equal(predictions, [2, 1, -1, -1, -1, 1])

  # Unknown strings count as wrong: accuracy, and F1 as T5's `f1_score_with_invalid`.
  gold = [2, 1, 1, 2, 2, 1]
  assert metrics.compute_metrics(sst2, 'validation', gold,
                                 predictions)['sst2/accuracy'] == pytest.approx(300 / 6)
  mrpc = tasks.get_task('mrpc')
  scores = metrics.compute_metrics(mrpc, 'validation', gold, predictions)
  # Positives (class 2): gold at 0, 3, 4; predicted 2 at 0 and, as the opposite of gold 1, at 2.
  assert scores['mrpc/f1'] == pytest.approx(100 * 2 * 1 / (3 + 2))
  assert scores['mrpc/accuracy'] == pytest.approx(300 / 6)

  stsb = tasks.get_task('stsb')
  scores = t5.LabelText(stsb, label_vocab)
  assert scores.tokens([2.5]) == [encode('2.4')]
  values = scores.parse(_rows([encode('3.4'), encode('5.0'), encode('end')]))
  np.testing.assert_allclose(values, [3.4, 5.0, -1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="cannot spell the rte label 'not_entailment'"):
    t5.LabelText(tasks.get_task('rte'), label_vocab)
