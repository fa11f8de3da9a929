"""The paper's baselines (§4.3): T5 and 1decT5, from the same building blocks as EncT5.

T5 is the full T5.1.1 encoder-decoder: labels as text, vocabulary logits, teacher forcing,
greedy decoding. 1decT5 is the same model cut to its first decoder layer (self-attention kept),
`decoder_norm` and `logits_dense`. As T5X `EncoderDecoderModel` over `network.Transformer`.
Parameters are `enct5.init_params(rng, cfg, 't5' or '1dect5')`. Their labels are T5 text
(`LabelText`, at the end).
"""
import jax
import jax.numpy as jnp
import numpy as np

import enct5
import fileio
import metrics
import t5_layers
import vocabularies

Z_LOSS = 1e-4  # T5X's t5_1_1 gin: `EncoderDecoderModel.z_loss = 0.0001`


def decode(params, cfg, encoded, decoder_input_tokens, self_mask, cross_mask, *, model='t5',
           rng=None):
  """The decoder of `model` (its `num_decoder_layers`): -> [B, Ld, D], see `t5_layers.decoder`."""
  if model not in ('t5', '1dect5'):
    raise ValueError(f"baseline model must be 't5' or '1dect5', got {model!r}")
  num_layers = enct5.num_decoder_layers(cfg, model)
  decoder = params['decoder']
  if f'layers_{num_layers - 1}' not in decoder or 'logits_dense' not in decoder:
    raise ValueError(f'params have no decoder/layers_{num_layers - 1} or decoder/logits_dense: '
                     f"not a {model!r} tree (build it with init_params(rng, cfg, {model!r}))")
  return t5_layers.decoder(params, cfg, encoded, decoder_input_tokens, self_mask, cross_mask,
                           num_layers, rng)


def vocab_logits(params, decoded):
  """[..., D] -> [..., V] float32 with the untied `logits_dense`.

  NOTE: as T5X (`logits_dense` with dtype float32; no 1/sqrt(D) rescaling, which T5X applies
  only to logits through a tied embedding).
  """
  return decoded.astype(jnp.float32) @ params['decoder']['logits_dense']['kernel']


def apply(params, cfg, batch, *, model='t5', rng=None):
  """Vocabulary logits [B, Ld, V] float32 with teacher forcing (T5X `EncoderDecoderModel`).

  batch: inputs [B, L], inputs_segment_ids [B, L] (optional: then a row's non-zero tokens
  are one example), decoder_input_tokens and decoder_target_tokens [B, Ld], and for packed
  rows decoder_segment_ids [B, Ld] (segment s of the targets is the label of input segment s;
  decoder_input_tokens restart with BOS 0 in each segment). rng=None: no dropout.
  """
  encoder_rng, decoder_rng = t5_layers.split_rng(rng, 2)
  inputs = batch['inputs']
  segment_ids = batch.get('inputs_segment_ids')
  if segment_ids is None:
    segment_ids = (inputs != 0).astype(jnp.int32)
  encoded = t5_layers.encoder(params, cfg, inputs, segment_ids, encoder_rng)
  targets = batch['decoder_target_tokens']
  decoder_segment_ids = batch.get('decoder_segment_ids')
  self_mask = t5_layers.decoder_self_attention_mask(targets, decoder_segment_ids)
  cross_mask = t5_layers.decoder_cross_attention_mask(targets, segment_ids, decoder_segment_ids)
  decoded = decode(params, cfg, encoded, batch['decoder_input_tokens'], self_mask, cross_mask,
                   model=model, rng=decoder_rng)
  return vocab_logits(params, decoded)


def cross_entropy_with_z_loss(logits, targets, weights, z_loss=Z_LOSS):
  """T5X `cross_entropy_with_logits` summed with `weights`: -> (loss, z_loss part), scalars.

  Per token: logsumexp(z) - z[target] + z_loss * logsumexp(z)^2. logits [B, Ld, V], targets
  [B, Ld] int, weights [B, Ld].
  """
  log_z = jax.scipy.special.logsumexp(logits, axis=-1)  # [B, Ld]
  target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                      axis=-1)[..., 0]
  token_z_loss = z_loss * jnp.square(log_z)
  losses = log_z - target_logits + token_z_loss
  weights = weights.astype(logits.dtype)
  return jnp.sum(losses * weights), jnp.sum(token_z_loss * weights)


def loss_fn(params, cfg, batch, rng=None, *, model='t5'):
  """T5X's loss, and aux = {loss_sum, z_loss, num_tokens, num_examples, correct} for the logs:
  the summed loss (z-loss included) and its z-loss part, the target tokens, the examples
  (decoder segments) and the target tokens predicted right by argmax. rng=None: no dropout.

  NOTE: as T5X `EncoderDecoderModel.loss_fn` for T5.1.1: summed (loss_normalizing_factor
  None) token cross-entropy plus z-loss 1e-4, no label smoothing, weighted by
  `decoder_loss_weights` when given, else decoder_target_tokens > 0 (seqio's default).
  """
  logits = apply(params, cfg, batch, model=model, rng=rng)
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights', targets > 0)
  loss, z_loss = cross_entropy_with_z_loss(logits, targets, weights)
  segments = batch.get('decoder_segment_ids', (targets > 0).astype(jnp.int32))  # [B, Ld]
  correct = (jnp.argmax(logits, axis=-1) == targets) & (weights > 0)
  return loss, {'loss_sum': loss, 'z_loss': z_loss, 'num_tokens': jnp.sum(weights),
                'num_examples': jnp.sum(jnp.max(segments, axis=1)), 'correct': jnp.sum(correct)}


