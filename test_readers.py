"""Tests of readers.py: GLUE's files (those of ../shared/glue, and small ones by hand in the
layouts it lacks), your own CSV, TSV and JSON Lines files (each kind of label), streaming a large
file in chunks, and bad input: one line naming file and line, or counted skips.

Every small file here is written by hand, byte for byte, and every expected value worked out by
hand.
"""
import dataclasses
import json
import os

import numpy as np
import pytest

import fileio
import readers
import tasks
import testutil
from testutil import GLUE_DIR, GLUE_FILES, TRAIN_CSV, need_glue, write

GOEMOTIONS_DIR = os.path.join(testutil.SHARED, 'goemotions')
# Label counts of ../shared/glue, from its SOURCES.md.
LABEL_COUNTS = {  # class id -> count; class id = T5 label index + 1
    ('cola', 'train'): {1: 2528, 2: 6023}, ('cola', 'validation'): {1: 322, 2: 721},
    ('sst2', 'train'): {1: 29780, 2: 37569}, ('sst2', 'validation'): {1: 428, 2: 444},
    ('mrpc', 'validation'): {1: 129, 2: 279},
    ('rte', 'train'): {1: 1249, 2: 1241}, ('rte', 'validation'): {1: 146, 2: 131},
    ('qnli', 'validation'): {1: 2702, 2: 2761},
}


# ----------------------------------------------------------------------------------- GLUE files

@pytest.mark.parametrize('task_name, split', sorted(GLUE_FILES))
def test_glue_file_loads(task_name, split):
  need_glue()
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
  need_glue()
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
  train = readers.read_file(task, write(tmp_path / 'train.tsv', MNLI_TRAIN))
  # T5's sorted feature order: hypothesis (sentence2) before premise (sentence1).
  assert train[0].text == ('mnli hypothesis: Product and geography are what make cream '
                           'skimming work.  premise: Conceptually cream skimming has two '
                           'basic dimensions.')
  assert [e.label for e in train] == [2, 1, 3]  # neutral, entailment, contradiction
  dev = readers.read_file(task, write(tmp_path / 'dev_matched.tsv', MNLI_DEV))
  assert dev[0].label == 2 and dev[0].text.startswith('mnli hypothesis: Everyone really')
  test = readers.read_file(task, write(tmp_path / 'test_matched.tsv', MNLI_TEST), labeled=False)
  assert test == [readers.Example(0, 2, 'mnli hypothesis: How are you? premise: Hey, hey.', None)]
  os.makedirs(tmp_path / 'MNLI')
  write(tmp_path / 'MNLI' / 'dev_mismatched.tsv', MNLI_DEV)
  assert readers.read_split(task, str(tmp_path), 'validation_mismatched') == dev
  assert task.raw_label(3) == 'contradiction'


def test_qqp_qnli_and_test_readers(tmp_path):
  qqp = tasks.TASKS['qqp']
  train = readers.read_file(qqp, write(tmp_path / 'qqp.tsv', QQP_TRAIN))
  assert train[1].text == ('qqp question1: How do I control my horny emotions? '
                           'question2: How do you control your horniness?')
  assert [e.label for e in train] == [1, 2]  # 2 = duplicate, F1's positive class
  test = readers.read_file(qqp, write(tmp_path / 'qqp_test.tsv', QQP_TEST), labeled=False)
  assert test[0].label is None and test[0].text.startswith('qqp question1: Why am I')
  qnli = readers.read_file(tasks.TASKS['qnli'], write(tmp_path / 'qnli.tsv', QNLI_TRAIN))
  assert qnli[0].label == 2 and qnli[0].text.startswith('qnli question: When did')
  for name, text in (('cola', COLA_TEST), ('mrpc', MRPC_TEST), ('stsb', STSB_TEST)):
    examples = readers.read_file(tasks.TASKS[name], write(tmp_path / f'{name}_test.tsv', text),
                             labeled=False)
    assert len(examples) == 1 and examples[0].label is None and examples[0].line == 2
  assert examples[0].text == ('stsb sentence1: A girl is styling her hair. '
                              'sentence2: A girl is brushing her hair.')
  with pytest.raises(ValueError, match=r"qqp_test.tsv: columns \['is_duplicate'\] missing"):
    readers.read_file(qqp, str(tmp_path / 'qqp_test.tsv'))  # a test file read as labeled


# -------------------------- malformed GLUE files: errors naming file and line, or counted skips

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
  path = write(tmp_path / 'bad.tsv', text)
  with pytest.raises(ValueError, match=message):
    readers.read_file(tasks.TASKS[task_name], path)


def test_malformed_rows_skipped_and_counted(tmp_path, caplog):
  text = RTE_HEADER + '0\ta\tb\tentailment\n1\ta\tb\n2\ta\tb\tneutral\n3\tc\t\tnot_entailment\n'
  path = write(tmp_path / 'rte.tsv', text)
  with caplog.at_level('INFO'):
    examples = readers.read_file(tasks.TASKS['rte'], path, on_error='skip')
  assert [(e.idx, e.line, e.label) for e in examples] == [(0, 2, 1), (3, 5, 2)]
  assert examples[1].text == 'rte sentence1: c sentence2: '  # empty field kept, as T5
  log = caplog.text
  assert 'rte.tsv:3: skipped: 3 columns' in log and "rte.tsv:4: skipped: unknown label" in log
  assert 'skipped 2 bad rows (lines [3, 4])' in log and '1 rows with an empty text field' in log
  with pytest.raises(ValueError, match='all 1 rows are bad'):
    readers.read_file(tasks.TASKS['rte'], write(tmp_path / 'all_bad.tsv', RTE_HEADER + '0\ta\n'),
                  on_error='skip')


# ---------------------------------- your own files: the three formats, the three kinds of label

