"""GLUE for EncT5: official TSV files -> T5 text -> SentencePiece ids -> packed rows; metrics.

EncT5 is fine-tuned on the eight GLUE tasks of the paper's Table 1 (§4.1; WNLI and AX left
out). Text follows T5 (`t5.data.preprocessors.glue` with `t5.data.glue_utils`): the task name,
then `feature: text` for each text feature in sorted feature order, e.g.
`mnli hypothesis: ... premise: ...`. Labels are T5's label classes, numbered from 1 because
class 0 is EncT5's padding class (§3); STS-B is regression on the raw score. Metrics are
T5's GLUE metrics (`glue_utils.GLUE_METRICS`), scaled to 0-100 as T5 reports them.

Reads top-down: the tasks (and the demo task); reading TSV files; SentencePiece; one split
read, tokenized and packed (`load_packed`, the road train.py takes); labels as T5 text for the
T5 and 1decT5 baselines (`LabelText`); metrics.
"""
import dataclasses
import logging
import math
import os

import numpy as np
import sentencepiece as spm

import packing

# Real GLUE data (and the T5X-written test checkpoints) live outside the repository, in ../shared.
SHARED = os.environ.get('ENCT5_SHARED',
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared'))

# T5's SentencePiece ids (`seqio.SentencePieceVocabulary`): pad 0, EOS 1, unk 2, no BOS.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

_FILES = {'train': 'train.tsv', 'validation': 'dev.tsv', 'test': 'test.tsv'}
_MNLI_FILES = {'train': 'train.tsv',
               'validation_matched': 'dev_matched.tsv',
               'validation_mismatched': 'dev_mismatched.tsv',
               'test_matched': 'test_matched.tsv',
               'test_mismatched': 'test_mismatched.tsv'}


class DataError(ValueError):
  """A data or vocabulary file that cannot be used as it is; the message names it (and the
  line) and says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Task:
  """One GLUE task: where its files are, how a row becomes T5 text, its labels and metrics."""
  name: str  # T5's benchmark name, also the first word of every input
  dir_name: str  # folder in the GLUE data directory
  features: tuple  # (T5 feature name, TSV column), in T5's (sorted) order
  label_column: str
  label_names: tuple  # T5's label classes; class id = index + 1. () for regression
  raw_labels: tuple  # how the TSV spells each class ('0', '1' or the names)
  metric_names: tuple
  files: dict = dataclasses.field(default_factory=lambda: dict(_FILES))  # split -> file
  eval_names: dict = None  # validation split -> name its metrics are reported under
  headerless_columns: tuple = ()  # CoLA's train/dev files have no header row

  @property
  def is_regression(self):
    return not self.label_names

  @property
  def num_classes(self):
    """n real classes (ids 1..n), or 1 for regression: EncT5Config.num_classes."""
    return len(self.label_names) or 1

  @property
  def metric_keys(self):
    """'<eval name>/<metric>' for every score the task reports, e.g. 'mrpc/f1'."""
    return tuple(f'{eval_name}/{metric}' for eval_name in self.eval_names.values()
                 for metric in self.metric_names)

  def raw_label(self, prediction):
    """A predicted class id (or score) as the TSV spells labels, for prediction files."""
    if self.is_regression:
      return f'{float(prediction):.3f}'
    return self.raw_labels[int(prediction) - 1]


def _task(name, dir_name, features, label_column, label_names, raw_labels, metric_names,
          **kwargs):
  kwargs.setdefault('eval_names', {'validation': name})
  return Task(name, dir_name, features, label_column, label_names, raw_labels, metric_names,
              **kwargs)


_BINARY = ('0', '1')
TASKS = {task.name: task for task in [
    _task('cola', 'CoLA', (('sentence', 'sentence'),), 'label',
          ('unacceptable', 'acceptable'), _BINARY, ('matthews_corrcoef',),
          headerless_columns=('source', 'label', 'original_label', 'sentence')),
    _task('sst2', 'SST-2', (('sentence', 'sentence'),), 'label',
          ('negative', 'positive'), _BINARY, ('accuracy',)),
    _task('mrpc', 'MRPC', (('sentence1', '#1 String'), ('sentence2', '#2 String')), 'Quality',
          ('not_equivalent', 'equivalent'), _BINARY, ('f1', 'accuracy')),
    _task('stsb', 'STS-B', (('sentence1', 'sentence1'), ('sentence2', 'sentence2')), 'score',
          (), (), ('pearson_corrcoef', 'spearman_corrcoef')),
    _task('qqp', 'QQP', (('question1', 'question1'), ('question2', 'question2')),
          'is_duplicate', ('not_duplicate', 'duplicate'), _BINARY, ('f1', 'accuracy')),
    # MNLI's premise is the TSV's sentence1; sorted feature order puts the hypothesis first.
    _task('mnli', 'MNLI', (('hypothesis', 'sentence2'), ('premise', 'sentence1')),
          'gold_label', ('entailment', 'neutral', 'contradiction'),
          ('entailment', 'neutral', 'contradiction'), ('accuracy',), files=dict(_MNLI_FILES),
          eval_names={'validation_matched': 'mnli_matched',
                      'validation_mismatched': 'mnli_mismatched'}),
    _task('qnli', 'QNLI', (('question', 'question'), ('sentence', 'sentence')), 'label',
          ('entailment', 'not_entailment'), ('entailment', 'not_entailment'), ('accuracy',)),
    _task('rte', 'RTE', (('sentence1', 'sentence1'), ('sentence2', 'sentence2')), 'label',
          ('entailment', 'not_entailment'), ('entailment', 'not_entailment'), ('accuracy',)),
]}


# The demo task: made-up words; the label says whether a sentence has more "good" than "bad"
# cue words. It goes through exactly the GLUE road (TSV files, T5 text, SentencePiece).
DEMO_TASK = Task(name='synthetic', dir_name='synthetic', features=(('sentence', 'sentence'),),
                 label_column='label', label_names=('negative', 'positive'),
                 raw_labels=('0', '1'), metric_names=('accuracy',),
                 eval_names={'validation': 'synthetic'})


def get_task(name):
  """A GLUE task by its T5 name, or the demo task ('synthetic')."""
  if name == DEMO_TASK.name:
    return DEMO_TASK
  if name not in TASKS:
    raise ValueError(f'unknown GLUE task {name!r}; expected one of {sorted(TASKS)}')
  return TASKS[name]


# ---------------------------------------------------------------------------------------------
# Reading TSV files.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Example:
  idx: int  # 0-based data row of the file (TFDS's `idx`; GLUE's `index` column)
  line: int  # 1-based line in the file, for error messages
  text: str  # the T5 input text
  label: object  # class id 1..n, float score (STS-B), or None (unlabeled test file)


def format_text(task, fields):
  """T5's text: 'rte sentence1: <s1> sentence2: <s2>' (`preprocessors.glue`, `stsb`).

  NOTE: fields are joined as they are, as in T5 (SST-2's sentences end with a space);
  SentencePiece's normalizer collapses the extra whitespace.
  """
  parts = [task.name]
  for feature, _ in task.features:
    parts += [f'{feature}:', fields[feature]]
  return ' '.join(parts)


def task_dir(task, data_dir):
  """The task's folder: `data_dir` is the GLUE root (holding SST-2/, ...) or that folder."""
  own = os.path.join(data_dir, task.dir_name)
  if os.path.isdir(own):
    return own
  if any(os.path.isfile(os.path.join(data_dir, f)) for f in task.files.values()):
    return data_dir
  raise FileNotFoundError(f'{data_dir}: found neither {own}/ nor the {task.name} files '
                          f'{sorted(set(task.files.values()))} in it')


def split_path(task, data_dir, split):
  """The file of one split; `data_dir` as in `task_dir`."""
  if split not in task.files:
    raise ValueError(f'task {task.name} has no split {split!r}; expected one of '
                     f'{sorted(task.files)}')
  path = os.path.join(task_dir(task, data_dir), task.files[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found (the {split} split of {task.name})')
  return path


def read_split(task, data_dir, split, *, on_error='raise'):
  """The examples of one split; test splits are read without labels."""
  return read_tsv(task, split_path(task, data_dir, split),
                  labeled=not split.startswith('test'), on_error=on_error)


def read_tsv(task, path, *, labeled=True, on_error='raise'):
  """Reads a GLUE TSV file in its official layout into Examples.

  Like TFDS's GLUE builder: tab-separated, no quoting (`csv.QUOTE_NONE`), columns found by
  header name; CoLA's train/dev files have no header; a UTF-8 BOM (MRPC), CRLF line ends and
  empty trailing fields (a tab at the end of a line) are ignored.
  `labeled=False` reads test files, which have no label column (label None).

  Bad rows (wrong number of columns, unknown label, a score that is not a number in [0, 5])
  raise DataError naming file and line when on_error='raise' (default). With
  on_error='skip' they are left out, each logged with its line, and counted in the log; the
  other examples keep their `idx`. Empty files are always an error. Empty text fields are
  kept, as T5 keeps them, and logged.
  """
  if on_error not in ('raise', 'skip'):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  examples, skipped, empty_fields = [], [], []
  with open(path, 'rb') as f:
    header, lines, first_line = _header(task, path, _text_lines(path, f))
    columns = {name: i for i, name in enumerate(header)}
    wanted = [column for _, column in task.features] + ([task.label_column] if labeled else [])
    missing = [column for column in wanted if column not in columns]
    if missing:
      raise DataError(f'{path}: columns {missing} missing from the header {header} of a '
                      f'{task.name} file' + (' (test files: labeled=False)' if labeled else ''))
    for idx, (line_no, line) in enumerate(enumerate(lines, first_line)):
      fields = line.split('\t')
      if len(fields) > len(header) and not any(fields[len(header):]):
        fields = fields[:len(header)]  # trailing tabs
      try:
        if len(fields) != len(header):
          raise ValueError(f'{len(fields)} columns; the header has {len(header)}')
        label = _parse_label(task, fields[columns[task.label_column]]) if labeled else None
      except ValueError as e:
        if on_error == 'raise':
          raise DataError(f'{path}:{line_no}: {e}') from None
        skipped.append(line_no)
        logging.warning('%s:%d: skipped: %s', path, line_no, e)
        continue
      text_fields = {feature: fields[columns[column]] for feature, column in task.features}
      if not all(text_fields.values()):
        empty_fields.append(line_no)
      examples.append(Example(idx, line_no, format_text(task, text_fields), label))
  if not examples and not skipped:
    raise DataError(f'{path}: no examples, only a header')
  if empty_fields:
    logging.warning('%s: %d rows with an empty text field, kept as T5 does (lines %s)',
                    path, len(empty_fields), empty_fields[:10])
  logging.info('%s: read %d %s examples, skipped %d bad rows%s', path, len(examples),
               task.name, len(skipped), f' (lines {skipped[:10]})' if skipped else '')
  if not examples:
    raise DataError(f'{path}: all {len(skipped)} rows are bad')
  return examples


def _text_lines(path, f):
  """The lines of a binary file as text, without line ends or a leading UTF-8 BOM; bytes that
  are not UTF-8 raise DataError naming the line."""
  for line_no, line in enumerate(f, 1):
    try:
      text = line.decode('utf-8-sig' if line_no == 1 else 'utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{path}:{line_no}: byte {line[e.start]:#04x} at column {e.start + 1} is '
                      'not UTF-8; GLUE files are UTF-8 text') from None
    yield text.rstrip('\r\n')


def _header(task, path, lines):
  """(column names, the data lines, the line number of the first data line)."""
  first = next(lines, None)
  if first is None or not first.strip():
    raise DataError(f'{path}: empty file (no header and no rows)')
  fields = first.split('\t')
  while len(fields) > 1 and not fields[-1]:  # trailing tabs
    fields.pop()
  if task.headerless_columns and fields[0] != 'index':  # CoLA train/dev: data from line 1
    return task.headerless_columns, _prepend(first, lines), 1
  return fields, lines, 2


def _prepend(first, lines):
  yield first
  yield from lines


def _parse_label(task, value):
  if task.is_regression:
    try:
      score = float(value)
    except ValueError:
      raise DataError(f'score {value!r} is not a number') from None
    if not 0.0 <= score <= 5.0:  # also rejects nan
      raise DataError(f'score {value!r} is outside STS-B\'s range [0, 5]')
    return score
  if value not in task.raw_labels:
    raise DataError(f'unknown label {value!r}; {task.name} labels are {task.raw_labels}')
  return task.raw_labels.index(value) + 1


def write_demo_task(directory, seed, num_train=20000, num_validation=1000):
  """GLUE-style train.tsv / dev.tsv of the demo task in `directory`; chance is 50%."""
  rng = np.random.default_rng(seed)
  syllables = [c + v for c in 'bdfgklmnprstvz' for v in 'aeiou']
  words = set()
  while len(words) < 600:
    words.add(''.join(rng.choice(syllables, rng.integers(1, 4))))
  words = rng.permutation(sorted(words)).tolist()
  good, bad, neutral = words[:12], words[12:24], words[24:]
  for split, count in (('train', num_train), ('validation', num_validation)):
    lines = ['sentence\tlabel']
    for _ in range(count):
      num_good, num_bad = rng.choice(4, 2, replace=False)  # never a tie
      sentence = (rng.choice(good, num_good).tolist() + rng.choice(bad, num_bad).tolist() +
                  rng.choice(neutral, rng.integers(4, 16)).tolist())
      lines.append(f'{" ".join(rng.permutation(sentence))}\t{int(num_good > num_bad)}')
    # Written atomically: every process of a multi-host run writes the same file.
    path = os.path.join(directory, DEMO_TASK.files[split])
    os.makedirs(directory, exist_ok=True)
    with open(f'{path}.tmp-{os.getpid()}', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    os.replace(f'{path}.tmp-{os.getpid()}', path)


# ---------------------------------------------------------------------------------------------
# SentencePiece.
# ---------------------------------------------------------------------------------------------

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
    raise DataError(f'{path}: not a SentencePiece model ({e})') from None
  ids = (vocab.pad_id(), vocab.eos_id(), vocab.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise DataError(f'{path}: SentencePiece ids (pad, eos, unk) = {ids}; T5 needs '
                    f'{(PAD_ID, EOS_ID, UNK_ID)}')
  return vocab


# ---------------------------------------------------------------------------------------------
# ByT5's vocabulary: UTF-8 bytes, no model file.
# ---------------------------------------------------------------------------------------------

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
    raise DataError(f'ByT5\'s byte vocabulary has {vocab.GetPieceSize()} ids but the model '
                    f'embeds {vocab_size} (cfg.vocab_size): bytes need a ByT5 model '
                    f'(vocab_size {vocab.GetPieceSize()}); for T5 or mT5 pass their '
                    'SentencePiece model as --vocab')
  if vocab.GetPieceSize() > vocab_size:
    raise DataError(f'the SentencePiece vocabulary has {vocab.GetPieceSize()} pieces but the '
                    f'model embeds only {vocab_size} (cfg.vocab_size): ids >= {vocab_size} '
                    'would have no embedding; pass the model\'s own vocabulary as --vocab')


def tokenize(vocab, examples, max_input_length, *, path='<examples>'):
  """SentencePiece ids with EOS, truncated to max_input_length -> ([(ids, label)], truncated).

  NOTE: as seqio's `append_eos_after_trim`: trim to max_input_length - 1 pieces, then append
  EOS, so every example ends in EOS. A text with no pieces is an error naming its line.
  """
  pieces = vocab.encode([example.text for example in examples], out_type=int, num_threads=2)
  tokenized, truncated = [], 0
  for example, ids in zip(examples, pieces):
    if not ids:
      raise DataError(f'{path}:{example.line}: text {example.text!r} tokenizes to nothing')
    if len(ids) >= max_input_length:
      truncated += len(ids) > max_input_length - 1
      ids = ids[:max_input_length - 1]
    tokenized.append((ids + [EOS_ID], example.label))
  logging.info('%s: tokenized %d examples; %d truncated to max_input_length=%d', path,
               len(tokenized), truncated, max_input_length)
  return tokenized, truncated


def pack_split(task, examples, vocab, max_input_length, max_target_length, *,
               method='best_fit', labels=None, path='<examples>', block_length=None):
  """Tokenized, packed rows of one split's examples (see `packing`).

  EncT5: up to `max_target_length` examples a row, each label in its target slot. With
  `labels` (a LabelText: T5's and 1decT5's training rows), each example's label as T5 text in
  decoder rows of `max_target_length` tokens (`packing.pack_seq2seq_examples`).
  `block_length`: every example within one block of that many tokens, for block-local
  attention (`packing.pack_examples`). `packed['example_ids']` holds each example's `idx`
  (its data row in the file).
  """
  tokenized, _ = tokenize(vocab, examples, max_input_length, path=path)
  ids = [example.idx for example in examples]
  if labels is None:
    return packing.pack_examples(tokenized, max_input_length, max_target_length,
                                 method=method, regression=task.is_regression, ids=ids,
                                 block_length=block_length)
  targets = labels.tokens([example.label for example in examples])
  return packing.pack_seq2seq_examples(
      [(tokens, target) for (tokens, _), target in zip(tokenized, targets)], max_input_length,
      max_target_length, method=method, ids=ids, block_length=block_length)


def load_packed(task, data_dir, split, vocab, max_input_length, max_target_length, *,
                method='best_fit', labels=None, on_error='raise', block_length=None):
  """The whole road for one split: read, tokenize, pack. -> (examples, packed rows)."""
  examples = read_split(task, data_dir, split, on_error=on_error)
  return examples, pack_split(task, examples, vocab, max_input_length, max_target_length,
                              method=method, labels=labels,
                              path=split_path(task, data_dir, split), block_length=block_length)


# ---------------------------------------------------------------------------------------------
# Labels as T5 text, for the T5 and 1decT5 baselines (paper §4.3).
# ---------------------------------------------------------------------------------------------

INVALID_PREDICTION = -1  # T5's class id for an output string that is no label


def label_texts(task):
  """T5's target strings of a task: its label names, or STS-B's scores 0.0, 0.2, ..., 5.0."""
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
        raise DataError(f'the vocabulary cannot spell the {task.name} label {text!r} (it '
                        f'decodes as {vocab.decode(vocab.encode(text))!r}); use T5\'s '
                        'vocabulary, or let train.py train one on the texts and labels')
    # Decoding stops after the longest label and its EOS: anything longer is no label.
    self.decode_length = max(len(vocab.encode(text)) for text in label_texts(task)) + 1

  def tokens(self, labels):
    """Target ids of each label: its T5 text, tokenized, and EOS (seqio appends it)."""
    pieces = self.vocab.encode([label_text(self.task, label) for label in labels])
    return [ids + [EOS_ID] for ids in pieces]

  def parse(self, tokens):
    """Decoded tokens [B, decode_length] -> [B] class ids 1..n, or -1 where the text (the tokens
    before EOS) is no label; STS-B: floats, -1.0 where the text is no number.

    NOTE: as T5's `postprocessors.string_label_to_class_id` and `string_to_float`, whose
    default for an unknown string is -1 (INVALID_PREDICTION), which the metrics count
    wrong.
    """
    tokens = np.asarray(tokens)
    # Ids past the SentencePiece model (the embedding has rows up to a multiple of 128) as unk.
    tokens = np.where(tokens < self.vocab.GetPieceSize(), tokens, UNK_ID).tolist()
    texts = []
    for row in tokens:
      end = row.index(EOS_ID) if EOS_ID in row else len(row)
      texts.append(self.vocab.decode(row[:end]))
    if self.task.is_regression:
      return np.array([_float_or(text, float(INVALID_PREDICTION)) for text in texts],
                      np.float32)
    names = self.task.label_names
    return np.array([names.index(text) + 1 if text in names else INVALID_PREDICTION
                     for text in texts],
                    np.int32)


def _float_or(text, default):
  try:
    return float(text)
  except ValueError:
    return default


# ---------------------------------------------------------------------------------------------
# Metrics (T5 `t5.evaluation.metrics`, as sklearn/scipy compute them), in percent.
# ---------------------------------------------------------------------------------------------

def accuracy(labels, predictions):
  return 100.0 * float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels, predictions, positive):
  """F1 of the positive class (MRPC 'equivalent', QQP 'duplicate'); 0 if it never occurs."""
  labels, predictions = np.asarray(labels) == positive, np.asarray(predictions) == positive
  true_positives = np.sum(labels & predictions)
  denominator = np.sum(labels) + np.sum(predictions)
  return 100.0 * float(2 * true_positives / denominator) if denominator else 0.0


def matthews_corrcoef(labels, predictions):
  """Matthews correlation (CoLA); 0 when a marginal is constant, as sklearn."""
  classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  n = len(labels)
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (inverse[:n], inverse[n:]), 1)
  true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  cov_true_pred = np.trace(confusion) * n - true_sum @ pred_sum
  cov_pred = n * n - pred_sum @ pred_sum
  cov_true = n * n - true_sum @ true_sum
  if cov_pred * cov_true == 0:
    return 0.0
  return 100.0 * float(cov_true_pred / math.sqrt(cov_true * cov_pred))


def pearson_corrcoef(x, y):
  """Pearson's r (STS-B); nan when either side is constant, as scipy."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = math.sqrt(float(x @ x) * float(y @ y))
  return 100.0 * float(x @ y) / denominator if denominator else math.nan


def average_ranks(x):
  """Ranks 1..n; tied values share the mean of their ranks (scipy `rankdata`'s 'average')."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  starts_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
  starts = np.flatnonzero(starts_group)
  ends = np.append(starts[1:], len(x))  # exclusive
  ranks = np.empty(len(x), np.float64)
  ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(starts_group) - 1]
  return ranks


def spearman_corrcoef(x, y):
  """Spearman's rho (STS-B): Pearson's r of the average ranks."""
  return pearson_corrcoef(average_ranks(x), average_ranks(y))


def compute_metrics(task, split, labels, predictions):
  """The task's GLUE metrics on one validation split -> {'<eval name>/<metric>': value}.

  labels: class ids 1..n, or scores for STS-B. predictions: the same, where a class
  prediction may be INVALID_PREDICTION (a T5 output string that is no label).
  NOTE: as T5's metrics count an invalid prediction: wrong for accuracy, a class of its own
  for Matthews correlation (sklearn's), and the opposite of the gold label for F1
  (`f1_score_with_invalid`).
  """
  if split not in task.eval_names:
    raise ValueError(f'{task.name}: no metrics for split {split!r}; evaluated splits are '
                     f'{sorted(task.eval_names)}')
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  if labels.shape != predictions.shape or labels.ndim != 1 or not len(labels):
    raise ValueError(f'{task.name}: labels {labels.shape} and predictions '
                     f'{predictions.shape} must be equal, non-empty vectors')
  if not task.is_regression:
    for name, values, allowed in (('label', labels, ()),
                                  ('prediction', predictions, (INVALID_PREDICTION,))):
      valid = ((values >= 1) & (values <= task.num_classes)) | np.isin(values, allowed)
      if not valid.all():
        raise ValueError(f'{task.name}: {name} {values[~valid][0]} is not a class id '
                         f'1..{task.num_classes}')
  positive = 2  # T5's label 1 ('equivalent', 'duplicate') is class id 2
  opposite = np.where(labels == positive, 1, positive)  # binary tasks only use it
  functions = {
      'accuracy': accuracy,
      'f1': lambda l, p: f1(l, np.where(p == INVALID_PREDICTION, opposite, p), positive),
      'matthews_corrcoef': matthews_corrcoef,
      'pearson_corrcoef': pearson_corrcoef,
      'spearman_corrcoef': spearman_corrcoef,
  }
  eval_name = task.eval_names[split]
  return {f'{eval_name}/{metric}': functions[metric](labels, predictions)
          for metric in task.metric_names}


def task_score(task, scores):
  """The mean of a task's metrics: its column in Table 1 and the best-checkpoint criterion.

  NOTE: as T5's `eval_utils`: metrics of one task (MRPC F1 and accuracy; STS-B Pearson and
  Spearman; MNLI matched and mismatched accuracy) are averaged into one score, and T5's
  `metric_group_max` picks the best step by that mean.
  """
  missing = [key for key in task.metric_keys if key not in scores]
  if missing:
    raise ValueError(f'{task.name}: scores lack {missing}')
  return float(np.mean([scores[key] for key in task.metric_keys]))


def glue_average(scores):
  """The GLUE average of Table 1: the mean over the 8 tasks of each task's `task_score`.

  NOTE: T5's `compute_avg_glue` averages each task's metrics first, then the tasks; MNLI's
  matched and mismatched accuracies count as one task (8 tasks, no WNLI).
  """
  missing = [key for task in TASKS.values() for key in task.metric_keys if key not in scores]
  if missing:
    raise ValueError(f'the GLUE average needs all 8 tasks; scores lack {missing}')
  return float(np.mean([task_score(task, scores) for task in TASKS.values()]))
