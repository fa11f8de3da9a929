"""EncT5: a T5.1.1 encoder with a small pooling block for classification, regression and
multi-label classification.

Liu, Shakeri, Yu, Li (2021), "EncT5: Fine-tuning T5 Encoder for Non-autoregressive Tasks".
The decoder of a pre-trained T5 is replaced by (§3, Figure 1):

  encoder output --> cross-attention from one learned query per example --> the first
  decoder layer's FFN --> the decoder's final RMSNorm --> projection with bias to n+1 classes

Class 0 is the padding class (T5 pads targets with 0), so packed rows with fewer examples
than slots need no special case. Multi-label tasks project to n logits, one sigmoid per label,
with binary cross-entropy masked on the padding slots. Everything is a pure function of a
nested dict of arrays whose names are those of a T5X T5.1.1 checkpoint (`t5_layers` has the
building blocks; the paper's T5 and 1decT5 baselines are `t5`, with parameters from the same
table here).

Multi-task EncT5 (`EncT5Config.heads`): one encoder and pooling block, and per task its own
learned query, the paper's "task embedding" (§4.2), and its own class projection; each slot of
a packed row reads with its task's query and is projected by its task's head (`mixtures` trains
such a model on a mixture of tasks).

Reads in the paper's order: the config; the parameter table and init; the forward pass
(`encode`, `pool`, `apply`); losses and predictions. Then the sizes of the T5.1.1 family
(`get_config`), parameter counts and model FLOPs, and the baselines' decoder parameters.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

import partitioning
import t5_layers


@dataclasses.dataclass(frozen=True)
class Head:
  """One task of a multi-task EncT5: its name and its labels, as EncT5Config's num_classes and
  multi_label say them for one task."""
  name: str
  num_classes: int
  multi_label: bool = False


@dataclasses.dataclass(frozen=True)
class EncT5Config:
  """Sizes and options. Frozen, hence hashable: a static argument of `jax.jit`."""
  vocab_size: int = 32128  # T5's SentencePiece vocabulary of 32000, padded to a multiple of 128
  d_model: int = 512
  num_heads: int = 6
  head_dim: int = 64  # H * K need not equal D
  d_ff: int = 1024
  num_layers: int = 8  # encoder layers
  num_decoder_layers: int = 8  # only the T5 baseline uses more than the first
  num_buckets: int = 32  # relative-position buckets, per direction 16
  max_distance: int = 128  # distances beyond share the last bucket
  dropout_rate: float = 0.1  # T5's fine-tuning dropout
  num_classes: int = 2  # n real classes, ids 1..n; 1 means regression (STS-B)
  multi_label: bool = False  # n labels, each its own sigmoid (GoEmotions); not regression
  dtype: str = 'float32'  # activations: 'float32' or 'bfloat16'; parameters stay float32
  remat_policy: str = 'none'  # T5X's: 'none', 'minimal' or 'full' (t5_layers.REMAT_POLICIES)
  scan_layers: bool = False  # each stack's layers as one lax.scan (T5X's option)
  # Encoder self-attention in blocks of this many tokens, 0 = whole rows. The same outputs
  # when packing keeps each example within one block (`t5_layers.attention_blocks`).
  attention_block_length: int = 0
  # Multi-task: a task embedding and a class projection per Head, in task-id order; the batch's
  # task_ids say each slot's. (): one task, of num_classes and multi_label.
  heads: tuple = ()

  @property
  def is_regression(self):
    return self.num_classes == 1 and not self.multi_label

  @property
  def num_outputs(self):
    """n + 1 logits, class 0 being padding; one value for regression; n for multi-label,
    whose sigmoids need no padding class (its padding slots are masked in the loss)."""
    if self.multi_label:
      return self.num_classes
    return 1 if self.is_regression else self.num_classes + 1

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)


# ---------------------------------------------------------------------------------------------
# Parameters: each one declared once, with shape, T5X logical axes and T5X initializer. Init,
# sharding (partitioning.py), Adafactor factoring (adafactor.py) and parameter counts all derive
# from this table.
# ---------------------------------------------------------------------------------------------

ParamSpec = partitioning.ParamSpec

_INIT = jax.nn.initializers
_EMBEDDING_INIT = _INIT.normal(stddev=1.0)
_KERNEL_INIT = _INIT.variance_scaling(1.0, 'fan_in', 'normal')  # attention key/value/out
_MLP_INIT = _INIT.variance_scaling(1.0, 'fan_in', 'truncated_normal')
_RELPOS_INIT = _INIT.variance_scaling(1.0, 'fan_avg', 'uniform')


def _query_init(head_dim):
  """T5X folds attention's 1/sqrt(head_dim) into the query initializer."""
  def init(key, shape, dtype=jnp.float32):
    return _KERNEL_INIT(key, shape, dtype) / math.sqrt(head_dim)
  return init


