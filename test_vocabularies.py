"""Tests of vocabularies.py: a SentencePiece model checked for T5's special ids and against the
model's embedding, and ByT5's byte vocabulary."""
import pytest

import enct5
import hf_ckpt
import testutil
import vocabularies
from testutil import fixture


@pytest.fixture(scope='module')
def small_vocab(tmp_path_factory):
  return testutil.train_small_vocab(tmp_path_factory)


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


# ----------------------------------------------------------------------- ByT5's byte vocabulary

def test_byte_vocabulary_ids():
  vocab = vocabularies.load_vocab(vocabularies.BYT5_VOCAB)
  assert vocab.GetPieceSize() == 384 == enct5.SIZES['byt5-small']['vocab_size']
  assert (vocab.pad_id(), vocab.eos_id(), vocab.unk_id()) == (0, 1, 2)
  assert vocab.encode('a é') == [ord('a') + 3, ord(' ') + 3, 0xC3 + 3, 0xA9 + 3]
  assert vocab.encode(['hi', '']) == [[107, 108], []]
  # Special ids (pad, EOS, unk) and extra ids (259..383) decode to nothing, as seqio.
  assert vocab.decode([0, 1, 2, 107, 108, 259, 383]) == 'hi'
  assert vocab.decode(vocab.encode('Grüße, 世界')) == 'Grüße, 世界'


def test_byte_vocabulary_needs_a_byt5_embedding():
  vocab = vocabularies.load_vocab(vocabularies.BYT5_VOCAB)
  vocabularies.check_vocab_fits(vocab, 384)
  with pytest.raises(ValueError, match='byte vocabulary has 384 ids but the model embeds 32128'):
    vocabularies.check_vocab_fits(vocab, 32128)
  path = fixture('hf_byt5_tiny')
  assert hf_ckpt.vocabulary(path) == vocabularies.BYT5_VOCAB
  assert hf_ckpt.vocabulary(fixture('hf_mt5_tiny')) is None  # no spiece.model in the fixture
