"""Tests of packing.py and glue.py: masks, packing, batches, GLUE files, tokenization, metrics.

The key test (`test_packed_logits_equal_unpacked`) runs `enct5.apply` on the same examples
packed and unpacked (paper §3: packing must not change any example's output).
"""
import dataclasses
import os

import jax
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sklearn_metrics

import enct5
import metrics
import packing
import preprocessing
import readers
import t5
import t5_layers
import tasks
import testutil
import vocabularies

SHARED = testutil.SHARED
GLUE_DIR = os.path.join(SHARED, 'glue')

# Rows (excluding headers) and label counts of ../shared/glue, from its SOURCES.md.
GLUE_FILES = {
    ('cola', 'train'): 8551, ('cola', 'validation'): 1043,
    ('sst2', 'train'): 67349, ('sst2', 'validation'): 872,
    ('mrpc', 'train'): 3668, ('mrpc', 'validation'): 408,
    ('stsb', 'train'): 5749, ('stsb', 'validation'): 1500,
    ('rte', 'train'): 2490, ('rte', 'validation'): 277,
    ('qnli', 'validation'): 5463,
}
LABEL_COUNTS = {  # class id -> count; class id = T5 label index + 1
    ('cola', 'train'): {1: 2528, 2: 6023}, ('cola', 'validation'): {1: 322, 2: 721},
    ('sst2', 'train'): {1: 29780, 2: 37569}, ('sst2', 'validation'): {1: 428, 2: 444},
    ('mrpc', 'validation'): {1: 129, 2: 279},
    ('rte', 'train'): {1: 1249, 2: 1241}, ('rte', 'validation'): {1: 146, 2: 131},
    ('qnli', 'validation'): {1: 2702, 2: 2761},
}


def _need_glue():
  if not os.path.isdir(GLUE_DIR):
    pytest.skip(f'GLUE data not found at {GLUE_DIR} (set ENCT5_SHARED)')


def _write(path, text):
  with open(path, 'w', encoding='utf-8', newline='') as f:
    f.write(text)
  return str(path)


# ---------------------------------------------------------------------------------------------
# Masks and packing, by hand.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Packing, random properties.
# ---------------------------------------------------------------------------------------------

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


def test_best_fit_never_worse_than_next_fit():
  rng = np.random.default_rng(0)
  for _ in range(300):
    max_length, max_slots = int(rng.integers(2, 16)), int(rng.integers(1, 5))
    lengths = rng.integers(1, max_length + 1, int(rng.integers(1, 25))).tolist()
    best = packing._best_fit_decreasing(lengths, max_length, max_slots)[0].max()
    greedy = packing._next_fit(lengths, max_length, max_slots)[0].max()
    assert best <= greedy


# ---------------------------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------------------------

def _packed_rows(num_examples, seed=0):
  return packing.pack_examples(_random_examples(np.random.default_rng(seed), num_examples, 10),
                               16, 4)


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


# ---------------------------------------------------------------------------------------------
# THE key test: packed and unpacked examples give the same logits (paper §3).
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Packing for the T5 and 1decT5 baselines (paper §4.3): decoder targets per segment.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# GLUE files.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def glue_vocab(tmp_path_factory):
  """A small SentencePiece model trained on a sample of the GLUE text (never T5's vocab)."""
  _need_glue()
  texts = []
  for task_name, split in GLUE_FILES:
    if split == 'train' or task_name == 'qnli':
      texts += [e.text for e in readers.read_split(tasks.TASKS[task_name], GLUE_DIR, split)[:400]]
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('spm') / 'glue'), 2000)


@pytest.mark.parametrize('task_name, split', sorted(GLUE_FILES))
def test_glue_file_loads(task_name, split):
  _need_glue()
  task = tasks.TASKS[task_name]
  examples = readers.read_split(task, GLUE_DIR, split)
  assert len(examples) == GLUE_FILES[task_name, split]
  assert [e.idx for e in examples] == list(range(len(examples)))
  assert all(e.text.startswith(task.name + ' ' + task.features[0][0] + ': ') for e in examples)
  if task.is_regression:
    scores = np.array([e.label for e in examples])
    assert scores.min() >= 0 and scores.max() <= 5 and len(np.unique(scores)) > 50
  else:
    counts = dict(zip(*np.unique([e.label for e in examples], return_counts=True)))
    assert set(counts) == set(range(1, task.num_classes + 1))
    if (task_name, split) in LABEL_COUNTS:
      assert counts == LABEL_COUNTS[task_name, split]