def _attention_specs(cfg):
  inner = cfg.num_heads * cfg.head_dim
  return {
      'query': {'kernel': ParamSpec((cfg.d_model, inner), ('embed', 'joined_kv'),
                                    _query_init(cfg.head_dim))},
      'key': {'kernel': ParamSpec((cfg.d_model, inner), ('embed', 'joined_kv'), _KERNEL_INIT)},
      'value': {'kernel': ParamSpec((cfg.d_model, inner), ('embed', 'joined_kv'),
                                    _KERNEL_INIT)},
      'out': {'kernel': ParamSpec((inner, cfg.d_model), ('joined_kv', 'embed'), _KERNEL_INIT)},
  }


def _mlp_specs(cfg):
  return {
      'wi_0': {'kernel': ParamSpec((cfg.d_model, cfg.d_ff), ('embed', 'mlp'), _MLP_INIT)},
      'wi_1': {'kernel': ParamSpec((cfg.d_model, cfg.d_ff), ('embed', 'mlp'), _MLP_INIT)},
      'wo': {'kernel': ParamSpec((cfg.d_ff, cfg.d_model), ('mlp', 'embed'), _MLP_INIT)},
  }


def _norm_spec(cfg):
  return {'scale': ParamSpec((cfg.d_model,), ('embed',), _INIT.ones)}


def _relpos_spec(cfg):
  return {'rel_embedding': ParamSpec((cfg.num_heads, cfg.num_buckets),
                                     ('heads', 'relpos_buckets'), _RELPOS_INIT)}


def _decoder_layer_specs(cfg, with_self_attention):
  layer = {
      'pre_cross_attention_layer_norm': _norm_spec(cfg),
      'encoder_decoder_attention': _attention_specs(cfg),
      'pre_mlp_layer_norm': _norm_spec(cfg),
      'mlp': _mlp_specs(cfg),
  }
  if with_self_attention:
    layer['pre_self_attention_layer_norm'] = _norm_spec(cfg)
    layer['self_attention'] = _attention_specs(cfg)
  return layer


MODEL_NAMES = ('enct5', 't5', '1dect5')  # the parameter trees of `param_specs`


def param_specs(cfg, model='enct5'):
  """The parameter tree of `model` as ParamSpecs, named as in a T5X checkpoint.

  'enct5': embedding, encoder, the first decoder layer without self-attention, the decoder's
  final norm, and the new `decoder/bos_embedding` and `decoder/class_projection`; multi-task,
  those two for each task under `decoder/heads/<task name>/`.
  't5', '1dect5': the baselines, the same encoder with a T5.1.1 decoder
  (`_baseline_decoder_specs`).
  """
  if model not in MODEL_NAMES:
    raise ValueError(f'unknown model {model!r}; expected one of {MODEL_NAMES}')
  encoder = {f'layers_{i}': {'pre_attention_layer_norm': _norm_spec(cfg),
                             'attention': _attention_specs(cfg),
                             'pre_mlp_layer_norm': _norm_spec(cfg),
                             'mlp': _mlp_specs(cfg)}
             for i in range(cfg.num_layers)}
  encoder['relpos_bias'] = _relpos_spec(cfg)
  encoder['encoder_norm'] = _norm_spec(cfg)
  if model == 'enct5':
    decoder = {'layers_0': _decoder_layer_specs(cfg, with_self_attention=False),
               'decoder_norm': _norm_spec(cfg)}
    if cfg.heads:
      decoder['heads'] = {head.name: _head_specs(task_config(cfg, head.name))
                          for head in cfg.heads}
    else:
      decoder.update(_head_specs(cfg))
  else:
    decoder = _baseline_decoder_specs(cfg, model)
  return {
      'token_embedder': {'embedding': ParamSpec((cfg.vocab_size, cfg.d_model),
                                                ('vocab', 'embed'), _EMBEDDING_INIT)},
      'encoder': encoder,
      'decoder': decoder,
  }


