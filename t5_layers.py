"""T5.1.1 building blocks in pure jax.numpy, after T5X's `t5x/examples/t5/layers.py`.

Every function takes the parameter sub-tree it needs, named exactly as in a T5X checkpoint
(`pre_attention_layer_norm/scale`, `attention/query/kernel`, `mlp/wi_0/kernel`, ...), so a
released checkpoint loads by copying. `cfg` is a frozen config; the fields read here are
num_heads, head_dim, num_buckets, max_distance, dropout_rate, activation_dtype, num_layers,
remat_policy, scan_layers and attention_block_length.

Letters in shape comments and einsum strings: B batch, L input length, T target slots,
H heads, K head dim, D model dim, F FFN dim, V vocab; in attention, q and k are the query and
key lengths and d the head dim.

Dropout: `rng=None` means no dropout, everywhere. Following T5X, dropout masks are shared
along the length axis (`broadcast_dims=(-2,)`) for embeddings, block outputs, the FFN's hidden
activations and the decoder's output, and along the query axis for attention probabilities
(`broadcast_dropout=True`); the encoder's output alone gets one mask per element.
"""
import functools

import jax
import jax.numpy as jnp

import partitioning

# NOTE: masked attention logits get a large finite negative value, as T5X (-1e10), never -inf:
# a query with no key to attend to (a padding slot) then gets a uniform, finite softmax.
MASKED_LOGIT = -1e10


# ---------------------------------------------------------------------------------------------
# Attention masks: bool, broadcastable to [B, H, q, k], True = may attend.
# ---------------------------------------------------------------------------------------------

def self_attention_mask(segment_ids):
  """Tokens attend only to tokens of their own example: [B, L] -> [B, 1, L, L] bool.

  NOTE: as T5X `make_attention_mask(inputs > 0, inputs > 0) & make_attention_mask(
  segment_ids, segment_ids, jnp.equal)`: padding (segment 0) neither attends nor is attended.
  """
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, L, L]
  real = (segment_ids[:, :, None] > 0) & (segment_ids[:, None, :] > 0)
  return (same_segment & real)[:, None, :, :]


def pooling_mask(segment_ids, num_slots):
  """EncT5's query slot j attends only to the tokens of segment j+1: [B, L] -> [B, 1, T, L]."""
  slot_segment = jnp.arange(1, num_slots + 1, dtype=segment_ids.dtype)  # [T]
  return (slot_segment[None, :, None] == segment_ids[:, None, :])[:, None, :, :]


def decoder_self_attention_mask(decoder_target_tokens, decoder_segment_ids=None):
  """Causal self-attention within one target: [B, Ld] -> [B, 1, Ld, Ld] bool.

  NOTE: as T5X `make_decoder_mask`: position i sees j <= i, both real (decoder_target_tokens
  > 0; the decoder inputs start with the BOS 0, so they cannot say which tokens are real) and,
  when packed, of the same segment.
  """
  length = decoder_target_tokens.shape[1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]  # [Ld, Ld]
  real = decoder_target_tokens > 0
  mask = causal[None] & real[:, :, None] & real[:, None, :]
  if decoder_segment_ids is not None:
    mask &= decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
  return mask[:, None]


def decoder_cross_attention_mask(decoder_target_tokens, inputs_segment_ids,
                                 decoder_segment_ids=None):
  """Target tokens see the input tokens of their own example: -> [B, 1, Ld, L] bool.

  As T5X: `make_attention_mask(decoder_target_tokens > 0, inputs > 0)`, and when packed
  `make_attention_mask(decoder_segment_ids, inputs_segment_ids, jnp.equal)`.
  """
  mask = (decoder_target_tokens > 0)[:, :, None] & (inputs_segment_ids > 0)[:, None, :]
  if decoder_segment_ids is not None:
    mask &= decoder_segment_ids[:, :, None] == inputs_segment_ids[:, None, :]
  return mask[:, None]


