"""Preprocessing: a split's Examples (`readers`) tokenized (`vocabularies`) and packed into the
model's rows (`packing`). `load_packed` is the whole road that training and evaluation take.
"""
import logging

import fileio
import packing
import readers
import vocabularies


def tokenize(vocab, examples, max_input_length, *, path='<examples>'):
  """SentencePiece ids with EOS, truncated to max_input_length -> ([(ids, label)], truncated).

  NOTE: as seqio's `append_eos_after_trim`: trim to max_input_length - 1 pieces, then append
  EOS, so every example ends in EOS. A text with no pieces is an error naming its line.
  """
  pieces = vocab.encode([example.text for example in examples], out_type=int, num_threads=2)
  tokenized, truncated = [], 0
  for example, ids in zip(examples, pieces):
    if not ids:
      raise fileio.DataError(f'{path}:{example.line}: text {example.text!r} tokenizes to nothing')
    if len(ids) >= max_input_length:
      truncated += len(ids) > max_input_length - 1
      ids = ids[:max_input_length - 1]
    tokenized.append((ids + [vocabularies.EOS_ID], example.label))
  logging.info('%s: tokenized %d examples; %d truncated to max_input_length=%d', path,
               len(tokenized), truncated, max_input_length)
  return tokenized, truncated


def pack_split(task, examples, vocab, max_input_length, max_target_length, *,
               method='best_fit', labels=None, path='<examples>', block_length=None):
  """Tokenized, packed rows of one split's examples (see `packing`).

  EncT5: up to `max_target_length` examples a row, each label in its target slot (a
  multi-label row's labels as a multi-hot vector of `task.num_classes`). With
  `labels` (a LabelText: T5's and 1decT5's training rows), each example's label as T5 text in
  decoder rows of `max_target_length` tokens (`packing.pack_seq2seq_examples`).
  `block_length`: every example within one block of that many tokens, for block-local
  attention (`packing.pack_examples`); 'fit': the smallest block that holds the longest example
  (`packing.block_length_for`), as training packs; 'by_block': blocks as short as each
  example allows (`packing.pack_examples`), as evaluation and prediction pack.
  `packed['example_ids']` holds each example's `idx` (its data row in the file).
  """
  tokenized, _ = tokenize(vocab, examples, max_input_length, path=path)
  ids = [example.idx for example in examples]
  if block_length == 'fit':
    block_length = packing.block_length_for([len(tokens) for tokens, _ in tokenized],
                                            max_input_length)
  if labels is None:
    return packing.pack_examples(
        tokenized, max_input_length, max_target_length, method=method,
        regression=task.is_regression,
        num_labels=task.num_classes if task.is_multi_label else None, ids=ids,
        block_length=block_length)
  targets = labels.tokens([example.label for example in examples])
  return packing.pack_seq2seq_examples(
      [(tokens, target) for (tokens, _), target in zip(tokenized, targets)], max_input_length,
      max_target_length, method=method, ids=ids, block_length=block_length)


def load_packed(task, data_dir, split, vocab, max_input_length, max_target_length, *,
                method='best_fit', labels=None, on_error='raise', block_length=None):
  """The whole road for one split: read, tokenize, pack. -> (examples, packed rows)."""
  examples = readers.read_split(task, data_dir, split, on_error=on_error)
  return examples, pack_split(task, examples, vocab, max_input_length, max_target_length,
                              method=method, labels=labels, block_length=block_length,
                              path=readers.split_path(task, data_dir, split))

