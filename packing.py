"""Packing: several GLUE examples share one fixed-shape input row (EncT5 paper §3, §4.1).

A packed row carries `inputs`, `inputs_segment_ids` (1, 2, ... per example, 0 = padding),
`inputs_positions` (restarting at 0 per example; as T5X's packed rows, though the model needs
only the segment ids) and `targets`: slot j holds the label of segment j+1 and 0, the padding
class, where the row has fewer examples. The attention masks made from the segment ids are
`t5_layers`'; this module is numpy only.

For the T5 and 1decT5 baselines (§4.3), `pack_seq2seq_examples` also writes each example's
target tokens into a decoder row, segment by segment, as T5X's packed feature converter does.

Rows are filled by best-fit decreasing: examples are taken longest first and each goes to
the open row whose free space fits it most tightly. seqio's `trim_and_pack_dataset` packs
greedily in arrival order (next-fit: a row closes as soon as an example does not fit); we
keep that as a baseline and never return more rows than it would.
"""
import logging

import numpy as np

log = logging.getLogger(__name__)  # pretrain.py quiets it: it packs a batch every step

METHODS = ('best_fit', 'next_fit', 'unpacked')


# ---------------------------------------------------------------------------------------------
# Assigning examples to rows. Each returns (row, slot, start) per example: the row it goes
# to, its slot in that row (segment id - 1) and the offset of its first token.
# ---------------------------------------------------------------------------------------------

def _next_fit(lengths, max_length, max_slots):
  """seqio's arrival-order greedy packing: one open row, closed when the next example fails."""
  n = len(lengths)
  row, slot, start = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
  r, used, count = -1, max_length, max_slots
  for i, length in enumerate(lengths):
    if used + length > max_length or count == max_slots:
      r, used, count = r + 1, 0, 0
    row[i], slot[i], start[i] = r, count, used
    used += length
    count += 1
  return row, slot, start


def _best_fit_decreasing(lengths, max_length, max_slots, new_row_lengths=None):
  """Longest first; each example goes to the open row with the least free space that fits.
  `new_row_lengths` (per example): the length of the row it opens when none fits (default
  max_length; `_assign_by_block` opens blocks of several lengths).

  Open rows are kept in buckets by free space, with a bit mask of the non-empty buckets, so
  "the smallest free space >= length" is one shift and one lowest-set-bit: O(1) per example.
  """
  n = len(lengths)
  row, slot, start = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
  order = np.argsort(-np.asarray(lengths, np.int64), kind='stable')  # ties: input order
  open_rows = [[] for _ in range(max_length + 1)]  # free space -> rows with that much free
  nonempty = 0  # bit s set iff open_rows[s] is not empty
  used, count, size = [], [], []  # per row: tokens and examples so far, its length
  for i in order.tolist():
    length = lengths[i]
    fits = nonempty >> length
    if fits:
      free = length + (fits & -fits).bit_length() - 1  # smallest free space >= length
      r = open_rows[free].pop()
      if not open_rows[free]:
        nonempty ^= 1 << free
    else:
      r = len(used)
      used.append(0)
      count.append(0)
      size.append(max_length if new_row_lengths is None else int(new_row_lengths[i]))
    row[i], slot[i], start[i] = r, count[r], used[r]
    used[r] += length
    count[r] += 1
    free = size[r] - used[r]
    if free > 0 and count[r] < max_slots:
      if not open_rows[free]:
        nonempty |= 1 << free
      open_rows[free].append(r)
  return row, slot, start


def _assign_rows(lengths, max_length, max_slots, method, block_length=None):
  """(row, slot, start) per example by `method` (see `pack_examples`), in blocks of
  `block_length` tokens if given."""
  n = len(lengths)
  if method == 'unpacked':
    return np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
  if block_length == 'by_block':
    return _assign_by_block(lengths, max_length, max_slots)
  if block_length:
    return _assign_blocks(lengths, max_length, max_slots, method, block_length)
  row, slot, start = _next_fit(lengths, max_length, max_slots)
  if method == 'best_fit':
    best = _best_fit_decreasing(lengths, max_length, max_slots)
    if n and best[0].max() <= row.max():  # never worse than seqio by construction
      row, slot, start = best
  return row, slot, start