def test_glue_first_rows_as_t5_text():
  _need_glue()
  first = {name: readers.read_split(tasks.TASKS[name], GLUE_DIR, 'validation')[0]
           for name in ('cola', 'sst2', 'mrpc', 'stsb', 'qnli', 'rte')}
  assert first['cola'].text == 'cola sentence: The sailors rode the breeze clear of the rocks.'
  assert first['cola'].label == 2 and first['cola'].line == 1  # no header; 1 = acceptable
  assert first['sst2'].text == "sst2 sentence: it 's a charming and often affecting journey . "
  assert first['mrpc'].text.startswith('mrpc sentence1: He said the foodservice pie business')
  assert ' sentence2: " The foodservice pie business does not fit' in first['mrpc'].text
  assert first['mrpc'].label == 2 and first['mrpc'].line == 2  # BOM header skipped
  assert first['stsb'].text == ('stsb sentence1: A man with a hard hat is dancing. '
                                'sentence2: A man wearing a hard hat is dancing.')
  assert first['stsb'].label == 5.0
  assert first['qnli'].text.startswith('qnli question: What came into force after the new '
                                       'constitution was herald? sentence: As of that day,')
  assert first['qnli'].label == 1  # entailment
  assert first['rte'].text.startswith('rte sentence1: Dana Reeve, the widow')
  assert first['rte'].label == 2  # not_entailment


