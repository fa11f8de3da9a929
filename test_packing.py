"""Tests of packing.py: examples packed into rows (best fit, next fit, in attention blocks,
multi-label, the decoder rows of the T5 and 1decT5 baselines), by hand and by random properties;
evaluation and training batches.

The key test (`test_packed_logits_equal_unpacked`) runs `enct5.apply` on the same examples
packed and unpacked (paper §3: packing must not change any example's output).
"""
import dataclasses

import jax
import numpy as np
import pytest

import enct5
import metrics
import packing
import t5


# ----------------------------------------------------------------------------- packing, by hand

# Lengths 4, 3, 2, 1, 2 into rows of L=6 with at most T=3 examples.
HAND_EXAMPLES = [([10, 11, 12, 1], 1), ([20, 21, 1], 2), ([30, 1], 3), ([1], 1), ([50, 1], 2)]


def test_best_fit_by_hand():
  # Longest first: 4 -> row 0; 3 -> row 1; 2 -> row 0 (free 2, the tightest); 2 -> row 1;
  # 1 -> row 1, which then holds T=3 examples, and both rows end exactly at L.
  packed = packing.pack_examples(HAND_EXAMPLES, 6, 3)
  np.testing.assert_array_equal(packed['inputs'], [[10, 11, 12, 1, 30, 1],
                                                   [20, 21, 1, 50, 1, 1]])
  np.testing.assert_array_equal(packed['inputs_segment_ids'], [[1, 1, 1, 1, 2, 2],
                                                               [1, 1, 1, 2, 2, 3]])
  np.testing.assert_array_equal(packed['inputs_positions'], [[0, 1, 2, 3, 0, 1],
                                                             [0, 1, 2, 0, 1, 0]])
  np.testing.assert_array_equal(packed['targets'], [[1, 3, 0], [2, 2, 1]])
  np.testing.assert_array_equal(packed['example_ids'], [[0, 2, -1], [1, 4, 3]])
  assert packing.efficiency(packed) == 1.0
  assert all(packed[name].dtype == np.int32 for name in packed)


