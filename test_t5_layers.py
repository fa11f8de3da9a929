"""Tests of t5_layers.py: relative-position buckets and bias, RMSNorm, attention masks (EncT5's
and the decoder's), dropout (every site its own mask, shared along T5X's axes), attention in
blocks against whole rows, and the gradients of `dense` and of the shared attention bias."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enct5
import packing
import t5_layers
from testutil import packed_batch, tiny_config


# --------------------------------------------------------------------------- relative positions

# Hand-worked: 16 buckets per direction, exact below 8, then 8 + floor(log(n / 8) / log(16) * 8).
@pytest.mark.parametrize('relative_position, bucket', [
    (0, 0), (-1, 1), (-7, 7), (-8, 8), (-11, 8), (-12, 9), (-16, 10),  # key left of query
    (-90, 14), (-91, 15), (-128, 15), (-1000, 15),  # the last bucket starts at 91, not 128
    (1, 17), (7, 23), (8, 24), (16, 26), (90, 30), (91, 31), (500, 31),  # key to the right
])
def test_bidirectional_bucket(relative_position, bucket):
  got = t5_layers.relative_position_bucket(jnp.array(relative_position), bidirectional=True)
  assert int(got) == bucket


# Causal: all 32 buckets for max(-rel, 0); exact below 16, then 16 + floor(log(n/16)/log(8)*16).
@pytest.mark.parametrize('relative_position, bucket', [
    (5, 0), (1, 0), (0, 0), (-1, 1), (-15, 15), (-16, 16), (-31, 21), (-32, 21),
    (-100, 30), (-127, 31), (-128, 31), (-1000, 31),
])
def test_causal_bucket(relative_position, bucket):
  got = t5_layers.relative_position_bucket(jnp.array(relative_position), bidirectional=False)
  assert int(got) == bucket


def test_relative_position_bias_is_shared_table_lookup():
  cfg = tiny_config()
  table = jnp.arange(2 * 32, dtype=jnp.float32).reshape(2, 32)
  bias = t5_layers.relative_position_bias(table, 3, 4, bidirectional=True, cfg=cfg)
  assert bias.shape == (1, 2, 3, 4)
  # query 2, key 0: rel = -2 -> bucket 2; query 0, key 3: rel = +3 -> bucket 19.
  assert bias[0, 1, 2, 0] == table[1, 2]
  assert bias[0, 0, 0, 3] == table[0, 19]


# -------------------------------------------------------------------------------------- RMSNorm

def test_rms_norm_matches_formula_without_mean_subtraction():
  x = np.random.RandomState(0).randn(3, 5).astype(np.float32) + 3.0
  scale = np.linspace(0.5, 2.0, 5).astype(np.float32)
  expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(t5_layers.rms_norm(jnp.array(x), jnp.array(scale)), expected,
                             rtol=1e-6)  # x has mean ~3: subtracting it would fail here


def test_rms_norm_epsilon_is_t5s_by_hand():
  # [3e-3, -4e-3]: mean square 12.5e-6, so T5's eps 1e-6 moves the result measurably:
  # x / sqrt(13.5e-6) = [0.81649658, -1.08866211]; eps 1e-5 would give [0.63245553, -0.84327404].
  out = t5_layers.rms_norm(jnp.array([3e-3, -4e-3], jnp.float32), jnp.ones((2,)))
  np.testing.assert_allclose(out, [0.81649658, -1.08866211], rtol=1e-6)


def test_rms_norm_keeps_activation_dtype():
  x = jnp.ones((2, 4), jnp.bfloat16) * 300
  out = t5_layers.rms_norm(x, jnp.full((4,), 2.0))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), 2.0)


# ------------------------------------------------------------------------------ attention masks

def test_masks_by_hand():
  segment_ids = np.array([[1, 1, 2, 0]], np.int32)
  expected_self = [[1, 1, 0, 0],
                   [1, 1, 0, 0],
                   [0, 0, 1, 0],
                   [0, 0, 0, 0]]
  expected_pool = [[1, 1, 0, 0],  # slot 0 <-> segment 1
                   [0, 0, 1, 0],  # slot 1 <-> segment 2
                   [0, 0, 0, 0]]  # slot 2: no segment 3
  np.testing.assert_array_equal(t5_layers.self_attention_mask(segment_ids), [[expected_self]])
  np.testing.assert_array_equal(t5_layers.pooling_mask(segment_ids, 3), [[expected_pool]])


def test_decoder_masks_by_hand():
  targets = np.array([[5, 6, 7, 8, 0]])
  segments = np.array([[1, 1, 2, 2, 0]])
  self_mask = np.asarray(t5_layers.decoder_self_attention_mask(targets, segments))[0, 0]
  np.testing.assert_array_equal(self_mask, [[1, 0, 0, 0, 0],
                                            [1, 1, 0, 0, 0],
                                            [0, 0, 1, 0, 0],
                                            [0, 0, 1, 1, 0],
                                            [0, 0, 0, 0, 0]])
  input_segments = np.array([[1, 2, 2, 0]])
  cross_mask = np.asarray(t5_layers.decoder_cross_attention_mask(targets, input_segments,
                                                                 segments))[0, 0]
  np.testing.assert_array_equal(cross_mask, [[1, 0, 0, 0],
                                             [1, 0, 0, 0],
                                             [0, 1, 1, 0],
                                             [0, 1, 1, 0],
                                             [0, 0, 0, 0]])


# -------------------------------------------------------------------------------------- dropout

def test_every_dropout_site_draws_its_own_mask_shared_as_t5x(monkeypatch):
  """One training pass of EncT5: each dropout site (embeddings, attention probabilities, block
  outputs, FFN activations, final norms; in every layer) draws its own key, and its mask is
  shared along the axes T5X shares it: length (or slot) for [B, L, D] and [B, L, F], the query
  axis for attention probabilities [B, H, q, k], none for the encoder's output."""
  cfg = tiny_config(dropout_rate=0.5)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  calls = []  # (key, shape, mask) per dropout call, in call order

  def recording(original):
    def record(x, rate, rng, *args, **kwargs):
      if rng is not None:
        mask = np.asarray(original(jnp.ones_like(x), rate, rng, *args, **kwargs)) != 0
        calls.append((tuple(np.asarray(rng).ravel()), x.shape, mask))
      return original(x, rate, rng, *args, **kwargs)
    return record
  monkeypatch.setattr(t5_layers, 'dropout', recording(t5_layers.dropout))
  enct5.apply(params, cfg, packed_batch(), rng=jax.random.PRNGKey(7))

  B, L, T, H, D, F = 2, 12, 3, cfg.num_heads, cfg.d_model, cfg.d_ff
  layer = [((B, H, L, L), (2,)), ((B, L, D), (1,)), ((B, L, F), (1,)), ((B, L, D), (1,))]
  expected = ([((B, L, D), (1,))] + layer * cfg.num_layers + [((B, L, D), ())]  # encoder
              + [((B, T, D), (1,)), ((B, H, T, L), (2,)), ((B, T, D), (1,)),  # pooling block
                 ((B, T, F), (1,)), ((B, T, D), (1,)), ((B, T, D), (1,))])
  shared = lambda mask: tuple(axis for axis in range(mask.ndim)
                              if (mask == mask.take([0], axis=axis)).all())
  assert [(shape, shared(mask)) for _, shape, mask in calls] == expected
  keys = [key for key, _, _ in calls]
  assert len(set(keys)) == len(keys), 'two dropout sites share a key (the same mask)'