def split_rng(rng, num):
  """`num` independent keys, or `num` Nones when rng is None (no dropout)."""
  return [None] * num if rng is None else list(jax.random.split(rng, num))


def dropout(x, rate, rng, broadcast_dims=(-2,)):
  """Inverted dropout; the mask is shared along `broadcast_dims`. rng=None: identity."""
  if rng is None or rate == 0.0:
    return x
  mask_shape = list(x.shape)
  for dim in broadcast_dims:
    mask_shape[dim] = 1
  keep = jax.random.bernoulli(rng, 1.0 - rate, mask_shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def rms_norm(x, scale, eps=1e-6):
  """T5's LayerNorm: x / RMS(x) * scale, no mean subtraction, no bias. [..., D] -> [..., D].

  Computed in float32 whatever the activation dtype, and rounded once.
  NOTE: T5X `LayerNorm` computes the statistics in float32 too, but multiplies by the scale in
  the activation dtype. The same in float32; in bfloat16 one rounding fewer, and XLA:CPU sums
  the scale's gradient over the tokens in one fused reduction, where a bfloat16 product
  became a slow reduce (experiments/speed_512.md, lever 7).
  """
  x32 = x.astype(jnp.float32)
  mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(mean_square + eps) * scale).astype(x.dtype)


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
  """Maps `relative_position = key_pos - query_pos` to a bucket in [0, num_buckets).

  As T5X `RelativePositionBiases._relative_position_bucket`. Bidirectional: half the buckets
  are for keys to the right of the query. Within a half, distances below `max_exact =
  num_buckets // 4` get their own bucket, larger ones log-spaced buckets up to
  `max_distance`, beyond which everything shares the last bucket (for 32 buckets and
  distance 128 the last bucket starts at distance 91). Causal (bidirectional=False): keys to
  the right all land in bucket 0, and the 32 buckets cover `max(-relative_position, 0)`.
  """
  n = -relative_position  # distance from the key back to the query
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # NOTE: T5X adds float32 eps inside the log (so log(0) never occurs even where unused).
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
  large = max_exact + (log_ratio / jnp.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


def relative_position_bias(rel_embedding, query_length, key_length, bidirectional, cfg):
  """The T5 attention bias: one learned scalar per head and bucket. -> [1, H, q, k].

  `rel_embedding` [H, num_buckets] is computed once per stack and shared by its layers.

  NOTE: as T5X's Encoder and Decoder, positions are row indices, not `inputs_positions`.
  Only `key_pos - query_pos` matters, which within one packed example is the same whether
  positions restart per example or not; across examples attention is masked anyway. So the
  bias is shared by the whole batch.
  """
  query_position = jnp.arange(query_length)[:, None]
  key_position = jnp.arange(key_length)[None, :]
  buckets = relative_position_bucket(key_position - query_position, bidirectional,
                                     cfg.num_buckets, cfg.max_distance)  # [q, k]
  return rel_embedding[:, buckets][None]  # [1, H, q, k]


def dense(x, kernel, out_dtype=None):
  """x @ kernel in the activation dtype (x's), accumulated in float32 and returned in
  `out_dtype` (default: x's dtype); kernels are stored [in, out] in float32.

  NOTE (speed only): on XLA:CPU the product goes through `_cpu_matmul` (end of this file),
  which computes the same numbers on the CPU's fast matmul path.
  """
  out_dtype = out_dtype or x.dtype
  if jax.default_backend() == 'cpu':
    return _cpu_matmul(x, kernel, out_dtype)
  return jnp.matmul(x, kernel.astype(x.dtype), preferred_element_type=out_dtype)


def multi_head_attention(params, cfg, inputs_q, inputs_kv, mask, bias=None, rng=None):
  """Multi-head dot-product attention without 1/sqrt(d) scaling. -> [B, q, D].

  inputs_q [B, q, D], inputs_kv [B, k, D], mask bool broadcastable to [B, H, q, k] (True =
  may attend), bias float broadcastable to [B, H, q, k] or None. Dropout of the attention
  probabilities as T5X's `broadcast_dropout`: one mask per row, head and key, shared by all
  queries.

  NOTE: T5 does not scale the logits by 1/sqrt(head_dim): the query initializer is divided
  by sqrt(head_dim) instead (T5X `MultiHeadDotProductAttention`).
  """
  batch, q_len, _ = inputs_q.shape
  k_len = inputs_kv.shape[1]
  heads_shape = (cfg.num_heads, cfg.head_dim)
  query = dense(inputs_q, params['query']['kernel']).reshape(batch, q_len, *heads_shape)
  key = dense(inputs_kv, params['key']['kernel']).reshape(batch, k_len, *heads_shape)
  value = dense(inputs_kv, params['value']['kernel']).reshape(batch, k_len, *heads_shape)
  weights = attention_weights(query, key, mask, bias, inputs_q.dtype)  # [B, H, q, k]
  weights = dropout(weights, cfg.dropout_rate, rng, broadcast_dims=(-2,))  # along queries
  context = attention_context(weights, value)  # [B, q, H*K]
  return dense(context, params['out']['kernel'])  # [B, q, D]


def attention_weights(query, key, mask, bias, dtype):
  """Softmax over the keys of the masked, biased logits: query [R, q, H, K], key [R, k, H, K]
  (R rows) -> [R, H, q, k] in `dtype`.

  NOTE: logits and softmax are computed in float32 whatever the activation dtype (T5X by
  default runs the softmax in the activation dtype; float32 is the safer choice in bfloat16).
  """
  # As T5X: q, k, v laid out [batch, length, heads, kv] (heads on 'model' when it divides).
  query = partitioning.with_sharding_constraint(query, ('batch', 'length', 'heads', 'kv'))
  key = partitioning.with_sharding_constraint(key, ('batch', 'length', 'heads', 'kv'))
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    # NOTE (speed only): on XLA:CPU, `_cpu_add_bias` (end of this file); the same sum.
    logits = _cpu_add_bias(logits, bias) if jax.default_backend() == 'cpu' else logits + bias
  # NOTE: masked as T5X does (`combine_biases`): an additive MASKED_LOGIT where the mask is
  # False. XLA:CPU fuses it with the softmax in both passes; `jnp.where` was slower
  # (experiments/speed_512.md, lever 3).
  logits = logits + jnp.where(mask, 0.0, MASKED_LOGIT)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def attention_context(weights, value):
  """The probability-weighted sum of the values: weights [R, H, q, k], value [R, k, H, K] ->
  [R, q, H*K]."""
  value = partitioning.with_sharding_constraint(value, ('batch', 'length', 'heads', 'kv'))
  # NOTE (speed only): the values head-major ([R, H, k, K], a copy). From 'bhqk,bkhd->bqhd'
  # XLA:CPU computed the transposed product, slower in inference and in training
  # (experiments/speed_512.md, lever 5).
  context = jnp.einsum('bhqk,bhkd->bhqd', weights, value.transpose(0, 2, 1, 3))
  rows, _, q_len, _ = context.shape
  return context.transpose(0, 2, 1, 3).reshape(rows, q_len, -1)  # [R, q, H*K]


def gated_gelu_mlp(params, cfg, x, rng=None):
  """T5.1.1's FFN: wo(gelu_tanh(wi_0 x) * wi_1 x). [B, L, D] -> [B, L, F] -> [B, L, D]."""
  # NOTE: the gate and the product are computed from the matmuls' float32 accumulators and
  # rounded once to the activation dtype (T5X rounds each matmul's output first). The same in
  # float32; in bfloat16 one rounding fewer, and on XLA:CPU two conversion passes fewer.
  hidden = jax.nn.gelu(dense(x, params['wi_0']['kernel'], jnp.float32), approximate=True)
  hidden = (hidden * dense(x, params['wi_1']['kernel'], jnp.float32)).astype(x.dtype)
  hidden = partitioning.with_sharding_constraint(hidden, ('batch', 'length', 'mlp'))  # T5X
  hidden = dropout(hidden, cfg.dropout_rate, rng)  # T5X `intermediate_dropout_rate`
  return dense(hidden, params['wo']['kernel'])


def attention_block(cfg, norm_scale, attention, x, mask, bias=None, encoded=None, rng=None,
                    num_blocks=1):
  """Pre-norm residual attention: x + Dropout(Attention(RMSNorm(x), kv)).

  Self-attention when `encoded` is None (kv = RMSNorm(x)); cross-attention otherwise (kv =
  the encoder output, which the encoder already normalized). `num_blocks` n > 1: the
  encoder's self-attention within n blocks per row (`block_self_attention`).
  """
  attention_rng, dropout_rng = split_rng(rng, 2)
  h = rms_norm(x, norm_scale)
  if num_blocks > 1:
    h = block_self_attention(attention, cfg, h, mask, bias, attention_rng, num_blocks)
  else:
    kv = h if encoded is None else encoded
    h = multi_head_attention(attention, cfg, h, kv, mask, bias, attention_rng)
  return x + dropout(h, cfg.dropout_rate, dropout_rng)


def mlp_block(cfg, norm_scale, mlp, x, rng=None):
  """Pre-norm residual FFN: x + Dropout(GatedGeluMLP(RMSNorm(x)))."""
  mlp_rng, dropout_rng = split_rng(rng, 2)
  h = gated_gelu_mlp(mlp, cfg, rms_norm(x, norm_scale), mlp_rng)
  return x + dropout(h, cfg.dropout_rate, dropout_rng)


def encoder_layer(layer, cfg, x, mask, bias, rng=None, num_blocks=1):
  """One T5 encoder layer: self-attention block, then FFN block. [B, L, D] -> [B, L, D].

  `num_blocks` > 1: self-attention in the blocks the encoder chose (`attention_blocks`)."""
  attention_rng, mlp_rng = split_rng(rng, 2)
  x = attention_block(cfg, layer['pre_attention_layer_norm']['scale'], layer['attention'],
                      x, mask, bias, rng=attention_rng, num_blocks=num_blocks)
  return mlp_block(cfg, layer['pre_mlp_layer_norm']['scale'], layer['mlp'], x, mlp_rng)


def decoder_layer(layer, cfg, y, encoded, self_mask, self_bias, cross_mask, rng=None):
  """One T5 decoder layer: causal self-attention, cross-attention, FFN. [B, T, D] -> same.

  Used by the T5 and 1decT5 baselines; EncT5's pooling block is this layer without its
  self-attention.
  """
  self_rng, cross_rng, mlp_rng = split_rng(rng, 3)
  y = attention_block(cfg, layer['pre_self_attention_layer_norm']['scale'],
                      layer['self_attention'], y, self_mask, self_bias, rng=self_rng)
  y = attention_block(cfg, layer['pre_cross_attention_layer_norm']['scale'],
                      layer['encoder_decoder_attention'], y, cross_mask, encoded=encoded,
                      rng=cross_rng)
  return mlp_block(cfg, layer['pre_mlp_layer_norm']['scale'], layer['mlp'], y, mlp_rng)


# NOTE: T5X's `remat_policy` names (`scalable_t5/network.py`): what each layer keeps for the
# backward pass; the rest is recomputed there. 'minimal' keeps the outputs of the matmuls
# with weights (dots without batch dims), 'full' keeps only the layer's inputs.
REMAT_POLICIES = {
    'none': None,  # no rematerialization: everything is kept
    'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'full': jax.checkpoint_policies.nothing_saveable,
}


def layer_stack(layer_fn, layers, cfg, x, rngs):
  """x through each layer in turn: `layer_fn(layer, x, rng) -> x` for `layers` (a list of
  parameter trees `layers_i`) and their dropout keys `rngs`.

  With `cfg.remat_policy` other than 'none', each layer is a `jax.checkpoint` with that
  policy (on XLA:CPU it saves memory only inside the scan: experiments/pod_plan.md). With
  `cfg.scan_layers`, the layers are one `lax.scan` (T5X's option): XLA compiles one layer body
  whatever the depth. The parameters stay per layer (`layers_0`, ...), as in
  checkpoints, and are stacked here, inside the step: [layers, ...] per weight, one copy per
  step; their gradients flow back to each `layers_i` through the stacking.
  """
  if cfg.remat_policy != 'none':
    # NOTE: as T5X, `prevent_cse` is needed only outside a scan.
    layer_fn = jax.checkpoint(layer_fn, policy=REMAT_POLICIES[cfg.remat_policy],
                              prevent_cse=not cfg.scan_layers)
  if not cfg.scan_layers:
    for layer, rng in zip(layers, rngs):
      x = layer_fn(layer, x, rng)
    return x
  stacked = jax.tree.map(lambda *weights: jnp.stack(weights), *layers)
  stacked_rngs = None if rngs[0] is None else jnp.stack(rngs)

  def body(x, layer_and_rng):
    layer, rng = layer_and_rng
    return layer_fn(layer, x, rng), None
  x, _ = jax.lax.scan(body, x, (stacked, stacked_rngs))
  return x


def embed(embedding, ids, dtype):
  """Token embedding lookup: [B, L] int -> [B, L, D] in the activation dtype."""
  return jnp.take(embedding, ids, axis=0).astype(dtype)


def encoder(params, cfg, inputs, segment_ids, rng=None):
  """The T5.1.1 encoder stack (T5X `Encoder`). inputs, segment_ids [B, L] -> [B, L, D].

  Embedding, dropout, `num_layers` pre-norm layers sharing one attention mask (tokens see
  their own example: `self_attention_mask`) and one relative-position bias, final RMSNorm,
  dropout. With `cfg.attention_block_length` b, self-attention runs in blocks of b tokens,
  and the mask and bias are those of one block (`attention_blocks`).
  """
  embed_rng, final_rng, *layer_rngs = split_rng(rng, cfg.num_layers + 2)
  stack = params['encoder']
  x = embed(params['token_embedder']['embedding'], inputs, cfg.activation_dtype)
  x = dropout(x, cfg.dropout_rate, embed_rng)
  block_length, num_blocks = attention_blocks(cfg, inputs.shape[1])
  mask = self_attention_mask(segment_ids.reshape(-1, block_length))  # [B*n, 1, b, b]
  bias = relative_position_bias(stack['relpos_bias']['rel_embedding'], block_length,
                                block_length, bidirectional=True, cfg=cfg)  # [1, H, b, b]
  layers = [stack[f'layers_{i}'] for i in range(cfg.num_layers)]
  x = layer_stack(lambda layer, x, rng: encoder_layer(layer, cfg, x, mask, bias, rng,
                                                      num_blocks),
                  layers, cfg, x, layer_rngs)
  x = rms_norm(x, stack['encoder_norm']['scale'])
  # NOTE: T5X's `Encoder` drops its output without `broadcast_dims`: one mask per element.
  return dropout(x, cfg.dropout_rate, final_rng, broadcast_dims=())


def decoder(params, cfg, encoded, decoder_input_tokens, self_mask, cross_mask, num_layers,
            rng=None):
  """The T5.1.1 decoder stack (T5X `Decoder`), its first `num_layers` layers. -> [B, Ld, D].

  encoded [B, L, D]; decoder_input_tokens [B, Ld] (targets shifted right, BOS 0); self_mask
  [B, 1, Ld, Ld], cross_mask [B, 1, Ld, L] bool. Output after decoder_norm and dropout.
  NOTE: T5.1.1 embeds decoder tokens with the shared `token_embedder`; only the output
  projection is untied. The decoder has its own relative-position table, with causal buckets.
  """
  embed_rng, final_rng, *layer_rngs = split_rng(rng, num_layers + 2)
  stack = params['decoder']
  y = embed(params['token_embedder']['embedding'], decoder_input_tokens,
            cfg.activation_dtype)  # [B, Ld, D]
  y = dropout(y, cfg.dropout_rate, embed_rng)
  length = decoder_input_tokens.shape[1]
  bias = relative_position_bias(stack['relpos_bias']['rel_embedding'], length, length,
                                bidirectional=False, cfg=cfg)
  encoded = encoded.astype(cfg.activation_dtype)
  layers = [stack[f'layers_{i}'] for i in range(num_layers)]
  y = layer_stack(lambda layer, y, rng: decoder_layer(layer, cfg, y, encoded, self_mask, bias,
                                                      cross_mask, rng),
                  layers, cfg, y, layer_rngs)
  y = rms_norm(y, stack['decoder_norm']['scale'])
  return dropout(y, cfg.dropout_rate, final_rng)


# ---------------------------------------------------------------------------------------------
# Block-local self-attention, for speed (`cfg.attention_block_length`): the same numbers as
# whole rows when every example lies within one block. Only self-attention is computed in
# blocks; the layers keep whole rows [B, L, ...], whose dropout masks are shared along the
# length (one per example row, not per block), and self-attention's dropout is drawn for the
# whole rows too.
# ---------------------------------------------------------------------------------------------

def attention_blocks(cfg, length):
  """(b, n): the encoder's self-attention in n blocks of b tokens per row of `length` L.

  `cfg.attention_block_length` b > 0: block-local attention, the same outputs as whole rows when
  every example lies within one block (`packing.pack_examples(block_length=b)` packs so):
  an example never attends outside itself, and its relative positions are the same in its
  block as in its row. Attention then costs L*b per row in place of L*L.
  0: whole rows, b = L, n = 1.
  """
  block_length = cfg.attention_block_length or length
  if length % block_length:
    raise ValueError(f'rows of {length} tokens do not split into attention blocks of '
                     f'{block_length} (attention_block_length must divide the input length)')
  return block_length, length // block_length


def block_self_attention(params, cfg, x, mask, bias, rng, num_blocks):
  """Self-attention of x [B, L, D] within n blocks of b = L/n tokens per row, computed as B*n
  rows of one block each. -> [B, L, D].

  mask and bias are per block, broadcastable to [B*n, H, b, b] (`encoder` builds them). When
  no example crosses a block this is `multi_head_attention(x, x)` over whole rows, dropout
  included (`block_attention_dropout`).
  """
  batch, length, _ = x.shape
  blocks_shape = (batch * num_blocks, length // num_blocks, cfg.num_heads, cfg.head_dim)
  query = dense(x, params['query']['kernel']).reshape(blocks_shape)
  key = dense(x, params['key']['kernel']).reshape(blocks_shape)
  value = dense(x, params['value']['kernel']).reshape(blocks_shape)
  weights = attention_weights(query, key, mask, bias, x.dtype)  # [B*n, H, b, b]
  weights = block_attention_dropout(weights, cfg.dropout_rate, rng, num_blocks)
  context = attention_context(weights, value)  # [B*n, b, H*K]
  return dense(context.reshape(batch, length, -1), params['out']['kernel'])


def block_attention_dropout(weights, rate, rng, num_blocks):
  """Dropout of the attention probabilities of blocks [B*n, H, b, b] exactly as of the whole
  rows they are cut from: the mask is drawn for the rows, [B, H, 1, n*b] (one per row, head
  and key, shared by all queries, as in `multi_head_attention`), then cut into the blocks.
  """
  if rng is None or rate == 0.0:
    return weights
  rows, heads, _, keys = weights.shape
  batch = rows // num_blocks
  keep = jax.random.bernoulli(rng, 1.0 - rate, (batch, heads, 1, num_blocks * keys))
  keep = keep.reshape(batch, heads, num_blocks, keys).transpose(0, 2, 1, 3)  # [B, n, H, b]
  keep = keep.reshape(rows, heads, 1, keys)
  return jnp.where(keep, weights / (1.0 - rate), 0.0).astype(weights.dtype)


# ---------------------------------------------------------------------------------------------
# Below the model: two CPU speed details. Neither changes a number the model computes.
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_matmul(x, kernel, out_dtype):
  """x [..., in] @ kernel [in, out] -> [..., out] in `out_dtype`, accumulated in float32."""
  x2 = x.reshape(-1, x.shape[-1])  # [N, in], N = all tokens
  return _gemm(x2, kernel.astype(x.dtype)).astype(out_dtype).reshape(*x.shape[:-1], -1)


def _cpu_matmul_fwd(x, kernel, out_dtype):
  return _cpu_matmul(x, kernel, out_dtype), (x, kernel)


def _cpu_matmul_bwd(out_dtype, residuals, d_out):
  """d_x = d_out @ kernel^T and d_kernel = x^T @ d_out as plain GEMMs (N = all tokens).

  NOTE: d_kernel stays float32 whatever the activation dtype: the gradient of the float32
  kernel, not rounded to bfloat16 on its way there (as T5X's cast of the kernel does).
  """
  del out_dtype
  x, kernel = residuals
  x2 = x.reshape(-1, x.shape[-1])  # [N, in]
  d2 = d_out.reshape(-1, d_out.shape[-1]).astype(x.dtype)  # [N, out]
  d_x = _gemm(d2, kernel.astype(x.dtype), transpose_b=True).astype(x.dtype)
  d_kernel = _gemm(x2, d2, transpose_a=True)  # [in, N] @ [N, out]
  return d_x.reshape(x.shape), d_kernel


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def _gemm(a, b, transpose_a=False, transpose_b=False):
  """a [M, K] @ b [K, N] (a^T, b^T with `transpose_a`, `transpose_b`) -> float32 [M, N].

  NOTE (speed, XLA:CPU only): XLA:CPU's fast bfloat16 matmul (YNNPACK: bfloat16 x bfloat16
  -> float32, AVX512-BF16) takes row-major [M, K] @ [K, N] operands only. XLA folds a
  transposed operand (x^T in the weight gradient, kernel^T in the input gradient) into the
  dot's dimension numbers, and such a dot in bfloat16 runs in float32 after converting both
  operands: bfloat16 then gained nothing. Written as a batch of one ([1, K, M]), the transpose
  is materialized (a copy of one operand) and the dot stays bfloat16, faster than the folded
  form. In float32 the folded form is the faster one, and stays (experiments/speed_512.md,
  lever 4).
  """
  if a.dtype == jnp.bfloat16 and (transpose_a or transpose_b):
    a, b = a[None], b[None]  # [1, M, K], [1, K, N]
    a = a.transpose(0, 2, 1) if transpose_a else a
    b = b.transpose(0, 2, 1) if transpose_b else b
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)[0]
  a = a.T if transpose_a else a
  b = b.T if transpose_b else b
  return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _cpu_add_bias(logits, bias):
  """logits [R, H, q, k] + bias [1, H, q, k] (a bias shared by all R rows)."""
  return logits + bias


def _cpu_add_bias_fwd(logits, bias):
  return logits + bias, None


def _cpu_add_bias_bwd(_, d_logits):
  """d_bias = the sum of d_logits over the rows, computed as a [1, R] @ [R, H*q*k] matmul.

  NOTE (speed, XLA:CPU only): left to autodiff, this sum over the leading axis of every
  layer's d_logits (the position bias is shared by a stack's layers) became one slow XLA:CPU
  reduce fusion; as a matmul each layer's sum streams at memory speed
  (experiments/speed_512.md, lever 2). Same sum.
  """
  rows = d_logits.shape[0]
  ones = jnp.ones((1, rows), d_logits.dtype)
  return d_logits, (ones @ d_logits.reshape(rows, -1)).reshape(1, *d_logits.shape[1:])


_cpu_add_bias.defvjp(_cpu_add_bias_fwd, _cpu_add_bias_bwd)