def _head_specs(cfg):
  """A task's own parameters: its learned query, "randomly initialized" (§3) like a token
  embedding, and its projection with bias to the task's outputs."""
  return {'bos_embedding': ParamSpec((cfg.d_model,), ('embed',), _EMBEDDING_INIT),
          'class_projection': {
              'kernel': ParamSpec((cfg.d_model, cfg.num_outputs), ('embed', 'classes'),
                                  _MLP_INIT),
              'bias': ParamSpec((cfg.num_outputs,), ('classes',), _INIT.zeros)}}


def task_config(cfg, name):
  """A multi-task config's one task, as a one-task config (its labels, no heads)."""
  head = {head.name: head for head in cfg.heads}[name]
  return dataclasses.replace(cfg, num_classes=head.num_classes, multi_label=head.multi_label,
                             heads=())


def task_params(params, name):
  """A multi-task model's parameters for one task, as a one-task tree: the shared encoder and
  pooling block, and the task's query and class projection (the same arrays, not copies)."""
  decoder = {k: v for k, v in params['decoder'].items() if k != 'heads'}
  return {**params, 'decoder': {**decoder, **params['decoder']['heads'][name]}}


def _is_spec(x):
  return isinstance(x, ParamSpec)


def init_params(rng, cfg, model='enct5'):
  """Fresh float32 parameters with T5X's initializers; one key per parameter."""
  specs, treedef = jax.tree.flatten(param_specs(cfg, model), is_leaf=_is_spec)
  keys = jax.random.split(rng, len(specs))
  leaves = [spec.init(key, spec.shape, jnp.float32) for spec, key in zip(specs, keys)]
  return jax.tree.unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------
# The forward pass (§3, Figure 1).
# ---------------------------------------------------------------------------------------------

def encode(params, cfg, inputs, segment_ids=None, *, rng=None):
  """The T5.1.1 encoder. inputs [B, L] int32 (0 = padding) -> [B, L, D] float32.

  segment_ids [B, L]: 1, 2, ... per packed example, 0 = padding; without them the non-zero
  tokens of a row form one example. No positions: relative offsets within an example are the
  same wherever it sits in the row (see `t5_layers.relative_position_bias`). rng=None: no
  dropout.
  """
  if segment_ids is None:
    segment_ids = (inputs != 0).astype(jnp.int32)
  return t5_layers.encoder(params, cfg, inputs, segment_ids, rng).astype(jnp.float32)


def slot_queries(params, cfg, batch):
  """The learned query of every slot [B, T, D]: the one query, or multi-task each slot's task
  embedding (its task id in `batch['task_ids']` [B, T])."""
  decoder = params['decoder']
  if cfg.heads:
    embeddings = jnp.stack([decoder['heads'][head.name]['bos_embedding'] for head in cfg.heads])
    return embeddings[batch['task_ids']]
  batch_size, num_slots = batch['targets'].shape[:2]
  return jnp.broadcast_to(decoder['bos_embedding'], (batch_size, num_slots, cfg.d_model))


