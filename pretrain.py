"""Pre-train a T5.1.1 with T5's span corruption on plain text: `python pretrain.py --flags`.

No released T5.1.1 checkpoint can be fetched here, so we make our own, exactly as T5 made its
own (Raffel et al. 2020, §3.1.4 and T5.1.1's recipe in T5X `configs/runs/pretrain.gin`), only
smaller, and fine-tune EncT5 from it (`train.py --checkpoint`, `experiments/table1.py`).

  python pretrain.py                       # ../shared/corpus: Wikipedia, held out WikiText-2
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python pretrain.py   # the same, faster
  python pretrain.py --corpus=my_texts/ --validation_corpus=held_out/ --output_dir=runs/pt

Reads top-down: the corpus (any directory of plain-text files; WikiExtractor's `<doc>` lines
dropped); the vocabulary (SentencePiece unigram with T5's special ids plus 100 sentinels);
span corruption (seqio's `random_spans_noise_mask`, T5's `span_corruption`); the batches of a
step (a function of the seed and the step alone, so a resumed run is exact); the loop.

The model, the batch, the devices and the run take the flags `cli.py` shares with train.py
(`--size`, `--d_model`, `--batch_size`, `--train_steps`, `--mesh`, `--output_dir`, ...), with
the defaults below; the model is always the full T5.1.1 encoder-decoder, and the loop is
train.py's (`loop.train_loop`). On this 2-core CPU, two virtual devices splitting each batch
(the default mesh puts every device on 'data') ran 7,300 input tokens/s against 6,000 for one
device. The checkpoints in OUTPUT_DIR/checkpoints are T5X checkpoints of the whole T5.1.1 tree
with Adafactor's state and step, and carry their `sentencepiece.model`.
"""
import contextlib
import functools
import glob
import io
import itertools
import logging as std_logging
import math
import os
from typing import NamedTuple

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

import cli
import enct5
import fileio
import finetune
import load_ckpt
import loop
import packing
import partitioning
import t5
import tasks
import vocabularies

SHARED_CORPUS = os.path.join(tasks.SHARED, 'corpus')

flags.DEFINE_string('corpus', os.path.join(SHARED_CORPUS, 'enwiki-2015-wikiextractor'),
                    'Directory of plain-text training files (read recursively, in name order).')
flags.DEFINE_string('validation_corpus', os.path.join(SHARED_CORPUS, 'wikitext-2-raw-test'),
                    'Directory of held-out plain-text files for the validation loss.')
flags.DEFINE_integer('num_extra_ids', 100, 'Sentinels appended to the SentencePiece pieces '
                     '(T5: 100; <extra_id_0> is the last id).')
flags.DEFINE_float('noise_density', 0.15, 'Share of tokens masked (T5: 0.15).')
flags.DEFINE_float('mean_noise_span_length', 3.0, 'Mean masked span length (T5: 3).')
flags.DEFINE_integer('warmup_steps', 1000, 'Learning rate 1/sqrt(max(step, warmup_steps)), '
                     'T5\'s inverse-square-root schedule (T5: 10000).')
flags.DEFINE_integer('cooldown_steps', 0, 'The last N of --train_steps take the rate linearly '
                     'down to --final_learning_rate (0: T5\'s schedule to the end). The '
                     'schedule then depends on --train_steps: resume with the same value.')
flags.DEFINE_float('final_learning_rate', 1e-3, 'The rate of the last step with '
                   '--cooldown_steps: 1e-3, where T5\'s released checkpoints ended (1/sqrt(1M)) '
                   'and where paper §4.1 fine-tunes them.')
flags.DEFINE_integer('validation_examples', 1024, 'Held-out examples scored at each evaluation.')
FLAGS = flags.FLAGS

# T5.1.1's pre-training recipe, scaled to 2 CPU cores and one hour (see README): no dropout,
# 128-token inputs, 32 rows a batch, a 8192-id vocabulary and a d_model 128 model with 4 + 4
# layers (4.5M parameters), 6,000 steps: the hour on 2 quiet cores. NOTE: measured here, at
# equal tokens seen, 32 rows a batch reach a lower loss than 64 (5.33 against 5.54 after 1M
# tokens) at the same tokens/s, and 16 no lower than 32; and the learning rate 1/sqrt(1000)
# beats T5's 0.01 (5.21 against 5.36 after 250 steps of 64 rows) while 1/sqrt(250) does worse.
# d_model 256 ran at ~900 input tokens/s (under load) against ~4,400 for 128.
DEFAULTS = dict(size='small', d_model=128, num_heads=4, head_dim=32, d_ff=512,
                num_layers=4, vocab_size=8092, max_input_length=128, batch_size=32,
                dropout_rate=0.0, train_steps=6000, eval_every=500, log_every=100,
                keep_checkpoints=2,
                output_dir=os.path.join('runs', 'pretrain'))