def _assign_blocks(lengths, max_length, max_slots, method, block_length):
  """Examples into blocks of `block_length` tokens, then blocks into rows of
  max_length // block_length blocks and at most `max_slots` examples, by the same method
  at both levels (for rows, a block's size is its number of examples)."""
  assign = _best_fit_decreasing if method == 'best_fit' else _next_fit
  block, slot_in_block, start_in_block = assign(lengths, block_length, max_slots)
  examples_per_block = np.bincount(block).tolist()
  row, position, first_slot = assign(examples_per_block, int(max_slots),
                                     max_length // block_length)
  start = position[block] * block_length + start_in_block  # the block's offset + the example's
  return row[block], first_slot[block] + slot_in_block, start


def _assign_by_block(lengths, max_length, max_slots):
  """Examples into blocks of the inference block lengths (`inference_blocks`), best fit
  decreasing: each goes to the open block of any length with the least free space that holds
  it, else opens a block of the shortest length that holds it; then each length's blocks into
  rows of their own, as `_assign_blocks` does. Short examples fill the free space of longer
  examples' blocks before they open blocks of their own."""
  blocks = inference_blocks(max_length)
  shortest = [next(b for b in blocks if b >= length) for length in lengths]
  block, slot_in_block, start_in_block = _best_fit_decreasing(lengths, max_length, max_slots,
                                                              shortest)
  opened = slot_in_block == 0  # each block's first (longest) example opened it
  block_size = np.zeros(int(block.max()) + 1 if len(block) else 0, np.int64)
  block_size[block[opened]] = np.asarray(shortest, np.int64)[opened]
  row, first_slot, start = (np.empty(len(lengths), np.int64) for _ in range(3))
  rows_before = 0
  for b in blocks:  # the shortest blocks' rows first
    of_size = np.flatnonzero(block_size == b)  # these blocks, renumbered 0, 1, ...
    if not len(of_size):
      continue
    examples_per_block = np.bincount(block, minlength=len(block_size))[of_size].tolist()
    block_row, position, block_first_slot = _best_fit_decreasing(
        examples_per_block, int(max_slots), max_length // b)
    mine = np.isin(block, of_size)
    index = np.searchsorted(of_size, block[mine])
    row[mine] = rows_before + block_row[index]
    first_slot[mine] = block_first_slot[index]
    start[mine] = position[index] * b
    rows_before += int(block_row.max()) + 1
  return row, first_slot + slot_in_block, start + start_in_block


def _place(sequences, row, slot, start, shape):
  """Token sequences written into zero rows of `shape` -> (tokens, segment ids (slot + 1),
  positions (restarting at 0 per sequence)), int32 arrays of `shape`."""
  # Vectorized filling: token k of sequence i goes to flat index row*length + start + k.
  lengths = np.fromiter(map(len, sequences), np.int64, count=len(sequences))
  tokens = np.fromiter((t for sequence in sequences for t in sequence), np.int32,
                       count=int(lengths.sum()))
  first = np.cumsum(lengths) - lengths  # where each sequence starts in `tokens`
  offset_in_sequence = np.arange(len(tokens)) - np.repeat(first, lengths)
  flat = np.repeat(row * shape[1] + start, lengths) + offset_in_sequence
  placed = tuple(np.zeros(shape, np.int32) for _ in range(3))
  placed[0].ravel()[flat] = tokens
  placed[1].ravel()[flat] = np.repeat(slot + 1, lengths)
  placed[2].ravel()[flat] = offset_in_sequence
  return placed


def pack_examples(examples, max_input_length, max_target_length, *, method='best_fit',
                  regression=False, num_labels=None, ids=None, block_length=None):
  """Packs tokenized examples into fixed-shape numpy rows (§3: "we pack multiple examples").

  Args:
    examples: sequence of (token_ids, label); token_ids already truncated and ending in EOS
      (1 <= len <= max_input_length). label: a class id 1..n, a float score if `regression`,
      a sequence of class ids 1..num_labels (multi-label; empty for none), or None for
      unlabeled (test) examples, stored as 0 / 0.0 / no label.
    max_input_length: L, tokens per row.
    max_target_length: T, examples (target slots) per row at most; the paper uses 62.
    method: 'best_fit' (default; best-fit decreasing, never more rows than 'next_fit'),
      'next_fit' (seqio's arrival-order greedy packing) or 'unpacked' (one example per row).
    regression: float32 targets (STS-B) instead of int32 class ids.
    num_labels: n for multi-label examples: targets become multi-hot, slot j's label k (class
      id k + 1) at [.., j, k], and padding slots all zero.
    ids: per-example ids to record (default 0, 1, ...), e.g. each example's row in its file.
    block_length: b, 'by_block' or None. Rows are then L/b blocks of b tokens and every
      example lies within one block, as block-local attention needs (`enct5.EncT5Config.
      attention_block_length`): examples are packed into blocks, blocks into rows.
      'by_block' (inference): blocks of several lengths (`_assign_by_block`), each row of one
      length (`row_blocks` reads it back), so that attention costs each example about what it
      needs, as a batch padded to its longest example does, not what the longest example of
      all needs. Always best fit.

  Returns:
    dict of numpy arrays: inputs, inputs_segment_ids, inputs_positions [R, L] int32;
    targets [R, T] int32 (float32 if regression; [R, T, num_labels] int32 multi-hot for
    multi-label); example_ids [R, T] int32, -1 on empty slots.
    Deterministic: the same examples give the same rows.
  """
  if method not in METHODS:
    raise ValueError(f'unknown packing method {method!r}; expected one of {METHODS}')
  if max_input_length < 1 or max_target_length < 1:
    raise ValueError(f'max_input_length ({max_input_length}) and max_target_length '
                     f'({max_target_length}) must be >= 1')
  n = len(examples)
  ids = np.arange(n) if ids is None else np.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f'ids has shape {ids.shape}; expected ({n},), one per example')
  if regression and num_labels is not None:
    raise ValueError('regression and multi-label (num_labels) exclude each other')
  lengths = [len(tokens) for tokens, _ in examples]
  labels = label_array(examples, ids, regression=regression, num_labels=num_labels)
  _check_lengths(lengths, max_input_length, ids, 'tokens', 'max_input_length')
  _check_blocks(lengths, max_input_length, block_length, ids)

  row, slot, start = _assign_rows(lengths, max_input_length, max_target_length, method,
                                  block_length)
  num_rows = int(row.max()) + 1 if n else 0
  packed = dict(zip(('inputs', 'inputs_segment_ids', 'inputs_positions'),
                    _place([tokens for tokens, _ in examples], row, slot, start,
                           (num_rows, max_input_length))))
  packed['targets'] = np.zeros((num_rows, max_target_length) + labels.shape[1:], labels.dtype)
  packed['targets'][row, slot] = labels
  packed['example_ids'] = np.full((num_rows, max_target_length), -1, np.int32)
  packed['example_ids'][row, slot] = ids
  if n:
    log.info('packed %d examples into %d rows of %d tokens (%s): efficiency %.4f',
                 n, num_rows, max_input_length, method, efficiency(packed))
  return packed


def pack_seq2seq_examples(examples, max_input_length, max_target_length, *, method='best_fit',
                          ids=None, block_length=None):
  """Packs (input ids, target ids) pairs for the T5 and 1decT5 baselines (paper §4.3).

  The layout of T5X's `EncDecFeatureConverter` with packing: each example's target (its label
  as T5 text, tokenized, ending in EOS) goes to the decoder row of the input row it is in,
  segments in the same order.

  Args:
    examples: sequence of (input ids, target ids), both ending in EOS, 1 <= len <=
      max_input_length (max_target_length).
    max_input_length: L, input tokens per row.
    max_target_length: Ld, decoder tokens per row (T5X's `targets` feature length).
    method, ids, block_length: as in `pack_examples`.

  Returns:
    dict of numpy int32 arrays: inputs, inputs_segment_ids, inputs_positions [R, L];
    decoder_target_tokens, decoder_input_tokens, decoder_segment_ids [R, Ld]; example_ids
    [R, S], -1 on empty slots, with S = Ld // (longest target).
    decoder_input_tokens are the targets shifted right by one within each segment, BOS 0
    first (seqio `make_autoregressive_inputs` with `sequence_id`): targets [3, 8, 1, 9, 1]
    in segments [1, 1, 1, 2, 2] give decoder inputs [0, 3, 8, 0, 9].

  NOTE: rows are assigned as in `pack_examples`, by input length, with at most
  S = Ld // (longest target) examples per row so that every row's targets fit; seqio's
  `trim_and_pack_dataset` instead closes a row as soon as either feature is full.
  """
  if method not in METHODS:
    raise ValueError(f'unknown packing method {method!r}; expected one of {METHODS}')
  n = len(examples)
  ids = np.arange(n) if ids is None else np.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f'ids has shape {ids.shape}; expected ({n},), one per example')
  input_lengths = [len(tokens) for tokens, _ in examples]
  target_lengths = np.array([len(target) for _, target in examples], np.int64)
  _check_lengths(input_lengths, max_input_length, ids, 'tokens', 'max_input_length')
  _check_lengths(target_lengths, max_target_length, ids, 'target tokens', 'max_target_length')
  _check_blocks(input_lengths, max_input_length, block_length, ids)
  max_slots = max_target_length // max(target_lengths, default=1)
  row, slot, start = _assign_rows(input_lengths, max_input_length, max_slots, method,
                                  block_length)
  num_rows = int(row.max()) + 1 if n else 0
  target_start = _target_starts(row, slot, target_lengths)
  packed = dict(zip(('inputs', 'inputs_segment_ids', 'inputs_positions'),
                    _place([tokens for tokens, _ in examples], row, slot, start,
                           (num_rows, max_input_length))))
  targets, segment_ids, positions = _place([target for _, target in examples], row, slot,
                                           target_start, (num_rows, max_target_length))
  packed['decoder_target_tokens'] = targets
  packed['decoder_input_tokens'] = np.where(positions > 0, np.roll(targets, 1, axis=1),
                                            0).astype(np.int32)
  packed['decoder_segment_ids'] = segment_ids
  packed['example_ids'] = np.full((num_rows, max_slots), -1, np.int32)
  packed['example_ids'][row, slot] = ids
  if n:
    log.info('packed %d examples into %d rows of %d tokens, %d target tokens (%s): '
                 'efficiency %.4f', n, num_rows, max_input_length, max_target_length, method,
                 efficiency(packed))
  return packed