def pool(params, cfg, encoded, segment_ids, queries, rng=None):
  """EncT5's pooling block: one learned query per slot; slot j reads example j+1.

  encoded [B, L, D], segment_ids [B, L], queries [B, T, D] (`slot_queries`) -> [B, T, D] after
  the decoder's final norm.

  NOTE (§3): the paper keeps the first decoder layer but calls its self-attention an
  identity. Precisely, a single query that sees only itself gets y += o(v(RMSNorm(y))), a
  constant independent of the input; dropping it only re-parametrizes the learned query,
  so the block is cross-attention then FFN.
  """
  decoder = params['decoder']
  layer = decoder['layers_0']
  embed_rng, cross_rng, mlp_rng, final_rng = t5_layers.split_rng(rng, 4)
  y = queries.astype(cfg.activation_dtype)  # [B, T, D]
  y = t5_layers.dropout(y, cfg.dropout_rate, embed_rng)  # as T5X drops decoder embeddings
  mask = t5_layers.pooling_mask(segment_ids, queries.shape[1])  # [B, 1, T, L]
  # No position bias in cross-attention (T5).
  y = t5_layers.attention_block(cfg, layer['pre_cross_attention_layer_norm']['scale'],
                                layer['encoder_decoder_attention'], y, mask,
                                encoded=encoded.astype(cfg.activation_dtype), rng=cross_rng)
  y = t5_layers.mlp_block(cfg, layer['pre_mlp_layer_norm']['scale'], layer['mlp'], y,
                          mlp_rng)
  y = t5_layers.rms_norm(y, decoder['decoder_norm']['scale'])
  return t5_layers.dropout(y, cfg.dropout_rate, final_rng)


def apply(params, cfg, batch, *, rng=None):
  """Logits of every target slot: [B, T, n+1] (class 0 = padding), regression [B, T],
  multi-label [B, T, n]. Multi-task: {task name: that task's head on every slot}.

  `batch` is a packed batch (see `packing`): inputs, inputs_segment_ids [B, L] and targets
  [B, T] ([B, T, n] multi-hot for multi-label), whose width T is the number of query slots;
  multi-task, task_ids [B, T] (`mixtures`). An unpacked batch is a packed one with one example
  per row and T = 1. rng=None: no dropout.
  """
  encoder_rng, pool_rng = t5_layers.split_rng(rng, 2)
  segment_ids = batch['inputs_segment_ids']
  encoded = encode(params, cfg, batch['inputs'], segment_ids, rng=encoder_rng)
  pooled = pool(params, cfg, encoded, segment_ids, slot_queries(params, cfg, batch), pool_rng)
  if cfg.heads:  # every head on every slot: a [D, n+1] matmul each, cheap beside the encoder
    return {head.name: project(params['decoder']['heads'][head.name]['class_projection'],
                               task_config(cfg, head.name), pooled) for head in cfg.heads}
  return project(params['decoder']['class_projection'], cfg, pooled)


def apply_every_task(params, cfg, batch):
  """Multi-task, for tasks of one text: every task's logits on every slot, {task name: logits},
  from one encoder pass; each task's query pools the same encoded rows (`pool`) and its head
  projects them. No dropout. One forward instead of one a task."""
  segment_ids = batch['inputs_segment_ids']
  encoded = encode(params, cfg, batch['inputs'], segment_ids)
  batch_size, num_slots = batch['targets'].shape[:2]
  logits = {}
  for head in cfg.heads:
    task = params['decoder']['heads'][head.name]
    queries = jnp.broadcast_to(task['bos_embedding'], (batch_size, num_slots, cfg.d_model))
    logits[head.name] = project(task['class_projection'], task_config(cfg, head.name),
                                pool(params, cfg, encoded, segment_ids, queries))
  return logits


def project(projection, cfg, pooled):
  """The class projection with bias: pooled [B, T, D] -> logits (regression: [B, T]).

  NOTE: in float32 whatever the activation dtype."""
  logits = pooled.astype(jnp.float32) @ projection['kernel'] + projection['bias']
  return logits[..., 0] if cfg.is_regression else logits


# ---------------------------------------------------------------------------------------------
# Losses and predictions.
# ---------------------------------------------------------------------------------------------

def slot_is_example(batch):
  """[B, T] bool: slot j holds a real example iff the row has a segment j+1."""
  num_slots = batch['targets'].shape[1]
  num_segments = batch['inputs_segment_ids'].max(axis=1)  # segments are numbered 1, 2, ...
  return jnp.arange(1, num_slots + 1)[None, :] <= num_segments[:, None]


