"""Tests of metrics.py: GLUE's metrics by hand and against scikit-learn and scipy, T5's invalid
predictions, each kind's metrics, the task score and GLUE's average, and the thresholds chosen
for multi-label predictions (against a search with scikit-learn)."""
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sklearn_metrics

import metrics
import tasks
from testutil import write


# ----------------------------------------------------------------------------------------- GLUE

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


# ----------------------------------------------- your own tasks: per kind, against scikit-learn

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
  train = write(tmp_path / 'train.csv', 'text,label\na,x\nb,y\nc,"x,z"\n')
  dev = write(tmp_path / 'dev.csv', 'text,label\na,x\n')
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


# ----------------------------------------------------------------------- multi-label thresholds

@pytest.mark.parametrize('selection', ['macro_f1', 'micro_f1'])
def test_thresholds_chosen_are_those_a_search_with_sklearn_finds(tmp_path, selection):
  """The global threshold is the candidate with sklearn's best selection F1, the lowest on a
  tie; a label true >= MIN_THRESHOLD_SUPPORT times gets the candidate of its own best F1, a
  rarer one the global threshold; those apply where their selection F1 beats the global one."""
  task = tasks.file_task(write(tmp_path / 'train.tsv', 'text\tlabel\na\t0,1,2,3,4\n'),
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
