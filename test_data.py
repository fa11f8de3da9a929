"""Tests of your own data (tasks.file_task and its readers), multi-label packing, per-kind metrics
and prediction rows. GLUE's own files and metrics are tested in test_packing.py.

Every file here is written by hand, byte for byte, and every expected value worked out by hand
or by scikit-learn.
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

import enct5
import fileio
import metrics
import packing
import predict
import readers
import t5
import tasks
import testutil

GOEMOTIONS_DIR = os.path.join(testutil.SHARED, 'goemotions')


def _write(path, text):
  """Writes text exactly (no newline translation); bytes as they are."""
  data = text if isinstance(text, bytes) else text.encode('utf-8')
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def _task(tmp_path, name, text, **kwargs):
  """A file task whose training file is `text`, written as tmp_path/name."""
  return tasks.file_task(_write(tmp_path / name, text), **kwargs)


# ---------------------------------------------------------------------------------------------
# The three formats, the three kinds of label.
# ---------------------------------------------------------------------------------------------

TICKETS_CSV = ('text,label\n'
               '"Hello, world",billing\n'
               '"She said ""refund"" twice",refund\n'
               '"two\n'
               'lines",billing\n'
               'plain text,refund\n')


def test_csv_classification_round_trip(tmp_path):
  """RFC 4180 quoting (a comma, "" and a line break inside quotes); string labels in, class
  ids 1..n inside, the same strings out."""
  task = _task(tmp_path, 'train.csv', TICKETS_CSV)
  assert task.label_names == task.raw_labels == ('billing', 'refund')  # sorted
  assert task.metric_names == ('accuracy', 'macro_f1') and task.selection_metrics == ('accuracy',)
  examples = readers.read_split(task, None, 'train')
  assert [(e.idx, e.line, e.text, e.label) for e in examples] == [
      (0, 2, 'text: Hello, world', 1),
      (1, 3, 'text: She said "refund" twice', 2),
      (2, 4, 'text: two\nlines', 1),  # the row starts on line 4, ends on 5
      (3, 6, 'text: plain text', 2)]
  strings = [task.label_names[e.label - 1] for e in examples]
  assert strings == ['billing', 'refund', 'billing', 'refund']
  assert [task.raw_label(e.label) for e in examples] == strings


def test_tsv_multi_label_with_csv_quoting(tmp_path):
  """GoEmotions' layout: TSV whose fields may be quoted CSV-style, labels '0,15'; an empty
  label field is a row with no label."""
  text = ('text\tlabel\tid\n'
          '"He said ""stop"". Fine.\t"\t3,1\tx1\n'
          'it\'s a "great" day\t\tx2\n'
          'ok then\t 2 , 10 \tx3\n')
  task = _task(tmp_path, 'train.tsv', text, kind='multi_label')
  assert task.label_names == ('1', '2', '3', '10')  # numbers by value
  assert task.metric_names == ('micro_f1', 'macro_f1') and task.selection_metrics == ('macro_f1',)
  examples = readers.read_split(task, None, 'train')
  assert [(e.line, e.text, e.label) for e in examples] == [
      (2, 'text: He said "stop". Fine.\t', (1, 3)),  # a tab inside quotes is text
      (3, 'text: it\'s a "great" day', ()),  # a quote inside an unquoted field is text
      (4, 'text: ok then', (2, 4))]


def test_jsonl_all_kinds_and_several_text_fields(tmp_path):
  """JSON Lines: keys as columns, text fields in the given order after the task's name; a
  label as a string or an integer, a score as a number, multi-label as a list."""
  rows = [{'passage': 'P one.', 'question': 'Q one?', 'label': 'yes', 'score': 0.5,
           'tags': ['b', 'a']},
          {'question': 'Q two?', 'passage': '', 'label': 7, 'score': -2, 'tags': []}]
  path = _write(tmp_path / 'train.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
  fields = dict(text_fields=('question', 'passage'), name='boolq')
  classes = tasks.file_task(path, **fields)
  assert classes.label_names == ('7', 'yes')
  examples = readers.read_file(classes, path)
  assert [(e.line, e.text, e.label) for e in examples] == [
      (1, 'boolq question: Q one? passage: P one.', 2),
      (2, 'boolq question: Q two? passage: ', 1)]  # one empty field of two is kept
  scores = tasks.file_task(path, label_field='score', kind='regression', **fields)
  assert scores.num_classes == 1 and scores.metric_names == ('pearson_corrcoef',
                                                             'spearman_corrcoef')
  assert [e.label for e in readers.read_file(scores, path)] == [0.5, -2.0]
  tags = tasks.file_task(path, label_field='tags', kind='multi_label', **fields)
  assert [e.label for e in readers.read_file(tags, path)] == [(1, 2), ()]
  assert tags.eval_names == {} and classes.selection_keys == ()  # no validation file


def test_label_order_given_labels_and_labels_by_index(tmp_path):
  path = _write(tmp_path / 'train.csv', 'text,label\na,10\nb,2\nc,b\nd,-1\ne,a\nf,1.5\n')
  assert tasks.file_task(path).label_names == ('-1', '1.5', '2', '10', 'a', 'b')
  given = tasks.file_task(path, labels=('b', 'a', '10', '2', '1.5', '-1', 'unused'))
  assert [e.label for e in readers.read_file(given, path)] == [3, 4, 1, 6, 2, 5]
  names = _write(tmp_path / 'names.txt', 'zero\none\ntwo\n\n')
  assert readers.read_label_names(names) == ('zero', 'one', 'two')
  by_index = tasks.file_task(_write(tmp_path / 'idx.csv', 'text,label\na,2\nb,0\n'),
                             labels=readers.read_label_names(names), labels_by_index=True)
  assert by_index.raw_labels == ('0', '1', '2')
  assert [by_index.label_names[e.label - 1] for e in readers.read_file(by_index, by_index.files[
      'train'])] == ['two', 'zero']
  with pytest.raises(fileio.DataError, match=r"dup.txt:3: label 'a' again \(line 1\)"):
    readers.read_label_names(_write(tmp_path / 'dup.txt', 'a\nb\na\n'))
  with pytest.raises(fileio.DataError, match=r'gap.txt:2: empty label name'):
    readers.read_label_names(_write(tmp_path / 'gap.txt', 'a\n\nb\n'))


@pytest.mark.parametrize('fmt, text', [
    ('glue', b'\xef\xbb\xbfindex\tlabel\tsentence\r\n0\t1\tfirst row \r\n1\t0\tsecond\r\n'),
    ('tsv', b'label\tsentence\r\n1\t"first row "\r\n0\tsecond\r\n'),
    ('csv', b'\xef\xbb\xbflabel,sentence\r\n1,first row \r\n0,second\r\n'),
    ('jsonl', b'{"label": "1", "sentence": "first row "}\r\n'
              b'{"label": "0", "sentence": "second"}\r\n'),
])
def test_windows_line_ends_at_the_reader(tmp_path, fmt, text):
  """CRLF line ends (and a UTF-8 BOM) handled by the reader itself: the text, the last
  column, must not end in '\\r', and each line must count once."""
  path = _write(tmp_path / 'train.txt', text)
  if fmt == 'glue':  # SST-2's preset on a file of its layout
    task = dataclasses.replace(tasks.TASKS['sst2'], files={'train': path}, dir_name='')
  else:
    task = tasks.file_task(path, fmt=fmt, text_fields=('sentence',))
  examples = readers.read_file(task, path)
  assert [e.text.split(': ', 1)[1] for e in examples] == ['first row ', 'second']
  assert [task.raw_label(e.label) for e in examples] == ['1', '0']
  assert [e.line for e in examples] == ([1, 2] if fmt == 'jsonl' else [2, 3])


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming file and line.
# ---------------------------------------------------------------------------------------------

TRAIN_CSV = {  # the training file of each kind, whose labels the bad files are checked against
    'classification': 'text,label\nfine,billing\nalso fine,refund\n',
    'regression': 'text,label\nfine,0\nalso fine,1.5\n',
    'multi_label': 'text,label\nfine,billing\nalso fine,"billing,refund"\n',
}


@pytest.mark.parametrize('name, text, kwargs, message', [
    ('dev.csv', 'text,labl\nx,billing\n', {}, r"dev.csv: columns \['label'\] missing from "
                                              r"the header \['text', 'labl'\]"),
    ('dev.jsonl', '{"text": "a", "label": "billing"}\n{"txt": "b", "label": "refund"}\n', {},
     r"dev.jsonl:2: keys \['text'\] missing"),
    ('dev.csv', 'text,label\nok,billing\n  ,refund\n', {}, r"dev.csv:3: empty text"),
    ('dev.jsonl', '{"text": 5, "label": "refund"}\n', {}, r"dev.jsonl:1: 'text' is 5, not a "
                                                           r"string"),
    ('dev.csv', 'text,label\nok,billing\nok,shipping\n', {},
     r"dev.csv:3: unknown label 'shipping'; the labels are \('billing', 'refund'\)"),
    ('dev.csv', 'text,label\nok,\n', {}, r'dev.csv:2: empty label'),
    ('dev.csv', 'text,label\n"never closed,billing\nok,refund\n', {},
     r'dev.csv:2: broken quoting \(unexpected end of data\)'),
    ('dev.csv', 'text,label\nok,billing\n"closed" then text,refund\n', {},
     r'dev.csv:3: broken quoting'),
    ('dev.jsonl', '{"text": "a", "label": "billing"}\n{"text": "b", "label": }\n', {},
     r'dev.jsonl:2: invalid JSON \(Expecting value at column \d+\)'),
    ('dev.jsonl', '["a", "billing"]\n', {}, r'dev.jsonl:1: a JSON list, not an object'),
    ('dev.jsonl', '{"text": "a", "label": true}\n', {}, r'dev.jsonl:1: label true is neither'),
    ('dev.csv', b'text,label\nok,billing\ncaf\xe9,refund\n', {},
     r'dev.csv:3: byte 0xe9 at column 4 is not UTF-8'),
    ('dev.csv', 'text,label\nok,billing,extra\n', {}, r'dev.csv:2: 3 columns; the header has 2'),
    ('dev.csv', 'text,label,text\nok,billing,x\n', {}, r"dev.csv:1: columns \['text'\] appear "
                                                      r"twice"),
    ('dev.csv', '', {}, r'dev.csv: empty file'),
    ('dev.csv', 'text,label\n\n', {}, r'dev.csv: no examples'),
    ('dev.jsonl', '{"text": "a", "label": "1.5x"}\n', dict(kind='regression'),
     r"dev.jsonl:1: score '1.5x' is not a number"),
    ('dev.csv', 'text,label\nok,nan\n', dict(kind='regression'),
     r"dev.csv:2: score 'nan' is not a finite number"),
    ('dev.tsv', 'text\tlabel\nok\tbilling,refnud\n', dict(kind='multi_label'),
     r"dev.tsv:2: unknown label 'refnud'"),
    ('dev.tsv', 'text\tlabel\nok\tbilling,,refund\n', dict(kind='multi_label'),
     r'dev.tsv:2: empty label'),
    ('dev.tsv', 'text\tlabel\nok\trefund,refund\n', dict(kind='multi_label'),
     r"dev.tsv:2: a label twice in 'refund,refund'"),
    ('dev.jsonl', '{"text": "a", "label": {"x": 1}}\n', dict(kind='multi_label'),
     r'dev.jsonl:1: labels {"x": 1} are neither a JSON list nor a string'),
])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, name, text, kwargs, message):
  train = _write(tmp_path / 'train.csv', TRAIN_CSV[kwargs.get('kind', 'classification')])
  task = tasks.file_task(train, _write(tmp_path / name, text), **kwargs)
  with pytest.raises(fileio.DataError, match=message) as error:
    readers.read_split(task, None, 'validation')
  assert '\n' not in str(error.value) and str(error.value).startswith(str(tmp_path / name))


def test_skipped_rows_are_counted_and_keep_idx(tmp_path, caplog):
  train = _write(tmp_path / 'train.jsonl',
                 '{"text": "a", "label": "x"}\n'
                 '{"text": "b", "label": "y"}\n'
                 'not json\n'
                 '\n'
                 '{"text": "", "label": "x"}\n'
                 '{"text": "c", "label": "z"}\n'
                 '{"text": "d", "label": "y"}\n')
  task = tasks.file_task(train, labels=('x', 'y'))
  with caplog.at_level('INFO'):
    examples = readers.read_file(task, train, on_error='skip')
  assert [(e.idx, e.line, e.label) for e in examples] == [(0, 1, 1), (1, 2, 2), (5, 7, 2)]
  assert 'train.jsonl:3: skipped: invalid JSON' in caplog.text
  assert "train.jsonl:6: skipped: unknown label 'z'" in caplog.text
  assert 'skipped 3 bad rows (lines [3, 5, 6])' in caplog.text
  with pytest.raises(fileio.DataError, match=r'train.jsonl:3: invalid JSON'):
    readers.read_file(task, train)


def test_file_task_argument_errors(tmp_path):
  train = _write(tmp_path / 'train.csv', TRAIN_CSV['classification'])
  with pytest.raises(fileio.DataError, match=r"train.json: cannot tell the format from the "
                                           r"extension '.json'"):
    tasks.file_task(_write(tmp_path / 'train.json', '{}\n'))
  with pytest.raises(ValueError, match="kind must be one of"):
    tasks.file_task(train, kind='ranking')
  with pytest.raises(ValueError, match="selection_metric 'f1' is not one of"):
    tasks.file_task(train, selection_metric='f1')
  with pytest.raises(ValueError, match='name a label twice'):
    tasks.file_task(train, labels=['a', 'a'])
  with pytest.raises(ValueError, match="label 'a,b' holds the label separator ','"):
    tasks.file_task(train, kind='multi_label', labels=['a,b', 'c'])
  with pytest.raises(ValueError, match='labels_by_index needs the label names'):
    tasks.file_task(train, labels_by_index=True)
  with pytest.raises(ValueError, match='regression takes no labels'):
    tasks.file_task(train, kind='regression', labels=['a'])
  with pytest.raises(ValueError, match='without the label field'):
    tasks.file_task(train, text_fields=('text', 'label'))
  with pytest.raises(fileio.DataError, match=r"train.csv: columns \['tag'\] missing"):
    tasks.file_task(train, label_field='tag')
  with pytest.raises(fileio.DataError, match=r"empty.csv: no labels in column 'label'"):
    tasks.file_task(_write(tmp_path / 'empty.csv', 'text,label\na,\n'))
  with pytest.raises(fileio.DataError, match='T5 and 1decT5 write labels as text'):
    t5.label_texts(tasks.file_task(train, kind='multi_label'))
  assert tasks.file_task(train, selection_metric='macro_f1').selection_metrics == ('macro_f1',)


@pytest.mark.parametrize('labels_by_index', [False, True])
def test_a_multi_label_submission_line_reads_back(tmp_path, labels_by_index):
  """`Task.raw_label` of a multi-hot row (a submission's prediction) spells the labels as the
  files do, joined by the separator: read back, it is the same label set."""
  train = _write(tmp_path / 'train.tsv', 'text\tlabel\na\t' + ('0|1|2' if labels_by_index
                                                            else 'late|broken|awful') + '\n')
  task = tasks.file_task(train, kind='multi_label', labels=['late', 'broken', 'awful'],
                         labels_by_index=labels_by_index, label_separator='|')
  line = task.raw_label(np.array([1, 0, 1]))
  assert line == ('0|2' if labels_by_index else 'late|awful')
  [example] = readers.read_file(task, _write(tmp_path / 'back.tsv', f'text\tlabel\nx\t{line}\n'))
  assert example.label == (1, 3)
  assert task.raw_label(np.array([0, 0, 0])) == ''


def test_task_record_round_trip(tmp_path):
  task = tasks.file_task(_write(tmp_path / 'train.tsv', 'text\tlabel\na\t0,2\nb\t1\n'),
                         _write(tmp_path / 'dev.tsv', 'text\tlabel\nc\t2\n'),
                         kind='multi_label', labels=('x', 'y', 'z'), labels_by_index=True,
                         name='emo')
  record = json.loads(json.dumps(tasks.task_to_json(task)))
  assert tasks.task_from_json(record) == task
  assert tasks.task_from_json(json.loads(json.dumps(tasks.task_to_json(tasks.TASKS['mnli'])))) == \
      tasks.TASKS['mnli']


@pytest.mark.skipif(not os.path.isdir(GOEMOTIONS_DIR),
                    reason=f'GoEmotions not found at {GOEMOTIONS_DIR} (set ENCT5_SHARED)')
def test_goemotions_reads_with_its_label_names():
  """The real files: 43,410 / 5,426 rows (SOURCES.md), 28 names from labels.txt."""
  names = readers.read_label_names(os.path.join(GOEMOTIONS_DIR, 'labels.txt'))
  task = tasks.file_task(os.path.join(GOEMOTIONS_DIR, 'train.tsv'),
                         os.path.join(GOEMOTIONS_DIR, 'dev.tsv'), kind='multi_label',
                         labels=names, labels_by_index=True, name='goemotions')
  assert len(names) == 28 and names[0] == 'admiration' and names[27] == 'neutral'
  train = readers.read_split(task, None, 'train')
  dev = readers.read_split(task, None, 'validation')
  assert (len(train), len(dev)) == (43410, 5426)
  # dev.tsv line 3: "You know the answer man, ...", labels 4,27: approval and neutral.
  assert dev[1].text.startswith('goemotions text: You know the answer man')
  assert [task.label_names[k - 1] for k in dev[1].label] == ['approval', 'neutral']
  assert all(1 <= len(e.label) <= 5 for e in train)


# ---------------------------------------------------------------------------------------------
# Streaming a large file for prediction.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_stream_file_in_chunks_in_order(tmp_path, fmt):
  """2,500 rows in chunks of 1,000: 1,000 + 1,000 + 500, in file order, ids the line number
  (or an id column); no label column needed."""
  texts = [f'row {i}' for i in range(2500)]
  if fmt == 'csv':
    path = _write(tmp_path / 'big.csv', 'key,text\n' + ''.join(f'k{i},"{t}"\n'
                                                              for i, t in enumerate(texts)))
  else:
    path = _write(tmp_path / 'big.jsonl', ''.join(json.dumps({'key': f'k{i}', 'text': t}) + '\n'
                                                  for i, t in enumerate(texts)))
  task = tasks.file_task(_write(tmp_path / 'train.csv', 'text,label\na,x\n'), name='tag')
  chunks = list(readers.stream_file(task, path, 1000))
  assert [len(examples) for _, examples in chunks] == [1000, 1000, 500]
  ids = [i for chunk_ids, _ in chunks for i in chunk_ids]
  examples = [e for _, chunk in chunks for e in chunk]
  first_line = 2 if fmt == 'csv' else 1
  assert ids == list(range(first_line, first_line + 2500)) == [e.line for e in examples]
  assert [e.text for e in examples] == [f'tag text: {t}' for t in texts]
  assert [e.idx for e in examples] == list(range(2500))
  assert all(e.label is None for e in examples)
  keyed = list(readers.stream_file(task, path, 999, id_field='key'))
  assert [i for chunk_ids, _ in keyed for i in chunk_ids] == [f'k{i}' for i in range(2500)]
  with pytest.raises(fileio.DataError, match=r"columns \['label'\] missing|keys \['label'\]"):
    list(readers.stream_file(task, path, 1000, labeled=True))


def test_stream_file_format_override_and_text_rows(tmp_path):
  path = _write(tmp_path / 'input.txt', 'text\nfirst\nsecond\n')
  task = tasks.file_task(_write(tmp_path / 'train.csv', 'text,label\na,x\n'))
  (ids, examples), = readers.stream_file(task, path, 10, fmt='tsv')
  assert ids == [2, 3] and [e.text for e in examples] == ['text: first', 'text: second']
  examples = readers.text_examples(task, ['good', {'text': 'bad'}])
  assert [(e.idx, e.line, e.text, e.label) for e in examples] == [
      (0, 1, 'text: good', None), (1, 2, 'text: bad', None)]
  with pytest.raises(fileio.DataError, match='row 2: empty text'):
    readers.text_examples(task, ['fine', ' '])


# ---------------------------------------------------------------------------------------------
# Multi-label packing and EncT5's multi-label head.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Metrics per kind, against scikit-learn.
# ---------------------------------------------------------------------------------------------

def test_multi_label_metrics_by_hand():
  labels = [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
  predictions = [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
  # Label 0: tp 1, fn 1 -> 2/3; label 1: tp 1, fp 1 -> 2/3; label 2: never true nor predicted.
  np.testing.assert_allclose(metrics.label_f1(labels, predictions), [200 / 3, 200 / 3, 0])
  assert metrics.macro_f1(labels, predictions) == pytest.approx(400 / 9)
  assert metrics.micro_f1(labels, predictions) == pytest.approx(100 * 2 * 2 / (3 + 3))
  assert metrics.micro_f1([[0]], [[0]]) == 0.0


def test_multi_label_metrics_match_sklearn():
  """zero_division=0: a label neither true nor predicted scores F1 0 (sklearn's default
  value, without its warning)."""
  rng = np.random.default_rng(0)
  for _ in range(30):
    n, k = int(rng.integers(1, 200)), int(rng.integers(1, 12))
    labels = (rng.random((n, k)) < rng.random(k) * 0.5).astype(np.int32)
    predictions = (rng.random((n, k)) < rng.random(k) * 0.5).astype(np.int32)
    labels[:, 0] = predictions[:, 0] = 0  # a label nobody has nor predicts
    for average, ours in (('micro', metrics.micro_f1), ('macro', metrics.macro_f1)):
      assert ours(labels, predictions) == pytest.approx(100 * sklearn_metrics.f1_score(
          labels, predictions, average=average, zero_division=0)), average
    np.testing.assert_allclose(metrics.label_f1(labels, predictions),
                               100 * sklearn_metrics.f1_score(labels, predictions, average=None,
                                                              zero_division=0))


@pytest.mark.parametrize('selection', ['macro_f1', 'micro_f1'])
def test_thresholds_chosen_are_those_a_search_with_sklearn_finds(tmp_path, selection):
  """The global threshold is the candidate with sklearn's best selection F1, the lowest on a
  tie; a label true >= MIN_THRESHOLD_SUPPORT times gets the candidate of its own best F1, a
  rarer one the global threshold; those apply where their selection F1 beats the global one."""
  task = tasks.file_task(_write(tmp_path / 'train.tsv', 'text\tlabel\na\t0,1,2,3,4\n'),
                         kind='multi_label', selection_metric=selection)
  rng = np.random.default_rng(0)
  labels = (rng.random((300, 5)) < [0.5, 0.3, 0.1, 0.03, 0.01]).astype(np.int32)
  probabilities = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1)
  labels[:, 3] = 0
  labels[:9, 3] = 1  # 9 times true: one short of a threshold of its own
  labels[:, 4] = 0
  labels[:12, 4] = 1
  probabilities[:, 4] = rng.random(300)  # no signal: its own best F1 labels nearly every row
  average = selection.split('_')[0]
  f1 = lambda decisions: sklearn_metrics.f1_score(labels, decisions, average=average,
                                                  zero_division=0)

  def best(score):  # the first candidate with the highest score
    values = [score(probabilities >= t) for t in metrics.THRESHOLDS]
    return metrics.THRESHOLDS[values.index(max(values))]
  global_threshold = best(f1)
  per_label = np.full(5, global_threshold)
  for k in range(5):
    if labels[:, k].sum() >= metrics.MIN_THRESHOLD_SUPPORT:
      per_label[k] = best(lambda p: sklearn_metrics.f1_score(labels[:, k], p[:, k],
                                                             zero_division=0))
  assert labels[:, 3].sum() == 9 and per_label[3] == global_threshold != per_label[0]
  better = f1(probabilities >= per_label) > f1(probabilities >= global_threshold)
  chosen = metrics.choose_thresholds(task, labels, probabilities)
  assert chosen[0] == global_threshold
  np.testing.assert_array_equal(chosen[1], per_label if better else global_threshold)
  assert better == (selection == 'macro_f1')  # this data meets both cases
  separable = np.where(labels, 0.9, 0.1)  # every candidate in (0.1, 0.9] is perfect
  assert metrics.choose_thresholds(task, labels, separable)[0] == 0.15


def test_classification_macro_f1_matches_sklearn():
  """Over all n classes (sklearn's labels=1..n); a T5 output that is no label (-1) misses."""
  rng = np.random.default_rng(1)
  for _ in range(30):
    n, k = int(rng.integers(1, 200)), int(rng.integers(2, 6))
    labels = rng.integers(1, k + 1, n)
    predictions = np.where(rng.random(n) < 0.1, -1, rng.integers(1, k + 1, n))
    expected = 100 * sklearn_metrics.f1_score(labels, predictions, labels=range(1, k + 1),
                                              average='macro', zero_division=0)
    assert metrics.macro_f1(metrics.one_hot(labels, k), metrics.one_hot(predictions, k)) == \
        pytest.approx(expected)


def test_compute_metrics_and_selection_per_kind(tmp_path):
  train = _write(tmp_path / 'train.csv', 'text,label\na,x\nb,y\nc,"x,z"\n')
  dev = _write(tmp_path / 'dev.csv', 'text,label\na,x\n')
  classes = tasks.file_task(train, dev, labels=('x', 'y', 'x,z'))
  scores = metrics.compute_metrics(classes, 'validation', [1, 2, 2, 3], [1, 2, 1, -1])
  # F1 per class: x 2/3, y 2/3, 'x,z' 0 (missed).
  assert scores == {'validation/accuracy': 50.0,
                    'validation/macro_f1': pytest.approx(100 * 4 / 9)}
  assert metrics.task_score(classes, scores) == 50.0
  tags = tasks.file_task(train, dev, kind='multi_label', name='tags')
  assert tags.label_names == ('x', 'y', 'z')
  scores = metrics.compute_metrics(tags, 'validation', [[1, 0, 1], [0, 1, 0]],
                                   [[1, 0, 0], [0, 1, 0]])
  assert scores == {'tags/micro_f1': pytest.approx(100 * 4 / 5),
                    'tags/macro_f1': pytest.approx(100 * 2 / 3),
                    'tags/f1/x': 100.0, 'tags/f1/y': 100.0, 'tags/f1/z': 0.0}
  assert tags.metric_keys == ('tags/micro_f1', 'tags/macro_f1')
  assert metrics.task_score(tags, scores) == pytest.approx(100 * 2 / 3)
  by_micro = tasks.file_task(train, dev, kind='multi_label', name='tags',
                             selection_metric='micro_f1')
  assert metrics.task_score(by_micro, scores) == pytest.approx(80.0)
  assert list(metrics.compute_metrics(tags, 'train', [[1, 0, 0]], [[1, 0, 0]]))[0] == \
      'train/micro_f1'  # a labeled file outside validation: named by its split
  with pytest.raises(ValueError, match=r'of shape \[N\] x 3 \(multi-hot\)'):
    metrics.compute_metrics(tags, 'validation', [1, 2], [1, 2])
  with pytest.raises(ValueError, match='must be 0 or 1'):
    metrics.compute_metrics(tags, 'validation', [[2, 0, 0]], [[1, 0, 0]])


# ---------------------------------------------------------------------------------------------
# Prediction rows.
# ---------------------------------------------------------------------------------------------

def test_prediction_rows_per_kind(tmp_path):
  train = _write(tmp_path / 'train.csv', 'text,label\na,refund\nb,billing\nc,"billing,other"\n')
  classes = tasks.file_task(train, labels=('billing', 'refund', 'other'))
  logits = np.array([0.0, 1.0, 3.0, -1.0])  # class 0 (padding) ignored
  cfg = enct5.get_config('tiny', num_classes=3)
  probs = np.asarray(enct5.probabilities(logits, cfg))
  row = predict.prediction_row(classes, 7, probs)
  assert list(row) == ['id', 'label', 'probabilities'] and row['id'] == 7
  assert row['label'] == 'refund' == classes.label_names[int(enct5.predict(logits, cfg)) - 1]
  assert sum(row['probabilities'].values()) == pytest.approx(1.0, abs=1e-5)
  assert row['probabilities']['refund'] == pytest.approx(
      np.exp(3) / (np.exp(1) + np.exp(3) + np.exp(-1)), abs=1e-6)
  tags = tasks.file_task(train, kind='multi_label')
  row = predict.prediction_row(tags, 'k1', [0.9, 0.3, 0.29], threshold=0.3, id_key='line')
  assert row == {'line': 'k1', 'labels': ['billing', 'other'],
                 'probabilities': {'billing': 0.9, 'other': 0.3, 'refund': 0.29}}
  scores = tasks.file_task(_write(tmp_path / 'scores.csv', 'text,label\na,1\n'), kind='regression')
  assert predict.prediction_row(scores, 3, np.float32(2.5)) == {'id': 3, 'value': 2.5}