def example_losses(cfg, logits, batch):
  """Per-slot losses [B, T] and weights [B, T] (True where the slot holds an example).

  Classification: cross-entropy over the n+1 classes, masked on padding slots (target 0), so
  class 0 is never a target: training only pushes its logit down. Regression: squared error
  on the slots whose segment exists. Multi-label: binary cross-entropy of each label's
  sigmoid, summed over the n labels, on the slots whose segment exists.
  """
  targets = batch['targets']
  if cfg.is_regression:
    return jnp.square(logits - targets), slot_is_example(batch)
  if cfg.multi_label:
    # -[y log s(x) + (1 - y) log(1 - s(x))] = softplus(x) - y x, stable for large |x|.
    bce = jax.nn.softplus(logits) - targets.astype(jnp.float32) * logits  # [B, T, n]
    return jnp.sum(bce, axis=-1), slot_is_example(batch)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                                         axis=-1)[..., 0]
  return -target_log_probs, targets > 0


def loss_fn(params, cfg, batch, rng=None):
  """The summed loss of the real examples, and aux = {loss_sum, num_examples} for the logs
  (they report loss_sum / num_examples, the mean per example). rng=None: no dropout.

  NOTE: summed, as T5X sums token losses (loss_normalizing_factor None), not averaged: from a
  fresh optimizer state Adafactor is invariant to the gradient's scale, but fine-tuning continues
  the pre-trained checkpoint's second moments (§4.2), which a summed pre-training loss made; a
  mean over the ~300 examples of a batch gave gradients hundreds of times smaller than those
  moments expect and left the pre-trained weights all but frozen. Multi-label sums over
  labels too, as T5X over tokens. No z-loss: it regularizes T5's vocabulary softmax, which
  EncT5 does not have.
  """
  logits = apply(params, cfg, batch, rng=rng)
  if cfg.heads:
    return _multi_task_loss(cfg, logits, batch)
  losses, weights = example_losses(cfg, logits, batch)
  loss_sum = jnp.sum(jnp.where(weights, losses, 0.0))
  return loss_sum, {'loss_sum': loss_sum, 'num_examples': jnp.sum(weights)}


def _multi_task_loss(cfg, logits, batch):
  """Multi-task: each slot's loss is its task's (`example_losses` of its head, on its task's
  targets `targets/<name>`), summed over all slots as one task's are; aux adds each task's
  loss_sum/<name> and num_examples/<name>. A head's gradient comes from its task's slots only.
  """
  loss_sum, aux = 0.0, {}
  for task_id, head in enumerate(cfg.heads):
    task_batch = dict(batch, targets=batch[f'targets/{head.name}'])
    losses, weights = example_losses(task_config(cfg, head.name), logits[head.name], task_batch)
    weights = weights & (batch['task_ids'] == task_id)
    aux[f'loss_sum/{head.name}'] = jnp.sum(jnp.where(weights, losses, 0.0))
    aux[f'num_examples/{head.name}'] = jnp.sum(weights)
    loss_sum += aux[f'loss_sum/{head.name}']
  num_examples = sum(aux[f'num_examples/{head.name}'] for head in cfg.heads)
  return loss_sum, {'loss_sum': loss_sum, 'num_examples': num_examples, **aux}


def probabilities(logits, cfg):
  """Each label's probability [..., n]: softmax over the real classes 1..n (the padding class
  left out, so they sum to 1), or each label's sigmoid (multi-label)."""
  if cfg.is_regression:
    raise ValueError('regression predicts values, not probabilities')
  if cfg.multi_label:
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits[..., 1:], axis=-1)


def predict(logits, cfg, *, threshold=0.5):
  """Predicted class ids 1..n (the padding class is ignored), regression values, or for
  multi-label the multi-hot decisions [..., n] int32: probability >= threshold.

  NOTE: `>=`, as GoEmotions' own classifier keeps a label (`prob >= pred_cutoff`).
  """
  if cfg.is_regression:
    return logits
  if cfg.multi_label:
    return (jax.nn.sigmoid(logits) >= threshold).astype(jnp.int32)
  return jnp.argmax(logits[..., 1:], axis=-1) + 1


# ---------------------------------------------------------------------------------------------
# Configs by size name, parameter counts and model FLOPs.
# ---------------------------------------------------------------------------------------------

