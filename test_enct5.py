"""Tests of enct5.py: `encode` and `apply` on packed rows (padding and other examples unseen),
dropout, the losses of each kind of label, predictions and probabilities, configs of each family
(T5.1.1, mT5, ByT5), parameters (T5X's names, shapes, initializers) and their counts, the FLOP
count against the traced matmuls, bfloat16, and rematerialized or scanned layers. Golden values:
test_golden.py."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enct5
import t5
from testutil import packed_batch, tiny_config


# ---------------------------------------------------------------------------------- packed rows

def test_padding_never_changes_real_tokens():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  tokens = np.array([[5, 9, 4, 7, 1]], np.int32)
  padded = np.concatenate([tokens, np.zeros((1, 7), np.int32)], axis=1)
  short = enct5.encode(params, cfg, tokens)
  long = enct5.encode(params, cfg, padded)
  np.testing.assert_allclose(long[:, :5], short, atol=1e-6)


def test_other_examples_in_a_row_are_invisible():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  batch = packed_batch()
  logits = enct5.apply(params, cfg, batch)
  changed = dict(batch, inputs=batch['inputs'].copy())
  changed['inputs'][0, 3:7] = [50, 51, 52, 53]  # segment 2 only
  changed_logits = enct5.apply(params, cfg, changed)
  np.testing.assert_allclose(changed_logits[0, [0, 2]], logits[0, [0, 2]], atol=1e-6)
  assert not np.allclose(changed_logits[0, 1], logits[0, 1], atol=1e-4)


def test_packed_equals_unpacked_small():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(1), cfg)
  batch = packed_batch()
  packed_logits = enct5.apply(params, cfg, batch)
  for start, end, slot in [(0, 3, 0), (3, 7, 1), (7, 9, 2)]:
    length = end - start
    single = dict(inputs=batch['inputs'][:1, start:end],
                  inputs_segment_ids=np.ones((1, length), np.int32),
                  inputs_positions=np.arange(length, dtype=np.int32)[None],
                  targets=np.ones((1, 1), np.int32))
    np.testing.assert_allclose(enct5.apply(params, cfg, single)[0, 0],
                               packed_logits[0, slot], atol=1e-5)


def test_padding_slot_is_finite():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  logits = enct5.apply(params, cfg, packed_batch())
  assert np.isfinite(np.asarray(logits)).all()  # row 1's slots 1, 2 see no token at all


# -------------------------------------------------------------------------------------- dropout

def test_dropout_only_with_rng():
  cfg = tiny_config(dropout_rate=0.3)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  batch = packed_batch()
  plain = enct5.apply(params, cfg, batch)
  np.testing.assert_array_equal(enct5.apply(params, cfg, batch, rng=None), plain)
  dropped = enct5.apply(params, cfg, batch, rng=jax.random.PRNGKey(5))
  again = enct5.apply(params, cfg, batch, rng=jax.random.PRNGKey(5))
  other = enct5.apply(params, cfg, batch, rng=jax.random.PRNGKey(6))
  np.testing.assert_array_equal(dropped, again)
  assert not np.allclose(dropped, plain, atol=1e-3)
  assert not np.allclose(dropped, other, atol=1e-3)


# --------------------------------------------------------------------------------------- losses

def test_classification_loss_by_hand():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(2), cfg)
  batch = packed_batch()
  loss, aux = enct5.loss_fn(params, cfg, batch)
  logits = np.asarray(enct5.apply(params, cfg, batch), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.sum([log_probs[0, 0, 1], log_probs[0, 1, 2], log_probs[0, 2, 3],
                      log_probs[1, 0, 2]])  # summed, as T5X
  assert int(aux['num_examples']) == 4
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(aux['loss_sum'], expected, rtol=1e-5)


def test_padding_slots_get_no_gradient():
  cfg = tiny_config()
  batch = packed_batch()
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, cfg.num_outputs))

  def loss(logits):
    losses, weights = enct5.example_losses(cfg, logits, batch)
    return jnp.sum(jnp.where(weights, losses, 0.0))

  grad = np.asarray(jax.grad(loss)(logits))
  np.testing.assert_array_equal(grad[1, 1:], 0.0)  # row 1 has one example, two padding slots
  assert (np.abs(grad[0]).sum(-1) > 0).all() and np.abs(grad[1, 0]).sum() > 0
  assert (grad[0, :, 0] > 0).all()  # class 0 is never a target: its logit is only pushed down


def test_regression_loss_by_hand():
  cfg = tiny_config(num_classes=1)
  assert cfg.is_regression and cfg.num_outputs == 1
  params = enct5.init_params(jax.random.PRNGKey(3), cfg)
  batch = dict(packed_batch(), targets=np.array([[0.5, 3.0, 0.0], [4.2, 0.0, 0.0]],
                                                np.float32))
  loss, _ = enct5.loss_fn(params, cfg, batch)
  predictions = np.asarray(enct5.apply(params, cfg, batch))
  assert predictions.shape == (2, 3)
  # Slots with an example: row 0 has 3 segments (the score 0.0 is a real label), row 1 has 1.
  errors = [(predictions[0, 0] - 0.5) ** 2, (predictions[0, 1] - 3.0) ** 2,
            (predictions[0, 2] - 0.0) ** 2, (predictions[1, 0] - 4.2) ** 2]
  np.testing.assert_allclose(loss, np.sum(errors), rtol=1e-5)


def test_predict_ignores_padding_class():
  cfg = tiny_config()
  logits = jnp.array([[[9.0, 1.0, 2.0, 0.5]]])
  assert int(enct5.predict(logits, cfg)[0, 0]) == 2


def test_class_projection_adds_its_bias():
  """The head is `pooled @ kernel + bias` (paper §3: a projection with bias): logits move by
  exactly the bias, whatever the input (the bias starts at zero, so only a non-zero one tests
  it)."""
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(4), cfg)
  bias = np.array([0.5, -1.0, 2.0, 3.5], np.float32)
  biased = jax.tree.map(lambda x: x, params)
  biased['decoder']['class_projection']['bias'] = jnp.asarray(bias)
  batch = packed_batch()
  np.testing.assert_allclose(enct5.apply(biased, cfg, batch) - enct5.apply(params, cfg, batch),
                             np.broadcast_to(bias, (2, 3, 4)), rtol=1e-5, atol=1e-5)


def test_multi_label_loss_by_hand():
  """Binary cross-entropy per label, -log s(x) if the label is on, -log(1 - s(x)) = -log s(-x)
  if off, summed over labels; padding slots count nothing, whatever their targets say."""
  cfg = tiny_config(multi_label=True)
  assert cfg.num_outputs == 3 and not cfg.is_regression
  logits = jnp.array([[[0.0, 2.0, -1.0], [3.0, 0.5, 0.0], [1.0, 1.0, 1.0]],
                      [[-2.0, 0.0, 4.0], [5.0, 5.0, 5.0], [-5.0, 0.0, 1.0]]])
  targets = np.array([[[1, 0, 1], [0, 0, 0], [1, 1, 1]],
                      [[0, 1, 1], [1, 1, 1], [1, 0, 1]]], np.int32)  # row 1, slots 1-2: padding
  batch = dict(packed_batch(), targets=targets)
  losses, weights = enct5.example_losses(cfg, logits, batch)
  on = lambda x: math.log(1 + math.exp(-x))  # -log s(x)
  off = lambda x: math.log(1 + math.exp(x))  # -log(1 - s(x))
  expected = [on(0.0) + off(2.0) + on(-1.0), off(3.0) + off(0.5) + off(0.0),
              3 * on(1.0), off(-2.0) + on(0.0) + on(4.0)]
  np.testing.assert_array_equal(weights, [[True, True, True], [True, False, False]])
  np.testing.assert_allclose(np.asarray(losses)[np.asarray(weights)], expected, rtol=1e-6)
  assert expected[0] == pytest.approx(math.log(2) + 2.126928 + 1.313262, abs=1e-6)

  params = enct5.init_params(jax.random.PRNGKey(4), cfg)
  loss, aux = enct5.loss_fn(params, cfg, batch)
  logits = np.asarray(enct5.apply(params, cfg, batch), np.float64)  # [2, 3, 3]
  probs = 1 / (1 + np.exp(-logits))
  bce = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)).sum(-1)
  np.testing.assert_allclose(loss, bce[0].sum() + bce[1, 0], rtol=1e-5)
  assert int(aux['num_examples']) == 4
  cleared = dict(batch, targets=np.where(np.asarray(weights)[..., None], targets, 0))
  assert float(enct5.loss_fn(params, cfg, cleared)[0]) == float(loss)


def test_multi_label_padding_slots_get_no_gradient():
  cfg = tiny_config(multi_label=True)
  batch = dict(packed_batch(), targets=np.ones((2, 3, 3), np.int32))
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, cfg.num_outputs))

  def loss(logits):
    losses, weights = enct5.example_losses(cfg, logits, batch)
    return jnp.sum(jnp.where(weights, losses, 0.0))

  grad = np.asarray(jax.grad(loss)(logits))
  np.testing.assert_array_equal(grad[1, 1:], 0.0)
  assert (grad[0] < 0).all() and (grad[1, 0] < 0).all()  # every label on: push every logit up


def test_probabilities_and_multi_label_predictions():
  single = tiny_config()
  logits = jnp.array([[[9.0, 1.0, 2.0, 0.5]]])
  probs = np.asarray(enct5.probabilities(logits, single))[0, 0]
  np.testing.assert_allclose(probs, np.exp([1.0, 2.0, 0.5]) / np.exp([1.0, 2.0, 0.5]).sum(),
                             rtol=1e-6)  # the padding class left out: they sum to 1
  multi = tiny_config(multi_label=True)
  logits = jnp.array([[[0.0, -0.9, 0.9]]])  # sigmoids 0.5, 0.289, 0.711
  np.testing.assert_allclose(enct5.probabilities(logits, multi)[0, 0],
                             [0.5, 0.28905, 0.71095], atol=1e-5)
  assert enct5.predict(logits, multi)[0, 0].tolist() == [1, 0, 1]  # 0.5 >= 0.5
  assert enct5.predict(logits, multi, threshold=0.3)[0, 0].tolist() == [1, 0, 1]
  assert enct5.predict(logits, multi, threshold=0.25)[0, 0].tolist() == [1, 1, 1]
  assert enct5.predict(logits, multi, threshold=0.75)[0, 0].tolist() == [0, 0, 0]
  with pytest.raises(ValueError, match='regression predicts values'):
    enct5.probabilities(logits, tiny_config(num_classes=1))
  # One label is a multi-label task with one sigmoid, not regression.
  assert not tiny_config(num_classes=1, multi_label=True).is_regression
  record = dataclasses.asdict(tiny_config())
  del record['multi_label']  # configs recorded before the field existed
  assert enct5.EncT5Config(**record) == tiny_config()


# ------------------------------------------------------------------------ configs, init, counts

def test_get_config_overrides_and_errors():
  cfg = enct5.get_config('tiny', vocab_size=32128, d_model=8, num_heads=4, head_dim=3,
                         d_ff=16, num_layers=2)
  assert (cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.num_outputs) == (8, 4, 3, 3)
  assert hash(cfg) == hash(enct5.get_config('tiny', vocab_size=32128, d_model=8,
                                            num_heads=4, head_dim=3, d_ff=16, num_layers=2))
  with pytest.raises(ValueError, match='unknown size'):
    enct5.get_config('huge')
  with pytest.raises(ValueError, match='unknown config fields'):
    enct5.get_config('small', d_modle=3)
  with pytest.raises(ValueError, match='dtype'):
    enct5.get_config('small', dtype='float16')


def test_parameter_names_and_shapes_follow_t5x():
  cfg = enct5.get_config('tiny', vocab_size=32128, d_model=8, num_heads=4, head_dim=3,
                         d_ff=16, num_layers=2)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  flat = {'/'.join(k.key for k in path): v.shape
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert flat['token_embedder/embedding'] == (32128, 8)
  assert flat['encoder/relpos_bias/rel_embedding'] == (4, 32)
  assert flat['encoder/layers_1/attention/query/kernel'] == (8, 12)
  assert flat['encoder/layers_1/attention/out/kernel'] == (12, 8)
  assert flat['encoder/layers_0/mlp/wo/kernel'] == (16, 8)
  assert flat['decoder/layers_0/encoder_decoder_attention/key/kernel'] == (8, 12)
  assert flat['decoder/class_projection/kernel'] == (8, 3)
  assert flat['decoder/bos_embedding'] == (8,)
  assert not any('self_attention' in k or 'logits_dense' in k or 'layers_1' in k
                 for k in flat if k.startswith('decoder'))
  # embedding + 2 encoder layers of 9 + relpos + norm; decoder layer 0 of 9 + norm + query + head
  assert len(flat) == 1 + 2 * 9 + 2 + 9 + 1 + 1 + 2


def test_initializers_follow_t5x():
  cfg = enct5.get_config('small', vocab_size=1000)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  attention = params['encoder']['layers_0']['attention']
  d, k = cfg.d_model, cfg.head_dim
  np.testing.assert_allclose(np.std(attention['query']['kernel']), 1 / math.sqrt(d * k),
                             rtol=0.02)
  np.testing.assert_allclose(np.std(attention['key']['kernel']), 1 / math.sqrt(d), rtol=0.02)
  wo = params['encoder']['layers_0']['mlp']['wo']['kernel']
  np.testing.assert_allclose(np.std(wo), 1 / math.sqrt(cfg.d_ff), rtol=0.02)
  assert np.abs(wo).max() <= 2 / math.sqrt(cfg.d_ff) / 0.87962566103423978 + 1e-6  # truncated
  np.testing.assert_allclose(np.std(params['token_embedder']['embedding']), 1.0, rtol=0.02)
  rel = params['encoder']['relpos_bias']['rel_embedding']
  limit = math.sqrt(3 / ((cfg.num_heads + cfg.num_buckets) / 2))
  assert np.abs(rel).max() <= limit and np.abs(rel).max() > 0.5 * limit
  np.testing.assert_array_equal(params['encoder']['encoder_norm']['scale'], 1.0)


# The released T5.1.1 checkpoints' parameter totals (encoder + decoder + untied logits),
# as published with google/t5-v1_1-{small,base,large,xl,xxl}.
@pytest.mark.parametrize('size, t5_total', [
    ('small', 76_961_152), ('base', 247_577_856), ('large', 783_150_080),
    ('xl', 2_849_757_184), ('xxl', 11_135_332_352)])
def test_count_params_matches_released_t5(size, t5_total):
  cfg = enct5.get_config(size, num_classes=3)
  assert enct5.count_params(cfg, 't5') == t5_total
  enct5_total = enct5.count_params(cfg)
  assert enct5_total < t5_total / 2  # the paper's Figure 2
  # EncT5 = T5 - decoder self-attention and layers 1.. - relpos - logits + query + head.
  d, inner = cfg.d_model, cfg.num_heads * cfg.head_dim
  removed = (cfg.num_decoder_layers * (8 * d * inner + 3 * d * cfg.d_ff + 3 * d)
             - (4 * d * inner + 3 * d * cfg.d_ff + 2 * d)
             + cfg.num_heads * cfg.num_buckets + d * cfg.vocab_size)
  assert enct5_total == t5_total - removed + d + (d + 1) * 4


# Published totals (ByT5 paper, Xue et al. 2022, Table 1: mT5 and ByT5 alike), to their digits.
PUBLISHED = {'small': 300e6, 'base': 582e6, 'large': 1.23e9, 'xl': 3.74e9, 'xxl': 12.9e9}


@pytest.mark.parametrize('family', ['mt5', 'byt5'])
@pytest.mark.parametrize('size', list(PUBLISHED))
def test_count_params_matches_published_totals(family, size):
  cfg = enct5.get_config(f'{family}-{size}')
  total = enct5.count_params(cfg, 't5')
  digits = 3 if size != 'small' else 1  # '300M' has one significant digit
  assert float(f'{total:.{digits}g}') == float(f'{PUBLISHED[size]:.{digits}g}'), total
  assert enct5.count_params(cfg) < total


@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large', 'xl', 'xxl'])
def test_byt5_encoder_is_three_times_the_decoder(size):
  cfg = enct5.get_config(f'byt5-{size}')
  assert cfg.num_layers == 3 * cfg.num_decoder_layers and cfg.vocab_size == 384
  params = jax.eval_shape(lambda: enct5.init_params(jax.random.PRNGKey(0), cfg, 't5'))
  assert len([k for k in params['encoder'] if k.startswith('layers_')]) == cfg.num_layers
  assert len([k for k in params['decoder'] if k.startswith('layers_')]) == cfg.num_decoder_layers


@pytest.mark.parametrize('size', ['tiny', 'mt5-tiny', 'byt5-tiny'])
def test_tiny_config_of_each_family_runs_enct5_and_t5(size):
  cfg = enct5.get_config(size, num_classes=3, dropout_rate=0.0)
  inputs = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 10, 11, 1]], np.int32)
  batch = dict(inputs=inputs, inputs_segment_ids=np.array([[1, 1, 1, 1, 0, 0],
                                                            [1, 1, 1, 2, 2, 2]], np.int32),
               targets=np.array([[2, 0], [1, 3]], np.int32))
  logits = enct5.apply(enct5.init_params(jax.random.PRNGKey(0), cfg), cfg, batch)
  assert logits.shape == (2, 2, 4) and np.isfinite(logits).all()
  t5_batch = dict(inputs=inputs, decoder_input_tokens=np.array([[0, 4], [0, 5]], np.int32),
                  decoder_target_tokens=np.array([[4, 1], [5, 1]], np.int32))
  logits = t5.apply(enct5.init_params(jax.random.PRNGKey(0), cfg, 't5'), cfg, t5_batch)
  assert logits.shape == (2, 2, cfg.vocab_size) and np.isfinite(logits).all()


# ---------------------------------------------------------------------------------- dtypes, jit

def test_bfloat16_activations_stay_close_to_float32():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(4), cfg)
  batch = packed_batch()
  f32 = enct5.apply(params, cfg, batch)
  bf16 = enct5.apply(params, dataclasses.replace(cfg, dtype='bfloat16'), batch)
  assert bf16.dtype == jnp.float32  # the projection runs in float32
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  # bfloat16 keeps 8 significant bits (each rounding is off by up to 2^-9 = 0.2%); through two
  # layers and the pooling block the logits drift 0.8% of their largest value here (0.014 of
  # 1.76). The bound, 2% of that value, is rounding's share; the float32 choices of single ops
  # (RMSNorm statistics, softmax) move these logits less than that and are pinned by NOTEs.
  np.testing.assert_allclose(bf16, f32, atol=0.02 * np.abs(f32).max())
  assert not np.array_equal(bf16, f32)


def test_bfloat16_training_stays_close_to_float32():
  """--dtype=bfloat16 as T5X trains: float32 parameters and gradients, bfloat16 activations and
  matmul operands (float32 accumulation), float32 norms, softmax and loss. One training pass
  with dropout, against float32: the loss within 1% and every parameter's gradient within 10%
  of its norm.

  NOTE: bfloat16 rounds each operand to 8 significant bits (2^-9 = 0.2%); here the loss moves
  0.3% and the gradients 2% over all parameters, 4% on the worst (the first layer's query,
  reached through the most bfloat16 roundings). The bounds leave 2-3x room for other seeds.
  """
  cfg = tiny_config(dropout_rate=0.1)
  batch = packed_batch()
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)

  def loss_and_grads(cfg):
    loss = lambda p: enct5.loss_fn(p, cfg, batch, rng=jax.random.PRNGKey(1))[0]
    return jax.jit(jax.value_and_grad(loss))(params)
  loss, grads = loss_and_grads(cfg)
  bf16_loss, bf16_grads = loss_and_grads(dataclasses.replace(cfg, dtype='bfloat16'))
  np.testing.assert_allclose(bf16_loss, loss, rtol=0.01)
  assert bf16_loss != loss
  for (path, expected), got in zip(jax.tree_util.tree_leaves_with_path(grads),
                                   jax.tree.leaves(bf16_grads)):
    assert got.dtype == jnp.float32, jax.tree_util.keystr(path)
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert error < 0.1, f'{jax.tree_util.keystr(path)}: {error:.1%} of the float32 gradient'



def _dot_flops(jaxpr):
  """2 x out x contracted of every dot_general in a jaxpr and the jaxprs inside it (a scan's
  body counted `length` times): the matmul FLOPs the traced program runs."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    times = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, 'eqns'):
          total += times * _dot_flops(sub)
  return total