def greedy_decode(params, cfg, inputs, segment_ids=None, *, max_length, model='t5'):
  """Greedy decoding of one label string per row: inputs [B, L] -> tokens [B, max_length].

  Unpacked rows only (one example each; `segment_ids` 1 on its tokens, 0 on padding, default
  inputs != 0). Decoding stops at EOS; later positions hold 0. Jit with `cfg`, `max_length`
  and `model` static.
  NOTE: no key/value cache: step i re-runs the decoder over the whole fixed-length buffer
  (the causal mask keeps positions after i out of position i), max_length^2 decoder work in
  place of max_length. Fine for GLUE labels of a few tokens; not for long outputs.
  """
  if segment_ids is None:
    segment_ids = (inputs != 0).astype(jnp.int32)
  encoded = t5_layers.encoder(params, cfg, inputs, segment_ids)
  batch = inputs.shape[0]
  all_real = jnp.ones((batch, max_length), jnp.int32)
  self_mask = t5_layers.decoder_self_attention_mask(all_real)
  cross_mask = t5_layers.decoder_cross_attention_mask(all_real, segment_ids)

  def step(i, state):
    tokens, done = state  # [B, Ld] int32, [B] bool
    decoder_input_tokens = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # shift right, BOS 0
    decoded = decode(params, cfg, encoded, decoder_input_tokens, self_mask, cross_mask,
                     model=model)
    next_token = jnp.argmax(vocab_logits(params, decoded[:, i]), axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, 0, next_token)
    return tokens.at[:, i].set(next_token), done | (next_token == vocabularies.EOS_ID)

  init = (jnp.zeros((batch, max_length), jnp.int32), jnp.zeros((batch,), bool))
  tokens, _ = jax.lax.fori_loop(0, max_length, step, init)
  return tokens


# ---------------------------------------------------------------------------------------------
# Labels as T5 text, for the T5 and 1decT5 baselines (paper §4.3).
# ---------------------------------------------------------------------------------------------

def label_texts(task):
  """T5's target strings of a task: its label names, or STS-B's scores 0.0, 0.2, ..., 5.0.

  T5's text labels exist for single-label classification and for scores on STS-B's scale
  (T5's `stsb` rounds to 0.2); other regression and multi-label tasks are EncT5's only.
  """
  if task.is_multi_label or (task.is_regression and task.score_range != (0.0, 5.0)):
    raise fileio.DataError('T5 and 1decT5 write labels as text: single-label classes or '
                           f'STS-B\'s 0-5 scores, not the {task.kind} labels of '
                           f'{task.name or "this task"}; use EncT5')
  return [f'{i / 5:.1f}' for i in range(26)] if task.is_regression else list(task.label_names)


def label_text(task, label):
  """T5's target string of a label (`t5.data.preprocessors.glue` with `glue_utils`' label
  names; STS-B: `preprocessors.stsb`).

  NOTE: as T5, STS-B's score x becomes `tf.as_string(tf.round(x * 5) / 5, precision=1)` in
  float32 (TFDS stores the score as float32): rounding half to even, so 2.5 -> '2.4'.
  """
  if task.is_regression:
    return f'{np.round(np.float32(label) * np.float32(5)) / np.float32(5):.1f}'
  return task.label_names[label - 1]


class LabelText:
  """A task's labels as T5 text, for T5 and 1decT5 (paper §4.3): tokenized targets, and the way
  back from a greedily decoded string to a label (T5's GLUE postprocessors)."""

  def __init__(self, task, vocab):
    self.task, self.vocab = task, vocab
    for text in label_texts(task):
      if vocab.decode(vocab.encode(text)) != text:
        raise fileio.DataError(f'the vocabulary cannot spell the {task.name} label {text!r} '
                               f'(it decodes as {vocab.decode(vocab.encode(text))!r}); use '
                               'T5\'s vocabulary, or let train.py train one on the texts and '
                               'labels')
    # Decoding stops after the longest label and its EOS: anything longer is no label.
    self.decode_length = max(len(vocab.encode(text)) for text in label_texts(task)) + 1

  def tokens(self, labels):
    """Target ids of each label: its T5 text, tokenized, and EOS (seqio appends it)."""
    pieces = self.vocab.encode([label_text(self.task, label) for label in labels])
    return [ids + [vocabularies.EOS_ID] for ids in pieces]

  def parse(self, tokens):
    """Decoded tokens [B, decode_length] -> [B] class ids 1..n, or -1 where the text (the tokens
    before EOS) is no label; STS-B: floats, -1.0 where the text is no number.

    NOTE: as T5's `postprocessors.string_label_to_class_id` and `string_to_float`, whose
    default for an unknown string is -1 (`metrics.INVALID_PREDICTION`), which the metrics
    count wrong.
    """
    tokens = np.asarray(tokens)
    # Ids past the SentencePiece model (the embedding has rows up to a multiple of 128) as unk.
    unk = vocabularies.UNK_ID
    tokens = np.where(tokens < self.vocab.GetPieceSize(), tokens, unk).tolist()
    texts = []
    for row in tokens:
      end = row.index(vocabularies.EOS_ID) if vocabularies.EOS_ID in row else len(row)
      texts.append(self.vocab.decode(row[:end]))
    if self.task.is_regression:
      return np.array([_float_or(text, float(metrics.INVALID_PREDICTION)) for text in texts],
                      np.float32)
    names = self.task.label_names
    return np.array([names.index(text) + 1 if text in names else metrics.INVALID_PREDICTION
                     for text in texts],
                    np.int32)


def _float_or(text, default):
  try:
    return float(text)
  except ValueError:
    return default