# Sizes of the T5.1.1 family, as T5X's gin files (`t5_1_1/`, `mt5/`, `byt5/`); totals match
# the published ones (test_hf.py). The `tiny` ones keep tests and the demo fast.
SIZES = {
    'tiny': dict(d_model=64, num_heads=4, head_dim=16, d_ff=128, num_layers=2,
                 num_decoder_layers=2),
    'small': dict(d_model=512, num_heads=6, head_dim=64, d_ff=1024, num_layers=8,
                  num_decoder_layers=8),
    'base': dict(d_model=768, num_heads=12, head_dim=64, d_ff=2048, num_layers=12,
                 num_decoder_layers=12),
    'large': dict(d_model=1024, num_heads=16, head_dim=64, d_ff=2816, num_layers=24,
                  num_decoder_layers=24),
    'xl': dict(d_model=2048, num_heads=32, head_dim=64, d_ff=5120, num_layers=24,
               num_decoder_layers=24),
    'xxl': dict(d_model=4096, num_heads=64, head_dim=64, d_ff=10240, num_layers=24,
                num_decoder_layers=24),
    # mT5 (T5X `mt5/{small,...}.gin`): T5.1.1's shapes over a 250,000-piece multilingual
    # SentencePiece vocabulary (+ 100 extra ids, padded to a multiple of 128).
    'mt5-tiny': dict(vocab_size=250112, d_model=64, num_heads=4, head_dim=16, d_ff=128,
                     num_layers=2, num_decoder_layers=2),
    'mt5-small': dict(vocab_size=250112, d_model=512, num_heads=6, head_dim=64, d_ff=1024,
                      num_layers=8, num_decoder_layers=8),
    'mt5-base': dict(vocab_size=250112, d_model=768, num_heads=12, head_dim=64, d_ff=2048,
                     num_layers=12, num_decoder_layers=12),
    'mt5-large': dict(vocab_size=250112, d_model=1024, num_heads=16, head_dim=64, d_ff=2816,
                      num_layers=24, num_decoder_layers=24),
    'mt5-xl': dict(vocab_size=250112, d_model=2048, num_heads=32, head_dim=64, d_ff=5120,
                   num_layers=24, num_decoder_layers=24),
    'mt5-xxl': dict(vocab_size=250112, d_model=4096, num_heads=64, head_dim=64, d_ff=10240,
                    num_layers=24, num_decoder_layers=24),
    # ByT5 (T5X `byt5/{small,...}.gin`): 384 ids (3 special + 256 bytes + 125 extra ids), an
    # encoder three times as deep as the decoder, and wider: the parameters the small
    # vocabulary frees go into the layers, so each size matches mT5's total.
    'byt5-tiny': dict(vocab_size=384, d_model=64, num_heads=4, head_dim=16, d_ff=128,
                      num_layers=3, num_decoder_layers=1),
    'byt5-small': dict(vocab_size=384, d_model=1472, num_heads=6, head_dim=64, d_ff=3584,
                       num_layers=12, num_decoder_layers=4),
    'byt5-base': dict(vocab_size=384, d_model=1536, num_heads=12, head_dim=64, d_ff=3968,
                      num_layers=18, num_decoder_layers=6),
    'byt5-large': dict(vocab_size=384, d_model=1536, num_heads=16, head_dim=64, d_ff=3840,
                       num_layers=36, num_decoder_layers=12),
    'byt5-xl': dict(vocab_size=384, d_model=2560, num_heads=32, head_dim=64, d_ff=6720,
                    num_layers=36, num_decoder_layers=12),
    'byt5-xxl': dict(vocab_size=384, d_model=4672, num_heads=64, head_dim=64, d_ff=12352,
                     num_layers=36, num_decoder_layers=12),
}


