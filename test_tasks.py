"""Tests of tasks.py: the GLUE tasks' table, your own files as a task (`file_task`: its argument
errors, the order of its labels, labels by index), the raw label of a multi-label submission
line, and a task's record."""
import json

import numpy as np
import pytest

import fileio
import readers
import t5
import tasks
from testutil import TRAIN_CSV, write


def test_tasks_table():
  assert sorted(tasks.TASKS) == ['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', 'stsb']
  assert tasks.TASKS['stsb'].num_classes == 1 and tasks.TASKS['stsb'].is_regression
  assert tasks.TASKS['mnli'].num_classes == 3
  assert tasks.TASKS['mnli'].metric_keys == ('mnli_matched/accuracy', 'mnli_mismatched/accuracy')
  assert tasks.TASKS['stsb'].raw_label(3.14159) == '3.142'
  assert tasks.TASKS['cola'].raw_label(2) == '1'
  with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
    tasks.get_task('wnli')


def test_file_task_argument_errors(tmp_path):
  train = write(tmp_path / 'train.csv', TRAIN_CSV['classification'])
  with pytest.raises(fileio.DataError, match=r"train.json: cannot tell the format from the "
                                           r"extension '.json'"):
    tasks.file_task(write(tmp_path / 'train.json', '{}\n'))
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
    tasks.file_task(write(tmp_path / 'empty.csv', 'text,label\na,\n'))
  with pytest.raises(fileio.DataError, match='T5 and 1decT5 write labels as text'):
    t5.label_texts(tasks.file_task(train, kind='multi_label'))
  assert tasks.file_task(train, selection_metric='macro_f1').selection_metrics == ('macro_f1',)


def test_label_order_given_labels_and_labels_by_index(tmp_path):
  path = write(tmp_path / 'train.csv', 'text,label\na,10\nb,2\nc,b\nd,-1\ne,a\nf,1.5\n')
  assert tasks.file_task(path).label_names == ('-1', '1.5', '2', '10', 'a', 'b')
  given = tasks.file_task(path, labels=('b', 'a', '10', '2', '1.5', '-1', 'unused'))
  assert [e.label for e in readers.read_file(given, path)] == [3, 4, 1, 6, 2, 5]
  names = write(tmp_path / 'names.txt', 'zero\none\ntwo\n\n')
  assert readers.read_label_names(names) == ('zero', 'one', 'two')
  by_index = tasks.file_task(write(tmp_path / 'idx.csv', 'text,label\na,2\nb,0\n'),
                             labels=readers.read_label_names(names), labels_by_index=True)
  assert by_index.raw_labels == ('0', '1', '2')
  assert [by_index.label_names[e.label - 1] for e in readers.read_file(by_index, by_index.files[
      'train'])] == ['two', 'zero']
  with pytest.raises(fileio.DataError, match=r"dup.txt:3: label 'a' again \(line 1\)"):
    readers.read_label_names(write(tmp_path / 'dup.txt', 'a\nb\na\n'))
  with pytest.raises(fileio.DataError, match=r'gap.txt:2: empty label name'):
    readers.read_label_names(write(tmp_path / 'gap.txt', 'a\n\nb\n'))


@pytest.mark.parametrize('labels_by_index', [False, True])
def test_a_multi_label_submission_line_reads_back(tmp_path, labels_by_index):
  """`Task.raw_label` of a multi-hot row (a submission's prediction) spells the labels as the
  files do, joined by the separator: read back, it is the same label set."""
  train = write(tmp_path / 'train.tsv', 'text\tlabel\na\t' + ('0|1|2' if labels_by_index
                                                            else 'late|broken|awful') + '\n')
  task = tasks.file_task(train, kind='multi_label', labels=['late', 'broken', 'awful'],
                         labels_by_index=labels_by_index, label_separator='|')
  line = task.raw_label(np.array([1, 0, 1]))
  assert line == ('0|2' if labels_by_index else 'late|awful')
  [example] = readers.read_file(task, write(tmp_path / 'back.tsv', f'text\tlabel\nx\t{line}\n'))
  assert example.label == (1, 3)
  assert task.raw_label(np.array([0, 0, 0])) == ''


def test_task_record_round_trip(tmp_path):
  task = tasks.file_task(write(tmp_path / 'train.tsv', 'text\tlabel\na\t0,2\nb\t1\n'),
                         write(tmp_path / 'dev.tsv', 'text\tlabel\nc\t2\n'),
                         kind='multi_label', labels=('x', 'y', 'z'), labels_by_index=True,
                         name='emo')
  record = json.loads(json.dumps(tasks.task_to_json(task)))
  assert tasks.task_from_json(record) == task
  assert tasks.task_from_json(json.loads(json.dumps(tasks.task_to_json(tasks.TASKS['mnli'])))) == \
      tasks.TASKS['mnli']
