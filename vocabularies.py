"""Vocabularies: T5's SentencePiece models (checked to use T5's special ids) and ByT5's bytes.

A vocabulary turns a T5 text into ids (`preprocessing.tokenize`) and, for the T5 and 1decT5
baselines, decoded ids back into text (`t5.LabelText`).
"""
import sentencepiece as spm

import fileio

# T5's SentencePiece ids (`seqio.SentencePieceVocabulary`): pad 0, EOS 1, unk 2, no BOS.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_vocab(texts, model_prefix, vocab_size):
  """Trains a unigram SentencePiece model with T5's special ids; writes <model_prefix>.model.

  For tests and small experiments only: the paper fine-tunes with T5's own vocabulary.
  `vocab_size` is an upper bound (hard_vocab_limit=False), so tiny corpora still train.
  """
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type='unigram', pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      hard_vocab_limit=False, num_threads=2, minloglevel=2)
  return load_vocab(model_prefix + '.model')


def load_vocab(path):
  """A SentencePieceProcessor, checked to use T5's ids (pad 0, EOS 1, unk 2); for path 'byt5',
  ByT5's `ByteVocabulary`."""
  if path == BYT5_VOCAB:
    return ByteVocabulary()
  try:
    vocab = spm.SentencePieceProcessor(model_file=path)
  except (OSError, RuntimeError) as e:  # RuntimeError: a missing or unparsable file
    raise fileio.DataError(f'{path}: not a SentencePiece model ({e})') from None
  ids = (vocab.pad_id(), vocab.eos_id(), vocab.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise fileio.DataError(f'{path}: SentencePiece ids (pad, eos, unk) = {ids}; T5 needs '
                           f'{(PAD_ID, EOS_ID, UNK_ID)}')
  return vocab


# ByT5's vocabulary: UTF-8 bytes, no model file.
BYT5_VOCAB = 'byt5'  # `load_vocab`'s (and --vocab's) name for ByteVocabulary


class ByteVocabulary:
  """ByT5's vocabulary (seqio `ByteVocabulary`): byte b is id b + 3 after pad 0, EOS 1, unk 2,
  and 125 extra ids (sentinels) follow the 256 bytes: 384 ids, ByT5's `vocab_size`.

  It has the part of SentencePieceProcessor's interface that this code uses (`encode`,
  `decode`, `GetPieceSize`, `pad_id`, `eos_id`, `unk_id`), so it goes wherever a
  SentencePiece vocabulary goes.
  """
  NUM_SPECIAL, NUM_BYTES, NUM_EXTRA_IDS = 3, 256, 125

  def GetPieceSize(self):  # noqa: N802 (SentencePiece's name)
    return self.NUM_SPECIAL + self.NUM_BYTES + self.NUM_EXTRA_IDS

  def pad_id(self):
    return PAD_ID

  def eos_id(self):
    return EOS_ID

  def unk_id(self):
    return UNK_ID

  def encode(self, text, out_type=int, num_threads=None):
    """A string -> its ids; a list of strings -> a list of id lists (as SentencePiece)."""
    del num_threads  # bytes need no threads
    if out_type is not int:
      raise ValueError('ByteVocabulary encodes to ids only (out_type=int)')
    if isinstance(text, list):
      return [self.encode(t) for t in text]
    return [b + self.NUM_SPECIAL for b in text.encode('utf-8')]

  def decode(self, ids):
    """Ids -> text. NOTE: as seqio: special and extra ids are dropped, and invalid UTF-8 is
    ignored (a decoded byte string may end mid-character)."""
    data = bytes(i - self.NUM_SPECIAL for i in ids
                 if self.NUM_SPECIAL <= i < self.NUM_SPECIAL + self.NUM_BYTES)
    return data.decode('utf-8', errors='ignore')


def check_vocab_fits(vocab, vocab_size):
  """Every piece id must index the model's embedding table of `vocab_size` rows; ByT5's bytes
  need ByT5's embedding (384 rows: T5's or mT5's rows would be read as bytes)."""
  if isinstance(vocab, ByteVocabulary) and vocab_size != vocab.GetPieceSize():
    raise fileio.DataError(f'ByT5\'s byte vocabulary has {vocab.GetPieceSize()} ids but the model '
                           f'embeds {vocab_size} (cfg.vocab_size): bytes need a ByT5 model '
                           f'(vocab_size {vocab.GetPieceSize()}); for T5 or mT5 pass their '
                           'SentencePiece model as --vocab')
  if vocab.GetPieceSize() > vocab_size:
    raise fileio.DataError(f'the SentencePiece vocabulary has {vocab.GetPieceSize()} pieces but '
                           f'the model embeds only {vocab_size} (cfg.vocab_size): ids >= '
                           f'{vocab_size} would have no embedding; pass the model\'s own '
                           'vocabulary as --vocab')