def _target_starts(row, slot, target_lengths):
  """Where each example's target starts in its decoder row: after the targets of the row's
  earlier slots."""
  order = np.lexsort((slot, row))
  before = np.cumsum(target_lengths[order]) - target_lengths[order]
  row_begins = np.searchsorted(row[order], row[order])  # the row's first slot, in `order`
  target_start = np.empty(len(row), np.int64)
  target_start[order] = before - before[row_begins]
  return target_start


def _check_lengths(lengths, max_length, ids, what, flag):
  bad = np.flatnonzero((np.asarray(lengths) < 1) | (np.asarray(lengths) > max_length))
  if len(bad):
    raise ValueError(f'example {ids[bad[0]]} has {lengths[bad[0]]} {what}; packing needs 1 to '
                     f'{flag}={max_length} (truncate before packing)')


def _check_blocks(lengths, max_length, block_length, ids):
  if block_length in (None, 'by_block'):
    return
  if block_length < 1 or max_length % block_length:
    raise ValueError(f'block_length={block_length} must be >= 1 and divide '
                     f'max_input_length={max_length}')
  _check_lengths(lengths, block_length, ids, 'tokens', 'block_length')


def block_length_for(lengths, max_length):
  """The smallest block b dividing `max_length` that holds the longest of `lengths`: the
  block-local attention that packing these examples allows (b = max_length: whole rows)."""
  longest = max(lengths, default=1)
  return min(b for b in range(1, max_length + 1) if max_length % b == 0 and b >= longest)