@pytest.mark.parametrize('task_name', ['cola', 'sst2', 'mrpc', 'stsb', 'rte', 'qnli'])
def test_glue_train_set_packs(task_name, glue_vocab):
  task = tasks.TASKS[task_name]
  split = 'validation' if task_name == 'qnli' else 'train'  # QNLI train is not in ../shared
  examples = readers.read_split(task, GLUE_DIR, split)
  for max_length in (128, 512):
    tokenized, truncated = preprocessing.tokenize(glue_vocab, examples, max_length)
    assert all(ids[-1] == vocabularies.EOS_ID and len(ids) <= max_length for ids, _ in tokenized)
    assert truncated <= sum(len(ids) == max_length for ids, _ in tokenized)
    packed = packing.pack_examples(tokenized, max_length, 62, regression=task.is_regression,
                                   ids=[e.idx for e in examples])
    greedy = packing.pack_examples(tokenized, max_length, 62, method='next_fit',
                                   regression=task.is_regression)
    stats = packing.stats(packed)
    assert stats['examples'] == len(examples)
    assert stats['tokens'] == sum(len(ids) for ids, _ in tokenized)
    assert -(-stats['tokens'] // max_length) <= stats['rows'] <= len(greedy['inputs'])
    ids, labels = packing.per_example(packed['example_ids'], packed['targets'])
    np.testing.assert_array_equal(ids, np.arange(len(examples)))
    np.testing.assert_allclose(labels, [e.label for e in examples])


def test_load_packed(glue_vocab):
  task = tasks.TASKS['rte']
  examples, packed = preprocessing.load_packed(task, GLUE_DIR, 'validation', glue_vocab, 128, 62)
  tokenized, _ = preprocessing.tokenize(glue_vocab, examples, 128)
  expected = packing.pack_examples(tokenized, 128, 62)
  assert len(examples) == 277
  for name in expected:
    np.testing.assert_array_equal(packed[name], expected[name])
  # In attention blocks: 512-token rows of SST-2, blocks of the smallest size holding every
  # example.
  examples = readers.read_split(tasks.TASKS['sst2'], GLUE_DIR, 'validation')
  tokenized, _ = preprocessing.tokenize(glue_vocab, examples, 512)
  block = packing.block_length_for([len(tokens) for tokens, _ in tokenized], 512)
  _, packed = preprocessing.load_packed(tasks.TASKS['sst2'], GLUE_DIR, 'validation', glue_vocab,
                                        512, 62, block_length=block)
  expected = packing.pack_examples(tokenized, 512, 62, block_length=block)
  assert block < 512
  for name in expected:
    np.testing.assert_array_equal(packed[name], expected[name])


# Small files in the official layouts of the tasks that ../shared lacks (MNLI, QQP, QNLI train)
# and of the test splits (no labels).
_P = '(( A ) ( B ))'  # a parse column's content, ignored
MNLI_TRAIN = (
    'index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t'
    'sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n'
    f'0\t31193\t31193n\tgovernment\t{_P}\t{_P}\t{_P}\t{_P}\tConceptually cream skimming has '
    'two basic dimensions.\tProduct and geography are what make cream skimming work. \t'
    'neutral\tneutral\n'
    f'1\t101457\t101457e\ttelephone\t{_P}\t{_P}\t{_P}\t{_P}\tyou know during the season.\t'
    'You lose the things to the following level.\tentailment\tentailment\n'
    f'2\t134793\t134793c\tfiction\t{_P}\t{_P}\t{_P}\t{_P}\tOne of our number will carry out '
    'your instructions minutely.\tA member of my team will execute your orders.\t'
    'contradiction\tcontradiction\n')
MNLI_DEV = (
    'index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t'
    'sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t'
    'label5\tgold_label\n'
    f'0\t63735\t63735n\tslate\t{_P}\t{_P}\t{_P}\t{_P}\tThe new rights are nice enough\t'
    'Everyone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\t'
    'neutral\tneutral\n')
MNLI_TEST = (
    'index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t'
    'sentence1_parse\tsentence2_parse\tsentence1\tsentence2\n'
    f'0\t31349\t31349\tfiction\t{_P}\t{_P}\t{_P}\t{_P}\tHey, hey.\tHow are you?\n')
QQP_TRAIN = ('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
             '133273\t213221\t213222\tHow is the life of a math student?\tWhich level of '
             'prepration is enough for the exam jlpt5?\t0\n'
             '402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you '
             'control your horniness?\t1\n')
QQP_TEST = 'id\tquestion1\tquestion2\n0\tWhy am I mentally very lonely?\tFind me a wife?\n'
QNLI_TRAIN = ('index\tquestion\tsentence\tlabel\n'
              '0\tWhen did the third Digimon series begin?\tUnlike the two seasons before '
              'it, Digimon Tamers takes a darker approach.\tnot_entailment\n')
COLA_TEST = 'index\tsentence\n0\tBill whistled past the house.\n'
MRPC_TEST = ('\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
             '0\t1089874\t1089925\tPCCW \'s chief operating officer .\tCurrent Chief '
             'Operating Officer Mike Butcher .\n')
STSB_TEST = ('index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n'
             '0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her '
             'hair.\tA girl is brushing her hair.\n')


def test_mnli_reader(tmp_path):
  task = tasks.TASKS['mnli']
  train = readers.read_file(task, _write(tmp_path / 'train.tsv', MNLI_TRAIN))
  # T5's sorted feature order: hypothesis (sentence2) before premise (sentence1).
  assert train[0].text == ('mnli hypothesis: Product and geography are what make cream '
                           'skimming work.  premise: Conceptually cream skimming has two '
                           'basic dimensions.')
  assert [e.label for e in train] == [2, 1, 3]  # neutral, entailment, contradiction
  dev = readers.read_file(task, _write(tmp_path / 'dev_matched.tsv', MNLI_DEV))
  assert dev[0].label == 2 and dev[0].text.startswith('mnli hypothesis: Everyone really')
  test = readers.read_file(task, _write(tmp_path / 'test_matched.tsv', MNLI_TEST), labeled=False)
  assert test == [readers.Example(0, 2, 'mnli hypothesis: How are you? premise: Hey, hey.', None)]
  os.makedirs(tmp_path / 'MNLI')
  _write(tmp_path / 'MNLI' / 'dev_mismatched.tsv', MNLI_DEV)
  assert readers.read_split(task, str(tmp_path), 'validation_mismatched') == dev
  assert task.raw_label(3) == 'contradiction'


def test_qqp_qnli_and_test_readers(tmp_path):
  qqp = tasks.TASKS['qqp']
  train = readers.read_file(qqp, _write(tmp_path / 'qqp.tsv', QQP_TRAIN))
  assert train[1].text == ('qqp question1: How do I control my horny emotions? '
                           'question2: How do you control your horniness?')
  assert [e.label for e in train] == [1, 2]  # 2 = duplicate, F1's positive class
  test = readers.read_file(qqp, _write(tmp_path / 'qqp_test.tsv', QQP_TEST), labeled=False)
  assert test[0].label is None and test[0].text.startswith('qqp question1: Why am I')
  qnli = readers.read_file(tasks.TASKS['qnli'], _write(tmp_path / 'qnli.tsv', QNLI_TRAIN))
  assert qnli[0].label == 2 and qnli[0].text.startswith('qnli question: When did')
  for name, text in (('cola', COLA_TEST), ('mrpc', MRPC_TEST), ('stsb', STSB_TEST)):
    examples = readers.read_file(tasks.TASKS[name], _write(tmp_path / f'{name}_test.tsv', text),
                             labeled=False)
    assert len(examples) == 1 and examples[0].label is None and examples[0].line == 2
  assert examples[0].text == ('stsb sentence1: A girl is styling her hair. '
                              'sentence2: A girl is brushing her hair.')
  with pytest.raises(ValueError, match=r"qqp_test.tsv: columns \['is_duplicate'\] missing"):
    readers.read_file(qqp, str(tmp_path / 'qqp_test.tsv'))  # a test file read as labeled


# ---------------------------------------------------------------------------------------------
# Malformed input: errors naming file and line, or counted skips.
# ---------------------------------------------------------------------------------------------

RTE_HEADER = 'index\tsentence1\tsentence2\tlabel\n'
RTE_ROW = '0\ta\tb\tentailment\n'
STSB_LABELED = STSB_TEST.replace('sentence2\n', 'sentence2\tscore\n')


@pytest.mark.parametrize('task_name, text, message', [
    ('rte', RTE_HEADER + RTE_ROW + '1\ta\tb\n', r'bad.tsv:3: 3 columns; the header has 4'),
    ('rte', RTE_HEADER + RTE_ROW + '1\ta\tb\tneutral\n', r"bad.tsv:3: unknown label 'neutral'"),
    ('rte', RTE_HEADER + RTE_ROW + '\n' + RTE_ROW, r'bad.tsv:3: 1 columns'),  # blank line
    ('sst2', 'sentence\tlabel\nfine \t2\n', r"bad.tsv:2: unknown label '2'"),
    ('cola', 'gj04\t1\t\tok.\ngj04\tyes\t\tbad.\n', r"bad.tsv:2: unknown label 'yes'"),
    ('cola', 'gj04\t1\tok.\n', r'bad.tsv:1: 3 columns; the header has 4'),
    ('stsb', STSB_LABELED.replace('hair.\n', 'hair.\tx\n'), r"bad.tsv:2: score 'x' is not a"),
    ('stsb', STSB_LABELED.replace('hair.\n', 'hair.\t5.2\n'), r"bad.tsv:2: score '5.2' is out"),
    ('rte', '', r'bad.tsv: empty file'),
    ('rte', RTE_HEADER, r'bad.tsv: no examples'),
    ('rte', 'index\tsentence1\tsentence2\n', r"bad.tsv: columns \['label'\] missing"),
])
def test_malformed_files_raise(tmp_path, task_name, text, message):
  path = _write(tmp_path / 'bad.tsv', text)
  with pytest.raises(ValueError, match=message):
    readers.read_file(tasks.TASKS[task_name], path)


def test_malformed_rows_skipped_and_counted(tmp_path, caplog):
  text = RTE_HEADER + '0\ta\tb\tentailment\n1\ta\tb\n2\ta\tb\tneutral\n3\tc\t\tnot_entailment\n'
  path = _write(tmp_path / 'rte.tsv', text)
  with caplog.at_level('INFO'):
    examples = readers.read_file(tasks.TASKS['rte'], path, on_error='skip')
  assert [(e.idx, e.line, e.label) for e in examples] == [(0, 2, 1), (3, 5, 2)]
  assert examples[1].text == 'rte sentence1: c sentence2: '  # empty field kept, as T5
  log = caplog.text
  assert 'rte.tsv:3: skipped: 3 columns' in log and "rte.tsv:4: skipped: unknown label" in log
  assert 'skipped 2 bad rows (lines [3, 4])' in log and '1 rows with an empty text field' in log
  with pytest.raises(ValueError, match='all 1 rows are bad'):
    readers.read_file(tasks.TASKS['rte'], _write(tmp_path / 'all_bad.tsv', RTE_HEADER + '0\ta\n'),
                  on_error='skip')


# ---------------------------------------------------------------------------------------------
# Tokenization.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def small_vocab(tmp_path_factory):
  rng = np.random.default_rng(0)
  words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'far', 'away', 'sentence:',
           'sst2', 'good', 'bad', 'movie', 'film', 'plot', 'actor', 'very', 'not']
  texts = [' '.join(rng.choice(words, int(rng.integers(3, 15)))) for _ in range(500)]
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('spm') / 'small'), 100)