@pytest.mark.parametrize('model, block_length', [('enct5', 0), ('enct5', 4), ('t5', 0)])
def test_forward_flops_count_the_traced_matmuls(model, block_length):
  """`enct5.forward_flops` (MFU's numerator; bench's shares of the matmul peak) equals the
  matmul FLOPs in the traced forward pass, whole rows and blocks."""
  cfg = tiny_config(attention_block_length=block_length)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, model)
  batch = packed_batch()
  rows, length = batch['inputs'].shape
  if model == 'enct5':
    fn, target_length = lambda p: enct5.apply(p, cfg, batch), batch['targets'].shape[1]
  else:
    target_length = 6
    decoder = {k: np.ones((rows, target_length), np.int32)
               for k in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids')}
    fn = lambda p: t5.apply(p, cfg, {**batch, **decoder})
  counted = _dot_flops(jax.make_jaxpr(fn)(params).jaxpr)
  assert counted == enct5.forward_flops(cfg, model, rows, length, target_length, block_length)


def test_apply_jits_with_static_config():
  cfg = tiny_config()
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  batch = packed_batch()
  jitted = jax.jit(enct5.apply, static_argnums=1)
  np.testing.assert_allclose(jitted(params, cfg, batch), enct5.apply(params, cfg, batch),
                             atol=1e-6)


# ---------------------------------------------------------------------------------- remat, scan

@functools.lru_cache
def _loss_and_grads(model, remat_policy='none', scan_layers=False):
  """Loss and gradients of a tiny EncT5 or T5 (both stacks), dropout on, in float32."""
  cfg = tiny_config(num_decoder_layers=2, remat_policy=remat_policy, scan_layers=scan_layers)
  batch = packed_batch()
  if model == 'enct5':
    loss_fn = enct5.loss_fn
  else:  # T5: the targets of each row, shifted right
    targets = np.array([[5, 6, 7, 1], [8, 9, 1, 0]], np.int32)
    batch = dict(inputs=batch['inputs'], decoder_target_tokens=targets,
                 decoder_input_tokens=np.pad(targets[:, :-1], ((0, 0), (1, 0))))
    loss_fn = t5.loss_fn
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, model)
  loss = lambda p: loss_fn(p, cfg, batch, rng=jax.random.PRNGKey(1))[0]
  return jax.device_get(jax.jit(jax.value_and_grad(loss))(params))


@pytest.mark.parametrize('remat_policy, scan_layers', [('minimal', False), ('none', True),
                                                       ('full', True)])
@pytest.mark.parametrize('model', ['enct5', 't5'])
def test_remat_and_scan_give_the_plain_loss_and_gradients(model, remat_policy, scan_layers):
  """Rematerialized and scanned layers compute the same function: the loss and the gradient of
  every parameter (each `layers_i` included) to 1e-6 in float32."""
  loss, grads = _loss_and_grads(model)
  other_loss, other_grads = _loss_and_grads(model, remat_policy, scan_layers)
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  for (path, expected), got in zip(jax.tree_util.tree_leaves_with_path(grads),
                                   jax.tree.leaves(other_grads)):
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max(),
                               err_msg=jax.tree_util.keystr(path))