def rows_block_length(segment_ids):
  """The smallest block b dividing the row length L that no example of rows [R, L] crosses:
  block-local attention in blocks of b computes these rows exactly as whole rows do (b = L:
  whole rows). Rows packed with `block_length=b` allow b, or less."""
  length = segment_ids.shape[1]
  return next(b for b in range(1, length + 1)
              if length % b == 0 and _within_blocks(segment_ids, b).all())


def _within_blocks(segment_ids, b):
  """[R] bool: whether no example of rows [R, L] crosses a boundary of blocks of b tokens."""
  before, after = segment_ids[:, b - 1:-1:b], segment_ids[:, b::b]
  return ~np.any((before == after) & (after != 0), axis=1)


SHORTEST_INFERENCE_BLOCK = 128  # tokens


def inference_blocks(max_length):
  """The block lengths of inference rows (`pack_examples(block_length='by_block')`): the
  divisors of the row length L from SHORTEST_INFERENCE_BLOCK tokens up (L itself when
  shorter). A few, so a few compilations.

  NOTE (speed): on an Intel Xeon with AMX, EncT5-small labelled RTE dev at 1.27x Hugging
  Face's EncT5 in float32 and 1.68x in bfloat16 in rows by block, against 1.06x and 0.96x in
  one block of 512 for every row; blocks from 64 tokens up ran slower than from 128 (more
  batches; experiments/predict_speed.md).
  """
  shortest = min(SHORTEST_INFERENCE_BLOCK, max_length)
  return [b for b in range(shortest, max_length + 1) if max_length % b == 0]