def test_next_fit_by_hand():
  # seqio's arrival order: 4 | 3 2 1 | 2 -- the 3 does not fit after the 4, so row 0 closes.
  packed = packing.pack_examples(HAND_EXAMPLES, 6, 3, method='next_fit')
  np.testing.assert_array_equal(packed['inputs'], [[10, 11, 12, 1, 0, 0],
                                                   [20, 21, 1, 30, 1, 1],
                                                   [50, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(packed['inputs_segment_ids'], [[1, 1, 1, 1, 0, 0],
                                                               [1, 1, 1, 2, 2, 3],
                                                               [1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(packed['inputs_positions'], [[0, 1, 2, 3, 0, 0],
                                                             [0, 1, 2, 0, 1, 0],
                                                             [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(packed['targets'], [[1, 0, 0], [2, 3, 1], [2, 0, 0]])
  np.testing.assert_array_equal(packed['example_ids'], [[0, -1, -1], [1, 2, 3], [4, -1, -1]])
  assert packing.efficiency(packed) == 12 / 18


def test_unpacked_and_regression():
  packed = packing.pack_examples([([5, 1], 2.5), ([1], None)], 3, 1, method='unpacked',
                                 regression=True, ids=[7, 9])
  np.testing.assert_array_equal(packed['inputs'], [[5, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(packed['inputs_segment_ids'], [[1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(packed['targets'], [[2.5], [0.0]])  # None: unlabeled
  assert packed['targets'].dtype == np.float32
  np.testing.assert_array_equal(packed['example_ids'], [[7], [9]])


@pytest.mark.parametrize('examples, message', [
    ([([1] * 7, 1)], 'has 7 tokens'),
    ([([], 1)], 'has 0 tokens'),
    ([([5, 1], 0)], 'padding class'),
    ([([5, 1], 1.5)], 'class id'),
])
def test_pack_rejects_bad_examples(examples, message):
  with pytest.raises(ValueError, match=message):
    packing.pack_examples(examples, 6, 3)


def test_multi_label_packing_by_hand():
  examples = [([10, 11, 12, 1], (1, 3)), ([20, 21, 1], ()), ([30, 1], (2,)), ([1], None)]
  packed = packing.pack_examples(examples, 6, 3, num_labels=3)
  # Best fit: 4 -> row 0; 3 -> row 1; 2 -> row 0 (free 2); 1 -> row 1.
  np.testing.assert_array_equal(packed['example_ids'], [[0, 2, -1], [1, 3, -1]])
  np.testing.assert_array_equal(packed['targets'], [[[1, 0, 1], [0, 1, 0], [0, 0, 0]],
                                                    [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
  assert packed['targets'].dtype == np.int32
  batches = list(packing.eval_batches(packed, 3))  # padded with an empty row
  targets = np.concatenate([b['targets'] for b in batches])
  assert targets.shape == (3, 3, 3) and not targets[2].any()
  ids, per_example = packing.per_example(packed['example_ids'], targets)
  np.testing.assert_array_equal(ids, [0, 1, 2, 3])
  np.testing.assert_array_equal(per_example, metrics.multi_hot([(1, 3), (), (2,), ()], 3))
  for bad in ((4,), (0,), 1, ('1',), (True,)):
    with pytest.raises(ValueError, match='expected class ids 1..3'):
      packing.pack_examples([([5, 1], bad)], 6, 3, num_labels=3)
  with pytest.raises(ValueError, match='exclude each other'):
    packing.pack_examples([([5, 1], 1.0)], 6, 3, regression=True, num_labels=3)


# ------------------------------------------------------------------- packing, random properties

def _random_examples(rng, n, max_length):
  lengths = rng.integers(1, max_length + 1, n)
  return [(rng.integers(3, 100, length).tolist()[:-1] + [1], int(rng.integers(1, 4)))
          for length in lengths]


def _check_packing(examples, packed, max_length, max_slots, block_length=None):
  """Every example once, whole and contiguous, positions from 0, its label in its slot;
  segments in slot order from the row start, padding only at the end of the row or, with
  `block_length`, of a block, and then every example within one block."""
  segment_ids, ids = packed['inputs_segment_ids'], packed['example_ids']
  assert sorted(ids[ids >= 0].tolist()) == list(range(len(examples)))
  for r in range(len(ids)):
    num = int((ids[r] >= 0).sum())
    assert 1 <= num <= max_slots and (ids[r, :num] >= 0).all()  # slots fill from the left
    assert (packed['targets'][r, num:] == 0).all()
    assert set(np.unique(segment_ids[r])) <= set(range(num + 1))
    end = 0
    for slot in range(num):
      tokens, label = examples[ids[r, slot]]
      start = int(np.argmax(segment_ids[r] == slot + 1))
      if start != end:  # padding between examples: only up to the next block
        assert block_length and start % block_length == 0 and start - end < block_length
        assert (segment_ids[r, end:start] == 0).all()
      end = start + len(tokens)
      if block_length:
        assert start // block_length == (end - 1) // block_length, 'example across blocks'
      np.testing.assert_array_equal(packed['inputs'][r, start:end], tokens)
      np.testing.assert_array_equal(segment_ids[r, start:end], slot + 1)
      np.testing.assert_array_equal(packed['inputs_positions'][r, start:end],
                                    np.arange(len(tokens)))
      assert packed['targets'][r, slot] == label
    assert end <= max_length and (packed['inputs'][r, end:] == 0).all()


@pytest.mark.parametrize('seed', range(4))
def test_random_packing_properties(seed):
  rng = np.random.default_rng(seed)
  max_length, max_slots = int(rng.integers(8, 64)), int(rng.integers(1, 12))
  examples = _random_examples(rng, int(rng.integers(1, 300)), max_length)
  best = packing.pack_examples(examples, max_length, max_slots)
  greedy = packing.pack_examples(examples, max_length, max_slots, method='next_fit')
  unpacked = packing.pack_examples(examples, max_length, 1, method='unpacked')
  for packed, slots in ((best, max_slots), (greedy, max_slots), (unpacked, 1)):
    _check_packing(examples, packed, max_length, slots)
  assert len(best['inputs']) <= len(greedy['inputs'])
  assert packing.efficiency(best) >= packing.efficiency(greedy)
  assert len(unpacked['inputs']) == len(examples)
  again = packing.pack_examples(examples, max_length, max_slots)
  for name in best:
    np.testing.assert_array_equal(best[name], again[name])


@pytest.mark.parametrize('seed', range(4))
def test_random_block_packing_properties(seed):
  rng = np.random.default_rng(seed)
  block_length = int(rng.integers(4, 16))
  max_length, max_slots = block_length * int(rng.integers(1, 5)), int(rng.integers(1, 12))
  examples = _random_examples(rng, int(rng.integers(1, 300)), block_length)
  for method in ('best_fit', 'next_fit'):
    packed = packing.pack_examples(examples, max_length, max_slots, method=method,
                                   block_length=block_length)
    _check_packing(examples, packed, max_length, max_slots, block_length)


def test_block_packing_by_hand():
  # Lengths 5, 3, 8, 2, 6, 4 into blocks of b=8, two blocks a row, at most T=4 examples.
  # Examples into blocks, longest first, best fit: 8 -> block 0 (exactly full); 6 -> block 1;
  # 5 -> block 2; 4 -> block 3; 3 -> block 2 (free 3); 2 -> block 1 (free 2).
  # Blocks into rows by their example counts 1, 2, 2, 1, most first, best fit: block 1 ->
  # row 0; block 2 -> row 0 (T reached); block 0 -> row 1; block 3 -> row 1.
  examples = [([i] * n, 1 + i % 2) for i, n in enumerate([5, 3, 8, 2, 6, 4])]
  packed = packing.pack_examples(examples, 16, 4, block_length=8)
  np.testing.assert_array_equal(packed['inputs_segment_ids'],
                                [[1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4],
                                 [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]])
  np.testing.assert_array_equal(packed['example_ids'], [[4, 3, 0, 1], [2, 5, -1, -1]])
  np.testing.assert_array_equal(packed['inputs'][1], [2] * 8 + [5] * 4 + [0] * 4)
  assert packing.efficiency(packed) == 28 / 32
  with pytest.raises(ValueError, match='example 6 has 9 tokens.*block_length=8'):
    packing.pack_examples(examples + [([1] * 9, 1)], 16, 4, block_length=8)
  with pytest.raises(ValueError, match='block_length=6 must be >= 1 and divide'):
    packing.pack_examples(examples, 16, 4, block_length=6)


def test_block_length_for_holds_the_longest_example():
  assert packing.block_length_for([3, 9, 2], 32) == 16  # divisors of 32: ..., 8, 16, 32
  assert packing.block_length_for([3, 9, 2], 24) == 12  # divisors of 24: ..., 8, 12, 24
  assert packing.block_length_for([8], 32) == 8  # an example exactly filling its block
  assert packing.block_length_for([30], 32) == 32  # whole rows


def test_rows_block_length_is_the_smallest_block_no_example_crosses():
  """The block `infer` runs packed rows in: no example may straddle a block boundary; padding
  (segment 0) may."""
  rows = np.array([[1, 1, 2, 2, 0, 0, 0, 0],
                   [1, 2, 3, 3, 4, 4, 0, 0]])
  assert packing.rows_block_length(rows) == 2
  assert packing.rows_block_length(np.array([[1, 1, 1, 2, 2, 2, 0, 0]])) == 8  # 2 spans 3|4
  assert packing.rows_block_length(np.array([[1, 1, 1, 2, 0, 0, 0, 0]])) == 4
  assert packing.rows_block_length(np.array([[1, 2, 3, 4, 5, 6]])) == 1
  packed = packing.pack_examples([([5] * n, 1) for n in (3, 9, 2, 7, 16)], 32, 4,
                                 block_length=16)
  assert packing.rows_block_length(packed['inputs_segment_ids']) <= 16


def test_inference_rows_are_packed_and_read_back_by_the_shortest_block_that_holds_them():
  """block_length='by_block': each example in a block of the shortest inference length (128
  tokens up) that holds it, or in the free space of a longer example's block; `row_blocks`
  reads each row's block back, never one an example crosses."""
  assert packing.inference_blocks(512) == [128, 256, 512]
  assert packing.inference_blocks(384) == [128, 192, 384]
  assert packing.inference_blocks(64) == [64]  # rows shorter than the shortest block: whole
  examples = [([5] * n, 1) for n in (10, 100, 200, 300, 128)]
  packed = packing.pack_examples(examples, 512, 4, block_length='by_block')
  # 300 opens a block of 512, whose free 212 tokens take 200 and then 10; 128 and 100 each
  # open a block of 128 (a row of four such blocks).
  assert packing.row_blocks(packed['inputs_segment_ids']).tolist() == [128, 512]
  assert [sorted(row[row >= 0].tolist()) for row in packed['example_ids']] == [[1, 4], [0, 2, 3]]
  crossing = np.zeros((1, 512), np.int32)
  crossing[0, :100], crossing[0, 100:200] = 1, 2  # example 2 spans the boundary at 128
  assert packing.row_blocks(crossing).tolist() == [256]


def test_best_fit_never_worse_than_next_fit():
  rng = np.random.default_rng(0)
  for _ in range(300):
    max_length, max_slots = int(rng.integers(2, 16)), int(rng.integers(1, 5))
    lengths = rng.integers(1, max_length + 1, int(rng.integers(1, 25))).tolist()
    best = packing._best_fit_decreasing(lengths, max_length, max_slots)[0].max()
    greedy = packing._next_fit(lengths, max_length, max_slots)[0].max()
    assert best <= greedy


# -------------------------------------------------------------------------------------- batches

def _packed_rows(num_examples, seed=0):
  return packing.pack_examples(_random_examples(np.random.default_rng(seed), num_examples, 10),
                               16, 4)


def test_the_tail_batch_of_inference_has_the_rows_it_needs():
  assert [packing.tail_batch_size(n, 16, 1) for n in (1, 2, 3, 5, 8, 9, 16)] == [
      1, 2, 4, 8, 8, 16, 16]
  assert packing.tail_batch_size(1, 16, 4) == 4  # a multiple of the mesh's data axis
  assert packing.tail_batch_size(1, 12, 1) == 3  # 12, 6, 3: whole numbers only
  packed = _packed_rows(50)
  num_rows = len(packed['inputs'])
  batches = list(packing.eval_batches(packed, 8, tail_multiple=1))
  assert [len(b['inputs']) for b in batches[:-1]] == [8] * (len(batches) - 1)
  assert len(batches[-1]['inputs']) == packing.tail_batch_size(num_rows % 8 or 8, 8, 1)
  stacked = np.concatenate([b['example_ids'] for b in batches])
  np.testing.assert_array_equal(stacked[:num_rows], packed['example_ids'])
  assert (stacked[num_rows:] == -1).all()


def test_eval_batches_cover_once_and_pad():
  packed = _packed_rows(50)
  num_rows = len(packed['inputs'])
  batches = list(packing.eval_batches(packed, 4))
  assert len(batches) == -(-num_rows // 4)
  stacked = {name: np.concatenate([b[name] for b in batches]) for name in packed}
  for name in packed:
    assert all(b[name].shape[0] == 4 for b in batches)
    np.testing.assert_array_equal(stacked[name][:num_rows], packed[name])
  padding = len(stacked['inputs']) - num_rows
  assert padding == -num_rows % 4
  assert (stacked['inputs_segment_ids'][num_rows:] == 0).all()
  assert (stacked['targets'][num_rows:] == 0).all()
  assert (stacked['example_ids'][num_rows:] == -1).all()
  ids, targets = packing.per_example(stacked['example_ids'], stacked['targets'])
  np.testing.assert_array_equal(ids, np.arange(50))
  _, expected = packing.per_example(packed['example_ids'], packed['targets'])
  np.testing.assert_array_equal(targets, expected)


def test_train_batches_shuffle_resume_and_cover_epochs():
  packed = _packed_rows(60)
  num_rows = len(packed['inputs'])
  stream = packing.train_batches(packed, 5, seed=3)
  first = [next(stream) for _ in range(12)]
  # Each epoch is a permutation of the rows: ids of one epoch are all examples, once.
  row_ids = np.concatenate([b['example_ids'] for b in first])
  for epoch in range(len(row_ids) // num_rows):
    ids = row_ids[epoch * num_rows:(epoch + 1) * num_rows]
    assert sorted(ids[ids >= 0].tolist()) == list(range(60))
  # Resuming at step 7 gives the same batches as the run from step 0.
  resumed = packing.train_batches(packed, 5, seed=3, start_step=7)
  for step in range(7, 12):
    batch = next(resumed)
    for name in packed:
      np.testing.assert_array_equal(batch[name], first[step][name])
  # Another seed, another order; epochs differ from each other.
  other = next(packing.train_batches(packed, 5, seed=4))
  assert not np.array_equal(other['example_ids'], first[0]['example_ids'])
  assert not np.array_equal(packing.epoch_order(num_rows, 3, 0),
                            packing.epoch_order(num_rows, 3, 1))


# ------------------- THE key test: packed and unpacked examples give the same logits (paper §3)

def test_packed_logits_equal_unpacked():
  cfg = enct5.get_config('tiny', num_classes=3, vocab_size=100, d_model=16, num_heads=2,
                         head_dim=8, d_ff=32, num_layers=2)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  rng = np.random.default_rng(0)
  max_length, max_slots = 24, 6
  # Mostly short examples, some long ones and some of exactly max_length tokens.
  lengths = np.concatenate([rng.integers(1, 6, 200), rng.integers(6, 25, 100), [24] * 4])
  rng.shuffle(lengths)
  examples = [(rng.integers(3, 100, n).tolist()[:-1] + [1], int(rng.integers(1, 4)))
              for n in lengths]
  apply = jax.jit(lambda batch: enct5.apply(params, cfg, batch))

  def logits_per_example(packed):
    logits = np.concatenate([apply(batch) for batch in packing.eval_batches(packed, 128)])
    assert np.isfinite(logits).all()  # also on empty slots and padding rows
    ids, values = packing.per_example(packed['example_ids'], logits)
    np.testing.assert_array_equal(ids, np.arange(len(examples)))
    return values

  unpacked = packing.pack_examples(examples, max_length, 1, method='unpacked')
  expected = logits_per_example(unpacked)  # [n, C]
  for method in ('best_fit', 'next_fit'):
    packed = packing.pack_examples(examples, max_length, max_slots, method=method)
    slots_used = (packed['example_ids'] >= 0).sum(axis=1)
    assert (slots_used == max_slots).any(), 'no row with the maximum number of slots'
    assert (packed['inputs_segment_ids'][:, -1] > 0).any(), 'no row filled to the end'
    assert (slots_used > 1).sum() > len(packed['inputs']) // 2
    np.testing.assert_allclose(logits_per_example(packed), expected, atol=1e-5, rtol=0)


def test_multi_label_packed_logits_equal_unpacked():
  cfg = enct5.get_config('tiny', num_classes=5, multi_label=True, vocab_size=100, d_model=16,
                         num_heads=2, head_dim=8, d_ff=32, num_layers=2)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  rng = np.random.default_rng(0)
  examples = [(rng.integers(3, 100, n).tolist()[:-1] + [1],
               tuple(np.flatnonzero(rng.random(5) < 0.3) + 1))
              for n in rng.integers(1, 13, 60)]
  apply = jax.jit(lambda batch: enct5.apply(params, cfg, batch))

  def per_example(packed):
    logits = np.concatenate([apply(b) for b in packing.eval_batches(packed, 16)])
    assert logits.shape[1:] == (packed['targets'].shape[1], 5)
    ids, values = packing.per_example(packed['example_ids'], logits)
    np.testing.assert_array_equal(ids, np.arange(len(examples)))
    _, targets = packing.per_example(packed['example_ids'], packed['targets'])
    np.testing.assert_array_equal(targets, metrics.multi_hot([l for _, l in examples], 5))
    return values

  expected = per_example(packing.pack_examples(examples, 24, 1, method='unpacked',
                                               num_labels=5))
  packed = packing.pack_examples(examples, 24, 6, num_labels=5)
  assert len(packed['inputs']) < len(examples) // 2
  np.testing.assert_allclose(per_example(packed), expected, atol=1e-5, rtol=0)


# ------------------------ the T5 and 1decT5 baselines (paper §4.3): decoder targets per segment

def test_seq2seq_packing_by_hand():
  """seqio's own example (`make_autoregressive_inputs`): targets [3, 8, 1 | 9, 1 | 5, 4, 1]
  give decoder inputs [0, 3, 8 | 0, 9 | 0, 5, 4], BOS 0 at each segment's start."""
  examples = [([5, 6, 1], [3, 8, 1]), ([7, 1], [9, 1]), ([4, 4, 4, 1], [5, 4, 1])]
  packed = packing.pack_seq2seq_examples(examples, 10, 10, method='next_fit', ids=[7, 8, 9])
  np.testing.assert_array_equal(packed['inputs'], [[5, 6, 1, 7, 1, 4, 4, 4, 1, 0]])
  np.testing.assert_array_equal(packed['inputs_segment_ids'], [[1, 1, 1, 2, 2, 3, 3, 3, 3, 0]])
  np.testing.assert_array_equal(packed['inputs_positions'], [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0]])
  np.testing.assert_array_equal(packed['decoder_target_tokens'], [[3, 8, 1, 9, 1, 5, 4, 1, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_input_tokens'], [[0, 3, 8, 0, 9, 0, 5, 4, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_segment_ids'], [[1, 1, 1, 2, 2, 3, 3, 3, 0, 0]])
  np.testing.assert_array_equal(packed['example_ids'], [[7, 8, 9]])  # 10 // 3 = 3 slots
  # Best fit takes the longest input first; each target follows its input's segment.
  packed = packing.pack_seq2seq_examples(examples, 10, 10)
  np.testing.assert_array_equal(packed['inputs_segment_ids'], [[1, 1, 1, 1, 2, 2, 2, 3, 3, 0]])
  np.testing.assert_array_equal(packed['decoder_target_tokens'], [[5, 4, 1, 3, 8, 1, 9, 1, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_input_tokens'], [[0, 5, 4, 0, 3, 8, 0, 9, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_segment_ids'], [[1, 1, 1, 2, 2, 2, 3, 3, 0, 0]])
  np.testing.assert_array_equal(packed['example_ids'], [[2, 0, 1]])
  # Decoder rows of 5 tokens hold 5 // 3 = 1 example: three rows, one example each.
  packed = packing.pack_seq2seq_examples(examples, 10, 5)
  np.testing.assert_array_equal(packed['decoder_target_tokens'], [[5, 4, 1, 0, 0],
                                                                  [3, 8, 1, 0, 0],
                                                                  [9, 1, 0, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_input_tokens'], [[0, 5, 4, 0, 0],
                                                                 [0, 3, 8, 0, 0],
                                                                 [0, 9, 0, 0, 0]])
  np.testing.assert_array_equal(packed['example_ids'], [[2], [0], [1]])
  with pytest.raises(ValueError, match='example 1 has 3 target tokens'):
    packing.pack_seq2seq_examples([([5, 1], [1]), ([6, 1], [2, 3, 1])], 10, 2)


@pytest.mark.parametrize('model, block_length', [('t5', None), ('1dect5', None), ('t5', 12)])
def test_seq2seq_packed_logits_equal_unpacked(model, block_length):
  """T5's teacher-forced logits of each example's target are the same packed and alone (and
  packed in blocks of 12 with the encoder's self-attention in blocks)."""
  cfg = enct5.get_config('tiny', vocab_size=64, d_model=16, num_heads=2, head_dim=8, d_ff=32,
                         num_layers=2, num_decoder_layers=2)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, model)
  rng = np.random.default_rng(0)
  examples = [(rng.integers(3, 64, n).tolist()[:-1] + [1], rng.integers(3, 64, m).tolist() + [1])
              for n, m in zip(rng.integers(1, 13, 40), rng.integers(1, 4, 40))]
  apply = jax.jit(lambda batch, cfg: t5.apply(params, cfg, batch, model=model), static_argnums=1)
  keys = ('inputs', 'inputs_segment_ids', 'decoder_input_tokens', 'decoder_target_tokens',
          'decoder_segment_ids')

  def logits_per_example(packed, cfg=cfg):
    """{example id: logits [its target length, V]}."""
    logits = np.asarray(apply({k: packed[k] for k in keys}, cfg))
    assert np.isfinite(logits).all()
    out = {}
    for r, row in enumerate(packed['example_ids']):
      for slot, i in enumerate(row):
        if i >= 0:
          out[i] = logits[r][packed['decoder_segment_ids'][r] == slot + 1]
    return out

  expected = logits_per_example(packing.pack_seq2seq_examples(examples, 24, 8,
                                                              method='unpacked'))
  packed = packing.pack_seq2seq_examples(examples, 24, 8, block_length=block_length)
  assert (packed['example_ids'] >= 0).sum(axis=1).max() == 2  # 8 // 4 slots
  assert len(packed['inputs']) < len(examples)
  got = logits_per_example(packed, dataclasses.replace(cfg, attention_block_length=block_length
                                                       or 0))
  assert sorted(got) == list(range(len(examples)))
  for i in range(len(examples)):
    assert got[i].shape == (len(examples[i][1]), cfg.vocab_size)
    np.testing.assert_allclose(got[i], expected[i], atol=1e-5, rtol=0)
