"""Tests of preprocessing.py: tokenization (EOS, truncation as seqio's, an empty text naming its
line) and the whole road of a split, read, tokenized and packed, on the GLUE files of
../shared/glue."""
import numpy as np
import pytest

import packing
import preprocessing
import readers
import tasks
import testutil
import vocabularies
from testutil import GLUE_DIR, GLUE_FILES, need_glue


# --------------------------------------------------------------------------------- tokenization

@pytest.fixture(scope='module')
def small_vocab(tmp_path_factory):
  return testutil.train_small_vocab(tmp_path_factory)


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


# ------------------------------------------------------ GLUE splits, read, tokenized and packed

@pytest.fixture(scope='module')
def glue_vocab(tmp_path_factory):
  """A small SentencePiece model trained on a sample of the GLUE text (never T5's vocab)."""
  need_glue()
  texts = []
  for task_name, split in GLUE_FILES:
    if split == 'train' or task_name == 'qnli':
      texts += [e.text for e in readers.read_split(tasks.TASKS[task_name], GLUE_DIR, split)[:400]]
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('spm') / 'glue'), 2000)


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