def row_blocks(segment_ids):
  """[R]: for each row of [R, L], the shortest of `inference_blocks(L)` that no example of the
  row crosses (L, whole rows, at worst)."""
  blocks = inference_blocks(segment_ids.shape[1])
  within = np.stack([_within_blocks(segment_ids, b) for b in blocks], axis=1)  # [R, blocks]
  return np.array(blocks)[within.argmax(axis=1)]


def label_array(examples, ids=None, *, regression=False, num_labels=None):
  """Examples' labels as `pack_examples` stores them, one per example: class ids [N] int32,
  scores [N] float32 (`regression`), or multi-hot [N, num_labels] int32; checked, an error
  naming the example's id (default its index)."""
  ids = np.arange(len(examples)) if ids is None else ids
  if num_labels is None:
    return _labels(examples, ids, regression)
  return _multi_hot_labels(examples, ids, num_labels)


def _labels(examples, ids, regression):
  """Labels as a numpy vector; class ids must be 1..n (0 is the padding class)."""
  dtype = np.float32 if regression else np.int32
  labels = np.zeros(len(examples), dtype)
  for i, (_, label) in enumerate(examples):
    if label is None:
      continue
    if not regression and (isinstance(label, (bool, np.bool_)) or
                           not isinstance(label, (int, np.integer)) or label < 1):
      raise ValueError(f'example {ids[i]} has label {label!r}; expected a class id >= 1 '
                       '(0 is the padding class) or None')
    if regression and not np.isfinite(label):
      raise ValueError(f'example {ids[i]} has regression label {label!r}; expected a finite '
                       'number or None')
    labels[i] = label
  return labels


def _multi_hot_labels(examples, ids, num_labels):
  """Multi-label examples' labels as multi-hot rows [N, num_labels] int32: class id k + 1 at
  column k (class ids start at 1, as single labels do)."""
  labels = np.zeros((len(examples), num_labels), np.int32)
  for i, (_, label) in enumerate(examples):
    if label is None:
      continue
    if not isinstance(label, (list, tuple, np.ndarray)) or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
        and 1 <= k <= num_labels for k in label):
      raise ValueError(f'example {ids[i]} has labels {label!r}; expected class ids 1..'
                       f'{num_labels} (a sequence, empty for none) or None')
    labels[i, np.asarray(label, np.int64) - 1] = 1
  return labels


def efficiency(packed):
  """Real tokens / all tokens of the packed rows (1.0 = no padding)."""
  segment_ids = packed['inputs_segment_ids']
  return float((segment_ids > 0).sum() / max(segment_ids.size, 1))