def test_dropout_mask_is_shared_along_length():
  x = jnp.ones((2, 50, 8))
  y = t5_layers.dropout(x, 0.5, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(y, jnp.broadcast_to(y[:, :1], y.shape))
  assert set(np.unique(np.asarray(y))) == {0.0, 2.0}


# -------------------------------------------------------------------------- attention in blocks

def _block_test_examples():
  """Lengths 1..8 with some of exactly 8; then some of 9..15 and of exactly 16."""
  rng = np.random.default_rng(1)
  lengths = np.concatenate([rng.integers(1, 9, 60), [8] * 5, rng.integers(9, 16, 6), [16] * 2])
  return [(rng.integers(3, 100, n).tolist()[:-1] + [1], int(rng.integers(1, 4)))
          for n in lengths]


@pytest.mark.parametrize('num_examples, block_length', [(65, 8), (73, None)])
def test_block_attention_equals_whole_rows(num_examples, block_length):
  """Encoder self-attention in blocks (attention_block_length b) computes the same function
  as over whole rows on rows packed into blocks: logits, and with dropout the training loss
  and every gradient. Blocks of 8 hold examples of 1..8 tokens, some exactly 8; examples
  longer than 8 get the block `block_length_for` picks (16), some filling it exactly."""
  examples = _block_test_examples()[:num_examples]
  lengths = [len(tokens) for tokens, _ in examples]
  max_length = 32
  if block_length is None:
    with pytest.raises(ValueError, match='block_length=8'):
      packing.pack_examples(examples, max_length, 6, block_length=8)
    block_length = packing.block_length_for(lengths, max_length)
    assert block_length == 16
  packed = packing.pack_examples(examples, max_length, 6, block_length=block_length)
  assert any(packed['inputs_segment_ids'][:, block_length - 1] !=
             packed['inputs_segment_ids'][:, block_length])  # examples end at a block's end
  batch = {k: packed[k] for k in ('inputs', 'inputs_segment_ids', 'targets')}
  cfg = enct5.get_config('tiny', num_classes=3, vocab_size=100, d_model=16, num_heads=2,
                         head_dim=8, d_ff=32, num_layers=2, dropout_rate=0.3)
  blocked = enct5.get_config('tiny', num_classes=3, vocab_size=100, d_model=16, num_heads=2,
                             head_dim=8, d_ff=32, num_layers=2, dropout_rate=0.3,
                             attention_block_length=block_length)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)

  def loss_and_grads(cfg):
    loss = lambda p: enct5.loss_fn(p, cfg, batch, rng=jax.random.PRNGKey(3))[0]
    return jax.jit(jax.value_and_grad(loss))(params)

  # Real slots only: an empty slot's query sees no token and averages all the values its
  # softmax spans (the row's, or the block's), a number no loss or prediction reads.
  real = packed['example_ids'] >= 0
  apply = jax.jit(enct5.apply, static_argnums=1)
  np.testing.assert_allclose(np.asarray(apply(params, blocked, batch))[real],
                             np.asarray(apply(params, cfg, batch))[real], atol=1e-5, rtol=0)
  (loss, grads), (blocked_loss, blocked_grads) = loss_and_grads(cfg), loss_and_grads(blocked)
  np.testing.assert_allclose(blocked_loss, loss, rtol=1e-5)
  for (path, expected), got in zip(jax.tree_util.tree_leaves_with_path(grads),
                                   jax.tree.leaves(blocked_grads)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(),
                               err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize('d_in, d_out', [(4, 6), (6, 4)])  # both branches of the weight grad
def test_dense_gradient_equals_plain_matmul(d_in, d_out):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, d_in))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (d_in, d_out))
  loss = lambda x, k: jnp.sum(jnp.sin(t5_layers.dense(x, k)))
  plain = lambda x, k: jnp.sum(jnp.sin(x @ k))
  for got, expected in zip(jax.grad(loss, (0, 1))(x, kernel), jax.grad(plain, (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_shared_bias_gradient_equals_plain_sum():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 3, 4))
  bias = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 3, 4))
  loss = lambda l, b: jnp.sum(jnp.sin(t5_layers._cpu_add_bias(l, b)) * l)
  plain = lambda l, b: jnp.sum(jnp.sin(l + b) * l)
  for got, expected in zip(jax.grad(loss, (0, 1))(logits, bias),
                           jax.grad(plain, (0, 1))(logits, bias)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