def _task(tmp_path, name, text, **kwargs):
  """A file task whose training file is `text`, written as tmp_path/name."""
  return tasks.file_task(write(tmp_path / name, text), **kwargs)


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
  path = write(tmp_path / 'train.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
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
  path = write(tmp_path / 'train.txt', text)
  if fmt == 'glue':  # SST-2's preset on a file of its layout
    task = dataclasses.replace(tasks.TASKS['sst2'], files={'train': path}, dir_name='')
  else:
    task = tasks.file_task(path, fmt=fmt, text_fields=('sentence',))
  examples = readers.read_file(task, path)
  assert [e.text.split(': ', 1)[1] for e in examples] == ['first row ', 'second']
  assert [task.raw_label(e.label) for e in examples] == ['1', '0']
  assert [e.line for e in examples] == ([1, 2] if fmt == 'jsonl' else [2, 3])


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


# ----------------------------------------------------- bad input: one line naming file and line

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
  train = write(tmp_path / 'train.csv', TRAIN_CSV[kwargs.get('kind', 'classification')])
  task = tasks.file_task(train, write(tmp_path / name, text), **kwargs)
  with pytest.raises(fileio.DataError, match=message) as error:
    readers.read_split(task, None, 'validation')
  assert '\n' not in str(error.value) and str(error.value).startswith(str(tmp_path / name))


def test_skipped_rows_are_counted_and_keep_idx(tmp_path, caplog):
  train = write(tmp_path / 'train.jsonl',
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


# ----------------- reading edges: long fields, lone surrogates, a stray quote, JSON label types

def _task_of(path, **kwargs):
  return tasks.file_task(path, path, **kwargs)


def test_a_long_csv_field_is_text(tmp_path):
  path = tmp_path / 'long.csv'
  path.write_text(f'text,label\n"{"word " * 40000}",a\nshort,b\n')
  examples = readers.read_file(_task_of(str(path)), str(path))
  assert [len(example.text) for example in examples] == [len('text: ') + 200000, 11]


@pytest.mark.parametrize('row, line, column', [
    ('{"text": "ok \\ud800", "label": "a"}', 2, 'text'),
    ('{"text": "ok", "label": "a", "key": "\\udfff"}', 2, 'key')])
def test_a_lone_surrogate_is_one_line_naming_file_and_line(tmp_path, row, line, column):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"text": "fine", "label": "b", "key": "k1"}\n' + row + '\n')
  task = tasks.file_task(str(path), str(path))
  with pytest.raises(fileio.DataError, match=f'bad.jsonl:{line}: {column!r} holds a lone '):
    list(readers.stream_file(task, str(path), 10, id_field='key' if column == 'key' else None))


def test_a_stray_quote_in_a_tsv_is_warned(tmp_path, caplog):
  """A quote opening a TSV field joins the lines up to the next quote into one row: warned,
  naming the lines."""
  path = tmp_path / 'stray.tsv'
  path.write_text('text\tlabel\nfine\ta\n"oops\tb\nswallowed\ta\nto here"\tb\nlast\ta\n')
  examples = readers.read_file(_task_of(str(path)), str(path))
  assert len(examples) == 3
  assert 'stray.tsv:3: a quoted field runs over lines 3-5 and holds tabs' in caplog.text


def test_a_json_label_of_another_type_is_warned(tmp_path, caplog):
  path = tmp_path / 'types.jsonl'
  path.write_text('{"text": "a", "label": "1"}\n{"text": "b", "label": 2}\n'
                  '{"text": "c", "label": 1}\n')
  task = _task_of(str(path))
  assert task.label_names == ('1', '2')
  readers.read_file(task, str(path))
  assert 'types.jsonl:2: label 2 is a JSON number where the rows before spell labels as JSON ' \
         'strings' in caplog.text


def test_a_missing_label_column_names_it(tmp_path):
  path = tmp_path / 'unlabelled.csv'
  path.write_text('text\nhello\n')
  task = tasks.Task('', (('text', 'text'),), 'label', {}, raw_labels=('a',), label_names=('a',))
  with pytest.raises(fileio.DataError) as e:
    readers.read_file(task, str(path))
  assert str(e.value) == f"{path}: columns ['label'] missing from the header ['text']"


# -------------------------------------------------------- streaming a large file for prediction

@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_stream_file_in_chunks_in_order(tmp_path, fmt):
  """2,500 rows in chunks of 1,000: 1,000 + 1,000 + 500, in file order, ids the line number
  (or an id column); no label column needed."""
  texts = [f'row {i}' for i in range(2500)]
  if fmt == 'csv':
    path = write(tmp_path / 'big.csv', 'key,text\n' + ''.join(f'k{i},"{t}"\n'
                                                             for i, t in enumerate(texts)))
  else:
    path = write(tmp_path / 'big.jsonl', ''.join(json.dumps({'key': f'k{i}', 'text': t}) + '\n'
                                                 for i, t in enumerate(texts)))
  task = tasks.file_task(write(tmp_path / 'train.csv', 'text,label\na,x\n'), name='tag')
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
  path = write(tmp_path / 'input.txt', 'text\nfirst\nsecond\n')
  task = tasks.file_task(write(tmp_path / 'train.csv', 'text,label\na,x\n'))
  (ids, examples), = readers.stream_file(task, path, 10, fmt='tsv')
  assert ids == [2, 3] and [e.text for e in examples] == ['text: first', 'text: second']
  examples = readers.text_examples(task, ['good', {'text': 'bad'}])
  assert [(e.idx, e.line, e.text, e.label) for e in examples] == [
      (0, 1, 'text: good', None), (1, 2, 'text: bad', None)]
  with pytest.raises(fileio.DataError, match='row 2: empty text'):
    readers.text_examples(task, ['fine', ' '])