def test_tokenize_eos_and_truncation(small_vocab):
  assert (small_vocab.pad_id(), small_vocab.eos_id(), small_vocab.unk_id()) == (0, 1, 2)
  assert small_vocab.bos_id() == -1
  long_text = 'sst2 sentence: ' + 'the cat sat on a mat ' * 20
  examples = [readers.Example(0, 2, 'sst2 sentence: a good film', 2),
              readers.Example(1, 3, long_text, 1)]
  tokenized, truncated = preprocessing.tokenize(small_vocab, examples, 16)
  (short, label), (cut, _) = tokenized
  assert truncated == 1 and label == 2
  assert short[-1] == 1 and 1 not in short[:-1] and 0 not in short
  assert small_vocab.decode(short[:-1]) == 'sst2 sentence: a good film'
  assert len(cut) == 16 and cut[-1] == 1
  assert cut[:-1] == small_vocab.encode(long_text)[:15]  # trim to L-1, then EOS (seqio)
  exact = readers.Example(2, 4, small_vocab.decode(small_vocab.encode(long_text)[:15]), 1)
  assert preprocessing.tokenize(small_vocab, [exact], 16)[1] == 0  # 15 pieces + EOS: no truncation


def test_tokenize_empty_text_names_line(small_vocab):
  with pytest.raises(ValueError, match=r'dev.tsv:7: text .* tokenizes to nothing'):
    preprocessing.tokenize(small_vocab, [readers.Example(5, 7, '  ', 1)], 16, path='dev.tsv')