# ----------------------------------------------------------------------------------------------
# The corpus: documents of plain text.
# ----------------------------------------------------------------------------------------------

def corpus_files(directory):
  """Every regular file under `directory`, in name order (hidden files and MANIFESTs left out)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'corpus directory {directory} does not exist')
  files = sorted(path for path in glob.glob(os.path.join(directory, '**', '*'), recursive=True)
                 if os.path.isfile(path) and not os.path.basename(path).startswith('.')
                 and os.path.basename(path) not in ('MANIFEST.tsv', 'SHA256SUMS', 'SOURCES.md'))
  if not files:
    raise FileNotFoundError(f'corpus directory {directory} holds no files')
  return files


def read_paragraphs(path):
  """The non-blank lines of a text file, as paragraphs of documents.

  WikiExtractor's `<doc ...>` and `</doc>` lines are dropped, and so is the title line that
  follows `<doc ...>` (it repeats the title attribute).
  """
  paragraphs, after_doc = [], False
  with open(path, encoding='utf-8', errors='strict') as f:
    for line_number, line in enumerate(f, 1):
      line = line.strip()
      if line.startswith('<doc ') or line == '</doc>':
        after_doc = line.startswith('<doc ')
        continue
      if line and not after_doc:
        paragraphs.append(line)
      after_doc = after_doc and not line
  return paragraphs


def train_vocab(files, model_prefix, vocab_size, sample_paragraphs=300_000, seed=0):
  """A SentencePiece unigram model with T5's ids (pad 0, EOS 1, unk 2, no BOS) trained on a
  random sample of the corpus's paragraphs; writes `<model_prefix>.model`.

  `vocab_size` pieces exactly; with the sentinels the embedding has vocab_size + 100 rows
  (T5: 32000 + 100, padded to 32128). Every printable ASCII character is kept, so that
  GLUE's label texts (`not_equivalent`, ...) and numbers can be spelled.
  """
  paragraphs = [p for path in files for p in read_paragraphs(path)]
  rng = np.random.default_rng(seed)
  if len(paragraphs) > sample_paragraphs:
    paragraphs = [paragraphs[i] for i in np.sort(rng.choice(len(paragraphs), sample_paragraphs,
                                                            replace=False))]
  logging.info('training a %d-piece SentencePiece model on %d paragraphs into %s.model',
               vocab_size, len(paragraphs), model_prefix)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(paragraphs), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type='unigram', pad_id=vocabularies.PAD_ID, eos_id=vocabularies.EOS_ID,
      unk_id=vocabularies.UNK_ID, bos_id=-1, max_sentence_length=16384,
      required_chars=''.join(map(chr, range(33, 127))),
      num_threads=os.cpu_count(), minloglevel=2)
  return vocabularies.load_vocab(model_prefix + '.model')


def tokenize_corpus(vocab, files):
  """All files' paragraphs as one stream of SentencePiece ids (T5 concatenates documents
  without a separator before splitting them into chunks: `reduce_concat_tokens`)."""
  dtype = np.uint16 if vocab.GetPieceSize() <= 2**16 else np.int32
  pieces = []
  for i, path in enumerate(files):
    ids = vocab.encode(read_paragraphs(path), out_type=int, num_threads=os.cpu_count())
    pieces.extend(np.asarray(x, dtype) for x in ids)
    if (i + 1) % 10 == 0 or i + 1 == len(files):
      logging.info('tokenized %d of %d files', i + 1, len(files))
  return np.concatenate(pieces) if pieces else np.zeros((0,), dtype)


# ----------------------------------------------------------------------------------------------
# Span corruption (T5 §3.1.4; seqio `random_spans_noise_mask`, T5 `preprocessors.span_corruption`).
# ----------------------------------------------------------------------------------------------

def _random_segmentation(num_items, num_segments, rng):
  """Lengths of a random partition of `num_items` into `num_segments` non-empty segments."""
  first_in_segment = np.zeros(num_items, bool)
  first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
  return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(length, rng, noise_density=0.15, mean_noise_span_length=3.0):
  """seqio `random_spans_noise_mask`: bool [length], True on the noise tokens.

  round(length * noise_density) noise tokens (at least 1, at most length - 1) in
  max(round(num_noise / mean_noise_span_length), 1) spans; noise and non-noise lengths are
  random partitions into that many non-empty spans, interleaved starting with non-noise.
  NOTE: the counts are rounded in float32, half to even, as seqio's `tf.round`.
  """
  orig_length = length
  length = max(length, 2)  # seqio: a 1-token sequence is treated as 2 and cut back
  num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
  num_noise_spans = int(np.round(np.float32(num_noise_tokens) /
                                 np.float32(mean_noise_span_length)))
  num_noise_spans = max(num_noise_spans, 1)
  num_nonnoise_tokens = length - num_noise_tokens
  noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
  nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
  interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  span_start_indicator = np.zeros(length, bool)
  span_start_indicator[span_starts] = True
  is_noise = np.cumsum(span_start_indicator) % 2 == 1
  return is_noise[:orig_length]


def _replace_spans_with_sentinels(tokens, mask, first_sentinel):
  """seqio `noise_span_to_unique_sentinel`: each run of masked tokens becomes one sentinel,
  first_sentinel, first_sentinel - 1, ... in order."""
  previous_is_masked = np.concatenate([[False], mask[:-1]])
  first_masked = mask & ~previous_is_masked
  sentinels = first_sentinel + 1 - np.cumsum(first_masked)
  tokens = np.where(first_masked, sentinels, tokens)
  return tokens[~(mask & previous_is_masked)]


def span_corruption(tokens, rng, *, first_sentinel, noise_density=0.15,
                    mean_noise_span_length=3.0):
  """T5's objective on one chunk: -> (inputs, targets), int arrays without EOS.

  inputs: the chunk with each noise span replaced by one sentinel; targets: each noise span
  after its sentinel (seqio `nonnoise_span_to_unique_sentinel`: the non-noise spans become the
  sentinels). E.g. "Thank you <X> me to your party <Y> week." / "<X> for inviting <Y> last".
  """
  tokens = np.asarray(tokens)
  noise_mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
  return (_replace_spans_with_sentinels(tokens, noise_mask, first_sentinel),
          _replace_spans_with_sentinels(tokens, ~noise_mask, first_sentinel))


def random_spans_helper(inputs_length, noise_density=0.15, mean_noise_span_length=3.0):
  """T5 `random_spans_helper`: (raw tokens per chunk, targets length) such that a chunk's
  corrupted inputs plus EOS are exactly `inputs_length` long (T5: 512 -> (568, 114))."""
  def lengths(tokens_length):
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    # inputs: non-noise tokens, one sentinel per span, EOS; targets: noise, sentinels, EOS.
    return (num_nonnoise_tokens + num_noise_spans + 1,
            num_noise_tokens + num_noise_spans + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths(tokens_length)[1]


# ----------------------------------------------------------------------------------------------
# Batches: chunks of the token stream, corrupted, packed.
# ----------------------------------------------------------------------------------------------

def chunk(tokens, tokens_length):
  """The token stream cut into rows of `tokens_length` raw tokens (T5 `split_tokens`).

  NOTE: T5 keeps the shorter last piece of each concatenated group; we drop the one short
  tail of the whole stream, so every example fills its row exactly.
  """
  num_chunks = len(tokens) // tokens_length
  if num_chunks == 0:
    raise ValueError(f'the corpus has {len(tokens)} tokens, fewer than one chunk of '
                     f'{tokens_length}')
  return tokens[:num_chunks * tokens_length].reshape(num_chunks, tokens_length)


class Objective(NamedTuple):
  """T5's span corruption and the lengths it fills: sentinels count down from
  `first_sentinel` (<extra_id_0>); `inputs_length` and `targets_length` include EOS."""
  first_sentinel: int
  inputs_length: int
  targets_length: int
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0


def corrupt(chunks, rngs, objective):
  """Span-corrupted chunks with EOS, as packed T5 rows (`packing.pack_seq2seq_examples`).

  NOTE: `random_spans_helper` sizes the chunks so that every example fills its row exactly,
  so T5X's packing puts one example in each row: we pack them 'unpacked', which is the same
  and keeps the batch shape fixed.
  """
  examples = []
  for tokens, rng in zip(chunks, rngs):
    inputs, targets = span_corruption(tokens, rng, first_sentinel=objective.first_sentinel,
                                      noise_density=objective.noise_density,
                                      mean_noise_span_length=objective.mean_noise_span_length)
    eos = vocabularies.EOS_ID
    examples.append((np.append(inputs, eos), np.append(targets, eos)))
  return packing.pack_seq2seq_examples(examples, objective.inputs_length,
                                       objective.targets_length, method='unpacked')


class TrainBatches:
  """The batch of every step, a function of (seed, step) alone: the chunks in the order
  `packing.epoch_order(num_chunks, seed, epoch)`, each corrupted with its own generator
  seeded by (seed, epoch, chunk), so a new epoch masks other spans and a resumed run sees
  exactly the batches of an uninterrupted one."""

  def __init__(self, chunks, batch_size, seed, objective):
    self.chunks, self.batch_size, self.seed, self.objective = chunks, batch_size, seed, objective
    self._epoch, self._order = None, None

  def __call__(self, step):
    """The batch of step `step` (0-based: the batch that the update from step to step + 1
    reads)."""
    num_chunks = len(self.chunks)
    chosen, rngs = [], []
    for k in range(step * self.batch_size, (step + 1) * self.batch_size):
      epoch, i = divmod(k, num_chunks)
      if epoch != self._epoch:
        self._epoch, self._order = epoch, packing.epoch_order(num_chunks, self.seed, epoch)
      chosen.append(self._order[i])
      rngs.append(np.random.default_rng([self.seed, epoch, self._order[i]]))
    return corrupt(self.chunks[chosen], rngs, self.objective)


def validation_set(chunks, num_examples, seed, objective):
  """The first `num_examples` held-out chunks, corrupted once with fixed seeds."""
  chunks = chunks[:num_examples]
  rngs = [np.random.default_rng([seed, 2**32 - 1, i]) for i in range(len(chunks))]
  return corrupt(chunks, rngs, objective)


# ----------------------------------------------------------------------------------------------
# Objective and metrics: T5X's loss (summed token cross-entropy + z-loss 1e-4, `t5.loss_fn`).
# ----------------------------------------------------------------------------------------------

TRAIN_KEYS = ('inputs', 'inputs_segment_ids', 'decoder_input_tokens', 'decoder_target_tokens',
              'decoder_segment_ids')


def learning_rate(step, warmup_steps, train_steps, cooldown_steps=0, final_rate=1e-3):
  """The rate of Adafactor's step `step` (0 for the first update): T5's inverse-square-root
  schedule, `1/sqrt(max(step, warmup_steps))` (T5X `rsqrt_decay` with base 1.0), 0.01 for T5's
  first 10,000 steps and 0.032 for our first 1,000. With `cooldown_steps`, the last of
  `train_steps` fall linearly from it to `final_rate`, reached at the last step: T5's released
  checkpoints ended 1M steps at 1e-3, ten times below their start, and our runs are too short
  for the inverse square root to get there (0.009 at step 12,000)."""
  rate = jax.lax.rsqrt(jnp.maximum(step, warmup_steps).astype(jnp.float32))
  if not cooldown_steps:
    return rate
  start = train_steps - cooldown_steps
  start_rate = 1.0 / math.sqrt(max(start, warmup_steps))
  fraction = jnp.clip((step + 1 - start) / cooldown_steps, 0.0, 1.0)
  return jnp.where(step < start, rate, start_rate + fraction * (final_rate - start_rate))


def summarize(sums):
  """The logged training figures, per target token: cross-entropy (without z-loss), z-loss,
  and the accuracy (%) of the argmax."""
  tokens = max(sums['num_tokens'], 1)
  return {'loss': (sums['loss_sum'] - sums['z_loss']) / tokens,
          'z_loss': sums['z_loss'] / tokens, 'accuracy': 100.0 * sums['correct'] / tokens}


def evaluate(eval_step, params, packed, shardings, batch_size):
  """Held-out cross-entropy per target token, token accuracy (%), and the cross-entropy with
  every example's inputs swapped for the previous example's. `eval_step(params, batch)` ->
  `t5.loss_fn`'s aux.

  The swap measures what the decoder reads from the encoder, the part EncT5 keeps: a decoder
  that predicts the spans from its own targets alone (a language model of the spans) scores
  the same either way.
  """
  swapped = dict(packed, **{k: np.roll(packed[k], 1, axis=0)
                            for k in ('inputs', 'inputs_segment_ids')})
  results = []
  for examples in (packed, swapped):
    sums = dict(loss_sum=0.0, z_loss=0.0, num_tokens=0, correct=0)
    for batch in packing.eval_batches(examples, batch_size):
      aux = eval_step(params, partitioning.global_batch({k: batch[k] for k in TRAIN_KEYS},
                                                        shardings.batch))
      for key in sums:
        sums[key] += float(aux[key])
    figures = summarize(sums)
    results.append((figures['loss'], figures['accuracy']))
  (loss, accuracy), (swapped_loss, _) = results
  return loss, accuracy, swapped_loss


# ----------------------------------------------------------------------------------------------
# The run: vocabulary and token caches in OUTPUT_DIR, then the loop.
# ----------------------------------------------------------------------------------------------

def prepare_vocab():
  """--vocab, else OUTPUT_DIR/sentencepiece.model trained earlier, else one trained now on
  --corpus. Returns (path, vocab); the path is copied into every checkpoint."""
  path = os.path.join(FLAGS.output_dir, finetune.CHECKPOINT_VOCAB)
  if FLAGS.vocab:
    return FLAGS.vocab, vocabularies.load_vocab(FLAGS.vocab)
  if not os.path.isfile(path):
    if jax.process_count() > 1:
      raise app.UsageError('train the vocabulary with one process first (--train_steps=0), '
                           'or pass --vocab')
    prefix = os.path.join(FLAGS.output_dir, 'sentencepiece.tmp')
    train_vocab(corpus_files(FLAGS.corpus), prefix, FLAGS.vocab_size, seed=FLAGS.seed)
    os.replace(prefix + '.model', path)
    os.remove(prefix + '.vocab')
  logging.info('vocabulary: %s', path)
  return path, vocabularies.load_vocab(path)


def cached_tokens(name, directory, vocab):
  """The token stream of a corpus, tokenized once into OUTPUT_DIR/data/<name>.npy."""
  path = os.path.join(FLAGS.output_dir, 'data', f'{name}.npy')
  if os.path.isfile(path):
    return np.load(path)
  tokens = tokenize_corpus(vocab, corpus_files(directory))
  npy = io.BytesIO()
  np.save(npy, tokens)
  fileio.write_atomically(path, npy.getvalue())
  logging.info('%s: %d tokens from %s, cached in %s', name, len(tokens), directory, path)
  return tokens


def model_config(vocab):
  """T5.1.1 of --size with the shape flags; as many decoder layers as encoder layers; the
  embedding has the pieces and the sentinels, padded to a multiple of 128 (T5: 32128)."""
  shape = {name: FLAGS[name].value for name in finetune.SHAPE_FIELDS
           if FLAGS[name].value is not None}
  num_layers = shape.get('num_layers', enct5.SIZES[FLAGS.size]['num_layers'])
  return enct5.get_config(
      FLAGS.size, vocab_size=enct5.padded_vocab_size(vocab.GetPieceSize() + FLAGS.num_extra_ids),
      num_decoder_layers=num_layers, dropout_rate=FLAGS.dropout_rate, dtype=FLAGS.dtype,
      remat_policy=FLAGS.remat_policy, scan_layers=FLAGS.scan_layers, **shape)


def pretrain(cfg, mesh, batches, validation, vocab_path, objective, watchdog=None):
  """`loop.train_loop` with T5X's loss, Adafactor with T5's schedule, a checkpoint and the
  held-out loss every --eval_every steps, from the latest checkpoint in OUTPUT_DIR or T5X's
  initialization (seed --seed)."""
  shardings = partitioning.Shardings(enct5.param_specs(cfg, 't5'), mesh)
  restored = load_ckpt.restore_checkpoint(os.path.join(FLAGS.output_dir, 'checkpoints'),
                                          shardings=shardings.params,
                                          opt_shardings=shardings.opt_state)
  params, opt_state = restored or loop.init_train_state(cfg, 't5', shardings,
                                                        jax.random.PRNGKey(FLAGS.seed))
  start = loop.adafactor_step(opt_state)
  schedule = functools.partial(learning_rate, warmup_steps=FLAGS.warmup_steps,
                               train_steps=FLAGS.train_steps, cooldown_steps=FLAGS.cooldown_steps,
                               final_rate=FLAGS.final_learning_rate)
  step = loop.TrainStep(
      fn=loop.make_train_step(cfg, shardings, t5.loss_fn, schedule, FLAGS.seed), keys=TRAIN_KEYS,
      batch_sharding=shardings.batch, dtype=cfg.activation_dtype,
      flops=enct5.train_step_flops(cfg, 't5', FLAGS.batch_size, FLAGS.max_input_length,
                                   objective.targets_length))
  eval_step = jax.jit(lambda p, batch: t5.loss_fn(p, cfg, batch)[1],
                      in_shardings=(shardings.params, shardings.batch),
                      out_shardings=shardings.replicated)

  def evaluate_now(params):
    loss, accuracy, swapped = evaluate(eval_step, params, validation, shardings,
                                       FLAGS.batch_size)
    logging.info('eval | held-out loss %.4f (%.4f with swapped inputs) | token accuracy %.2f%%',
                 loss, swapped, accuracy)
    return dict(validation_loss=loss, validation_accuracy=accuracy,
                validation_loss_swapped_inputs=swapped)

  with open(vocab_path, 'rb') as f:
    extra_files = {finetune.CHECKPOINT_VOCAB: f.read()}
  logging.info('T5.1.1 %s: %s parameters; %d training chunks of %d tokens; batch %d; steps '
               '%d..%d', cfg, f'{enct5.count_params(cfg, "t5"):,}', len(batches.chunks),
               batches.chunks.shape[1], FLAGS.batch_size, start, FLAGS.train_steps)
  settings = loop.Settings(FLAGS.train_steps, FLAGS.eval_every, FLAGS.log_every,
                           FLAGS.keep_checkpoints, FLAGS.output_dir)
  loop.train_loop(settings, loop.TrainState(params, opt_state, start), step,
                  map(batches, itertools.count(start)), evaluate_now, summarize,
                  extra_files=extra_files, watchdog=watchdog)


def check_flags():
  """Numbers that cannot work stop here, before anything is read or written."""
  cli.check_positive()
  if not 0 <= FLAGS.cooldown_steps <= FLAGS.train_steps:
    raise app.UsageError(f'--cooldown_steps={FLAGS.cooldown_steps}: must be between 0 and '
                         f'--train_steps={FLAGS.train_steps}')
  if not FLAGS.final_learning_rate > 0:
    raise app.UsageError(f'--final_learning_rate={FLAGS.final_learning_rate}: must be positive')


def main(argv):
  cli.run('pretrain.py', run_command, argv)


def run_command(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  check_flags()
  with cli.start_up() as watchdog, (cli.lock_output_dir(FLAGS.output_dir)
                                    if jax.process_index() == 0 else contextlib.nullcontext()):
    std_logging.getLogger('packing').setLevel(std_logging.WARNING)  # a line a batch otherwise
    try:
      mesh = partitioning.make_mesh(FLAGS.mesh, batch_size=FLAGS.batch_size)
    except ValueError as e:
      raise cli.UserError(str(e)) from None
    vocab_path, vocab = prepare_vocab()
    cfg = model_config(vocab)
    tokens_length, targets_length = random_spans_helper(
        FLAGS.max_input_length, FLAGS.noise_density, FLAGS.mean_noise_span_length)
    objective = Objective(
        first_sentinel=vocab.GetPieceSize() + FLAGS.num_extra_ids - 1,  # <extra_id_0>
        inputs_length=FLAGS.max_input_length, targets_length=targets_length,
        noise_density=FLAGS.noise_density, mean_noise_span_length=FLAGS.mean_noise_span_length)
    logging.info('span corruption: %d raw tokens -> %d inputs, %d targets; <extra_id_0> = %d',
                 tokens_length, FLAGS.max_input_length, targets_length, objective.first_sentinel)
    batches = TrainBatches(chunk(cached_tokens('train', FLAGS.corpus, vocab), tokens_length),
                           FLAGS.batch_size, FLAGS.seed, objective)
    validation = validation_set(
        chunk(cached_tokens('validation', FLAGS.validation_corpus, vocab), tokens_length),
        FLAGS.validation_examples, FLAGS.seed, objective)
    pretrain(cfg, mesh, batches, validation, vocab_path, objective, watchdog)


if __name__ == '__main__':
  # Here, not at import: tests import both this module and train.py's flags.
  for name, value in DEFAULTS.items():
    FLAGS.set_default(name, value)
  app.run(main)