def padded_vocab_size(num_ids):
  """Embedding rows for a vocabulary of `num_ids` ids: rounded up to a multiple of 128, as
  T5's 32000 SentencePiece pieces + 100 sentinels become 32128 rows."""
  return -(-num_ids // 128) * 128


def get_config(size, num_classes=2, **overrides):
  """The config of a size, e.g. get_config('byt5-base', num_classes=3, dropout_rate=0.0)."""
  if size not in SIZES:
    raise ValueError(f'unknown size {size!r}; expected one of {sorted(SIZES)}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1 (1 = regression), got {num_classes}')
  fields = {f.name for f in dataclasses.fields(EncT5Config)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f'unknown config fields {sorted(unknown)}; known: {sorted(fields)}')
  if overrides.get('dtype', 'float32') not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {overrides['dtype']!r}")
  if overrides.get('attention_block_length', 0) < 0:
    raise ValueError(f"attention_block_length must be >= 0 (0 = whole rows), got "
                     f"{overrides['attention_block_length']}")
  if overrides.get('remat_policy', 'none') not in t5_layers.REMAT_POLICIES:
    raise ValueError(f'remat_policy must be one of {list(t5_layers.REMAT_POLICIES)}, '
                     f"got {overrides['remat_policy']!r}")
  return EncT5Config(**{**SIZES[size], 'num_classes': num_classes, **overrides})


def count_params(cfg, model='enct5'):
  """Number of parameters, from shapes alone (`jax.eval_shape`: free even for xxl)."""
  shapes = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg, model))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def train_step_flops(cfg, model, batch_size, input_length, target_length):
  """Model FLOPs of one train step on [batch_size, input_length] rows: 3x the forward pass
  (the backward pass costs twice the forward), as nanoGPT's `estimate_mfu`."""
  return 3 * forward_flops(cfg, model, batch_size, input_length, target_length)


def forward_flops(cfg, model, batch_size, input_length, target_length, block_length=0):
  """Model FLOPs of one forward pass on [batch_size, input_length] rows, the encoder's
  self-attention within blocks of `block_length` tokens (0: whole rows).

  `target_length`: EncT5's query slots T; T5's and 1decT5's decoder tokens. Counted: every
  matmul (2 x in x out per token: projections, FFNs, the class projection or the vocabulary
  logits) and attention's scores and context (2 x q x k x H*K each), over all positions,
  padding included; not norms, softmax or embedding lookups.
  """
  d, inner, length = cfg.d_model, cfg.num_heads * cfg.head_dim, input_length

  def attention(q, k):  # query/out over q tokens, key/value over k tokens, scores, context
    return 2 * 2 * q * d * inner + 2 * 2 * k * d * inner + 2 * 2 * q * k * inner

  def mlp(n):
    return 3 * 2 * n * d * cfg.d_ff

  block = block_length or length
  encoder = cfg.num_layers * (length // block * attention(block, block) + mlp(length))
  if model == 'enct5':
    head = (attention(target_length, length) + mlp(target_length)
            + 2 * target_length * d * cfg.num_outputs)
  else:
    layer = (attention(target_length, target_length) + attention(target_length, length)
             + mlp(target_length))
    head = (num_decoder_layers(cfg, model) * layer
            + 2 * target_length * d * cfg.vocab_size)
  return batch_size * (encoder + head)


# ---------------------------------------------------------------------------------------------
# The baselines' decoder parameters (§4.3), for `t5`.
# ---------------------------------------------------------------------------------------------

def num_decoder_layers(cfg, model):
  """Decoder layers of a model's tree: all of T5.1.1's for 't5'; only the first for '1dect5'
  (§4.3) and for 'enct5', whose pooling block keeps that layer without self-attention."""
  if model not in MODEL_NAMES:
    raise ValueError(f'unknown model {model!r}; expected one of {MODEL_NAMES}')
  return cfg.num_decoder_layers if model == 't5' else 1


def _baseline_decoder_specs(cfg, model):
  """The decoder of 't5', the full T5.1.1 decoder with the untied vocabulary projection
  `logits_dense`, or of '1dect5', the same with only the first layer (paper §4.3's 1decT5)."""
  decoder = {f'layers_{i}': _decoder_layer_specs(cfg, with_self_attention=True)
             for i in range(num_decoder_layers(cfg, model))}
  decoder['relpos_bias'] = _relpos_spec(cfg)
  decoder['decoder_norm'] = _norm_spec(cfg)
  decoder['logits_dense'] = {'kernel': ParamSpec((cfg.d_model, cfg.vocab_size),
                                                 ('embed', 'vocab'), _MLP_INIT)}
  return decoder