def test_vocab_checks(small_vocab, tmp_path):
  size = small_vocab.GetPieceSize()
  vocabularies.check_vocab_fits(small_vocab, size)
  with pytest.raises(ValueError, match=rf'has {size} pieces but the model embeds only {size - 1}'):
    vocabularies.check_vocab_fits(small_vocab, size - 1)
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(sentence_iterator=iter(['a b c d e f'] * 20), vocab_size=20,
                                 model_prefix=str(tmp_path / 'default_ids'),
                                 hard_vocab_limit=False, minloglevel=2)
  with pytest.raises(ValueError, match=r'\(pad, eos, unk\) = \(-1, 2, 0\); T5 needs'):
    vocabularies.load_vocab(str(tmp_path / 'default_ids.model'))


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------

def test_metrics_by_hand():
  assert metrics.accuracy([1, 2, 2, 1], [1, 2, 1, 1]) == 75.0
  # Positive class 2: tp=2, 3 positive labels, 3 positive predictions -> 2*2/(3+3).
  assert metrics.f1([2, 2, 1, 1, 2], [2, 1, 2, 1, 2], positive=2) == pytest.approx(200 / 3)
  assert metrics.f1([1, 1], [1, 1], positive=2) == 0.0
  # tp=1, fn=1, tn=2, fp=0: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  assert metrics.matthews_corrcoef([2, 2, 1, 1], [2, 1, 1, 1]) == pytest.approx(100 / np.sqrt(3))
  assert metrics.matthews_corrcoef([2, 2, 1], [2, 2, 2]) == 0.0  # constant predictions
  # x-mean = (-1, 0, 1), y-mean = (-4, -1, 5)/3: r = 3 / sqrt(2 * 42/9).
  assert metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4]) == pytest.approx(100 * 3 / np.sqrt(28 / 3))
  np.testing.assert_array_equal(metrics.average_ranks([1, 2, 2, 3]), [1, 2.5, 2.5, 4])
  # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5).
  assert metrics.spearman_corrcoef([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(
      100 * 4.5 / np.sqrt(22.5))


def test_metrics_match_sklearn_and_scipy():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 300))
    labels, predictions = rng.integers(1, 3, n), rng.integers(1, 3, n)
    assert metrics.accuracy(labels, predictions) == pytest.approx(
        100 * sklearn_metrics.accuracy_score(labels, predictions))
    assert metrics.f1(labels, predictions, 2) == pytest.approx(
        100 * sklearn_metrics.f1_score(labels, predictions, pos_label=2, zero_division=0))
    assert metrics.matthews_corrcoef(labels, predictions) == pytest.approx(
        100 * sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-9)
    three = rng.integers(1, 4, (2, n))
    assert metrics.matthews_corrcoef(*three) == pytest.approx(
        100 * sklearn_metrics.matthews_corrcoef(*three), abs=1e-9)
    scores = np.round(rng.uniform(0, 5, (2, n)) * 5) / 5  # many ties, as STS-B's labels
    assert metrics.pearson_corrcoef(*scores) == pytest.approx(100 * stats.pearsonr(*scores)[0])
    assert metrics.spearman_corrcoef(*scores) == pytest.approx(100 * stats.spearmanr(*scores)[0])
    np.testing.assert_allclose(metrics.average_ranks(scores[0]), stats.rankdata(scores[0]))