def stats(packed):
  """Examples, rows, real tokens and efficiency of a packed set, for logs and notes."""
  return {'examples': int((packed['example_ids'] >= 0).sum()),
          'rows': len(packed['inputs']),
          'tokens': int((packed['inputs_segment_ids'] > 0).sum()),
          'efficiency': efficiency(packed)}


# ---------------------------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------------------------

def take_rows(packed, rows):
  """The packed rows `rows` (indices), every array."""
  return {name: array[rows] for name, array in packed.items()}


def eval_batches(packed, batch_size, tail_multiple=None):
  """Batches of `batch_size` rows covering the packed set exactly once, in order.

  The last batch is completed with empty rows: no tokens (segment 0), targets 0 and
  example_ids -1, so they count as no example anywhere. `tail_multiple` (inference: the mesh's
  data axis): the last batch has only the fewest rows of `tail_batch_size` that hold it, so a
  short tail costs its own rows, not a whole batch.
  """
  num_rows = len(packed['inputs'])
  for begin in range(0, num_rows, batch_size):
    batch = take_rows(packed, np.arange(begin, min(begin + batch_size, num_rows)))
    rows = batch_size if tail_multiple is None else tail_batch_size(
        len(batch['inputs']), batch_size, tail_multiple)
    missing = rows - len(batch['inputs'])
    if missing:
      batch = {name: np.concatenate([array, np.full((missing,) + array.shape[1:],
                                                    -1 if name == 'example_ids' else 0,
                                                    array.dtype)])
               for name, array in batch.items()}
    yield batch


def tail_batch_size(rows, batch_size, multiple):
  """The fewest rows that hold `rows` among batch_size, batch_size / 2, batch_size / 4, ... (a
  whole number and a multiple of `multiple`): a few shapes, so a few compilations."""
  size = batch_size
  while size % 2 == 0 and (size // 2) % multiple == 0 and size // 2 >= rows:
    size //= 2
  return size


def epoch_order(num_rows, seed, epoch):
  """The order of the rows in epoch `epoch`: a permutation seeded by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_rows)


def train_batches(packed, batch_size, seed, start_step=0):
  """Endless shuffled training batches; step s is the same whatever step you start from.

  The rows of all epochs form one stream (epoch e in `epoch_order(R, seed, e)`), cut into
  consecutive batches of `batch_size` rows, so a batch may span two epochs (as T5X's
  shuffle-repeat-batch) and no row is dropped. Resuming at `start_step` gives exactly the
  batches a run from step 0 would have seen from there on.
  """
  num_rows = len(packed['inputs'])
  if num_rows == 0:
    raise ValueError('train_batches: the packed set has no rows')
  position = start_step * batch_size  # in the stream of rows
  epoch, order = None, None
  while True:
    rows = np.empty(batch_size, np.int64)
    for k in range(batch_size):
      e, i = divmod(position + k, num_rows)
      if e != epoch:
        epoch, order = e, epoch_order(num_rows, seed, e)
      rows[k] = order[i]
    position += batch_size
    yield take_rows(packed, rows)


def per_example(example_ids, values):
  """Per-slot values back in example order: (ids ascending, the value of each id's slot).

  example_ids [R, T] (-1 = empty slot); values [R', T, ...] with R' >= R (the padded tail of
  `eval_batches` is ignored). E.g. `per_example(packed['example_ids'], packed['targets'])`.
  """
  values = np.asarray(values)
  rows, slots = example_ids.shape
  if len(values) < rows or values.shape[1] != slots:
    raise ValueError(f'values of shape {values.shape} do not cover example_ids of shape '
                     f'{example_ids.shape}')
  real = example_ids >= 0
  ids = example_ids[real]
  order = np.argsort(ids, kind='stable')
  ids = ids[order]
  if np.any(ids[1:] == ids[:-1]):
    raise ValueError(f'example id {ids[1:][ids[1:] == ids[:-1]][0]} occurs in two slots')
  return ids, values[:rows][real][order]