def test_invalid_predictions_count_as_t5_counts_them():
  """A T5 output string that is no label: wrong for accuracy, the opposite of the gold label
  for F1 (T5 `f1_score_with_invalid`), a class of its own for Matthews correlation."""
  invalid = metrics.INVALID_PREDICTION
  gold, predictions = [2, 1, 1, 2], [2, invalid, 1, invalid]
  scores = metrics.compute_metrics(tasks.get_task('mrpc'), 'validation', gold, predictions)
  # As [2, 2, 1, 1]: one true positive, one false positive, one false negative.
  assert scores['mrpc/f1'] == pytest.approx(100 * 2 / 4)
  assert scores['mrpc/accuracy'] == pytest.approx(50.0)
  gold, predictions = [2, 1, 1, 2, 2, 1, 2], [2, invalid, 1, 1, invalid, 1, 2]
  scores = metrics.compute_metrics(tasks.get_task('cola'), 'validation', gold, predictions)
  assert scores['cola/matthews_corrcoef'] == pytest.approx(
      100 * sklearn_metrics.matthews_corrcoef(gold, predictions))
  with pytest.raises(ValueError, match='is not a class id'):
    metrics.compute_metrics(tasks.get_task('cola'), 'validation', [invalid, 1], [1, 1])


def test_compute_metrics_task_score_and_glue_average():
  mrpc = tasks.TASKS['mrpc']
  scores = metrics.compute_metrics(mrpc, 'validation', [2, 2, 1, 1], [2, 1, 1, 1])
  assert scores == {'mrpc/f1': pytest.approx(200 / 3), 'mrpc/accuracy': 75.0}
  assert metrics.task_score(mrpc, scores) == pytest.approx((200 / 3 + 75) / 2)
  mnli = tasks.TASKS['mnli']
  assert metrics.compute_metrics(mnli, 'validation_mismatched', [1, 2, 3], [1, 2, 2]) == {
      'mnli_mismatched/accuracy': pytest.approx(200 / 3)}
  with pytest.raises(ValueError, match="no metrics for split 'validation'"):
    metrics.compute_metrics(mnli, 'validation', [1], [1])
  with pytest.raises(ValueError, match='label 4 is not a class id 1..3'):
    metrics.compute_metrics(mnli, 'validation_matched', [4], [1])
  # Table 1's average: each task's metrics first (MNLI m/mm as one task), then 8 tasks.
  scores = {'cola/matthews_corrcoef': 60.0, 'sst2/accuracy': 95.0, 'mrpc/f1': 92.0,
            'mrpc/accuracy': 90.0, 'stsb/pearson_corrcoef': 90.0,
            'stsb/spearman_corrcoef': 88.0, 'qqp/f1': 70.0, 'qqp/accuracy': 88.0,
            'mnli_matched/accuracy': 87.0, 'mnli_mismatched/accuracy': 86.0,
            'qnli/accuracy': 93.0, 'rte/accuracy': 80.0}
  expected = (60 + 95 + 91 + 89 + 79 + 86.5 + 93 + 80) / 8
  assert metrics.glue_average(scores) == pytest.approx(expected)
  del scores['qqp/f1']
  with pytest.raises(ValueError, match=r"scores lack \['qqp/f1'\]"):
    metrics.glue_average(scores)


def test_tasks_table():
  assert sorted(tasks.TASKS) == ['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', 'stsb']
  assert tasks.TASKS['stsb'].num_classes == 1 and tasks.TASKS['stsb'].is_regression
  assert tasks.TASKS['mnli'].num_classes == 3
  assert tasks.TASKS['mnli'].metric_keys == ('mnli_matched/accuracy', 'mnli_mismatched/accuracy')
  assert tasks.TASKS['stsb'].raw_label(3.14159) == '3.142'
  assert tasks.TASKS['cola'].raw_label(2) == '1'
  with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
    tasks.get_task('wnli')
