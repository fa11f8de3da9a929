"""Tests of your own files through train.py: each kind of label trains from a hand-written file,
predictions keep the input's order and strings, a file larger than one chunk streams, and
`predict.Labeler` labels text from Python as `--mode=predict` does."""
import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

import evaluation
import finetune
import packing
import predict
import readers
import tasks
import train
from testutil import WORDS, write_rows as _write

# A model of a few thousand parameters on 32-token rows: compiles and trains in seconds.
TINY = ['--size=tiny', '--d_model=16', '--num_heads=2', '--head_dim=8', '--d_ff=32',
        '--num_layers=1', '--max_input_length=32', '--max_target_length=4', '--batch_size=4',
        '--vocab_size=60', '--train_steps=6', '--eval_every=3', '--log_every=3',
        '--learning_rate=0.01', '--compilation_cache=']


def _main(*argv):
  """train.py's main in this process (a user's mistake raised, not turned into a status)."""
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *argv])
  train.run_command(['train.py'])


def _rows(n, seed):
  """(text, queue, multi-label tags, score) of made-up support tickets."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    words = list(rng.choice(WORDS, rng.integers(3, 8)))
    queue = 'billing' if 'billing' in words or 'card' in words else (
        'refund' if 'refund' in words else 'other')
    tags = sorted({w for w in words if w in ('late', 'broken', 'awful')})
    rows.append((' '.join(words), queue, tags, float(len(words))))
  return rows


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_classification_strings_in_strings_out(tmp_path):
  """CSV with string labels: the label set is the training file's (sorted, recorded), the
  output rows are one per input row in input order, with the label as a string and
  probabilities over every label summing to 1; a quoted field with a comma reads as one."""
  csv_rows = lambda rows: [f'"{text}, again",{queue}' for text, queue, _, _ in rows]
  train_file = _write(tmp_path / 'train.csv', 'text,queue', csv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.csv', 'text,queue', csv_rows(_rows(12, 1)))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--label_field=queue',
        f'--output_dir={out}', *TINY)
  record = json.loads((out / finetune.RECORD_FILE).read_text())
  assert record['task']['label_names'] == ['billing', 'other', 'refund']
  rows = _rows(9, 2)
  input_file = _write(tmp_path / 'new.tsv', 'id\ttext', [f'ticket-{i}\t{text}'
                                                        for i, (text, _, _, _) in
                                                        enumerate(rows)])
  _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}', '--id_field=id',
        f'--predictions_file={tmp_path}/out.jsonl')
  predicted = _read_jsonl(tmp_path / 'out.jsonl')
  assert [p['id'] for p in predicted] == [f'ticket-{i}' for i in range(9)]
  for p in predicted:
    assert p['label'] in ('billing', 'other', 'refund')
    assert set(p['probabilities']) == {'billing', 'other', 'refund'}
    assert sum(p['probabilities'].values()) == pytest.approx(1.0, abs=1e-5)
    assert p['label'] == max(p['probabilities'], key=p['probabilities'].get)


def test_multi_label_jsonl_and_a_file_larger_than_a_chunk(tmp_path, monkeypatch):
  """JSON Lines with a list of labels a row (some rows none): --multi_label trains a sigmoid per
  label; predictions of 30 rows streamed 7 at a time equal those of one chunk, row for row,
  and each row's labels are those whose probability reaches --threshold."""
  line = lambda text, tags: json.dumps({'text': text, 'tags': tags})
  train_file = _write(tmp_path / 'train.jsonl', line('late late', ['late']),
                      [line(text, tags) for text, _, tags, _ in _rows(40, 0)])
  dev_file = _write(tmp_path / 'dev.jsonl', line('awful', ['awful']),
                    [line(text, tags) for text, _, tags, _ in _rows(12, 1)])
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--label_field=tags',
        '--multi_label', '--threshold=0.4', f'--output_dir={out}', *TINY)
  input_file = _write(tmp_path / 'new.jsonl', line('broken card', []),
                      [line(text, []) for text, _, _, _ in _rows(29, 2)])
  _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}',
        f'--predictions_file={tmp_path}/whole.jsonl')
  monkeypatch.setattr(predict, 'PREDICT_CHUNK_ROWS', 7)
  _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}',
        f'--predictions_file={tmp_path}/chunks.jsonl')
  whole, chunks = _read_jsonl(tmp_path / 'whole.jsonl'), _read_jsonl(tmp_path / 'chunks.jsonl')
  assert [p['line'] for p in chunks] == [p['line'] for p in whole] == list(range(1, 31))
  for a, b in zip(whole, chunks):
    assert a['labels'] == b['labels']
    np.testing.assert_allclose(list(a['probabilities'].values()),
                               list(b['probabilities'].values()), atol=2e-6)
    assert a['labels'] == [k for k, p in a['probabilities'].items() if p >= 0.4]
  assert set(whole[0]['probabilities']) == {'awful', 'broken', 'late'}


def test_thresholds_chosen_on_validation_decide_eval_and_predict(tmp_path, monkeypatch):
  """Without --threshold each evaluation chooses the thresholds on validation and records them
  in metrics.jsonl: the recorded scores are sklearn's F1 of --mode=predict's probabilities
  of the validation rows at the best checkpoint's thresholds (and at 0.5 for '@0.5'); the
  predicted labels, the Labeler's and --mode=eval's scores use them, and --threshold=0.4
  moves --mode=eval to the scores at 0.4."""
  tsv_rows = lambda rows: [f'{text}\t{",".join(tags)}' for text, _, tags, _ in rows]
  dev_rows = _rows(40, 1)
  train_file = _write(tmp_path / 'train.tsv', 'text\tlabel', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tlabel', tsv_rows(dev_rows))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--multi_label',
        f'--output_dir={out}', *TINY)
  best = max(_read_jsonl(out / 'metrics.jsonl'), key=lambda record: record['score'])
  names = ('awful', 'broken', 'late')
  thresholds = np.array([best['thresholds'][name] for name in names])
  _main('--mode=predict', f'--output_dir={out}', f'--input_file={dev_file}',
        f'--predictions_file={tmp_path}/dev.jsonl')
  predicted = _read_jsonl(tmp_path / 'dev.jsonl')
  probabilities = np.array([[row['probabilities'][name] for name in names] for row in predicted])
  assert [row['labels'] for row in predicted] == [
      [name for name, p, t in zip(names, row, thresholds) if p >= t] for row in probabilities]
  assert [row['labels'] for row in predict.Labeler(str(out))(
      [text for text, _, _, _ in dev_rows])] == [row['labels'] for row in predicted]
  gold = np.array([[name in tags for name in names] for _, _, tags, _ in dev_rows])
  for suffix, decided in (('', probabilities >= thresholds), ('@0.5', probabilities >= 0.5)):
    for average in ('micro', 'macro'):
      assert best['scores'][f'validation/{average}_f1{suffix}'] == pytest.approx(
          100 * f1_score(gold, decided, average=average, zero_division=0)), (average, suffix)

  evaluated = []
  evaluate = finetune.evaluate
  monkeypatch.setattr(finetune, 'evaluate', lambda config: evaluated.append(evaluate(config)))
  _main('--mode=eval', f'--output_dir={out}')
  _main('--mode=eval', f'--output_dir={out}', '--threshold=0.4')
  for average in ('micro', 'macro'):
    key = f'validation/{average}_f1'
    assert evaluated[0][key] == pytest.approx(best['scores'][key], abs=1e-9)
    assert evaluated[1][key] == pytest.approx(
        100 * f1_score(gold, probabilities >= 0.4, average=average, zero_division=0))


def test_a_multi_label_run_resumes_bit_for_bit(tmp_path):
  """Stopped after its first evaluation and resumed, a multi-label run ends where an
  uninterrupted one does: the prior bias starts a fresh head only, not a resumed one."""
  tsv_rows = lambda rows: [f'{text}\t{",".join(tags)}' for text, _, tags, _ in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tlabel', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tlabel', tsv_rows(_rows(12, 1)))
  flags = [f'--train_file={train_file}', f'--validation_file={dev_file}', '--multi_label', *TINY]
  _main(*flags, f'--output_dir={tmp_path}/whole')
  _main(*flags, f'--output_dir={tmp_path}/resumed', '--train_steps=3')
  _main(*flags, f'--output_dir={tmp_path}/resumed')
  whole, resumed = (_read_jsonl(tmp_path / run / 'metrics.jsonl') for run in ('whole', 'resumed'))
  drop_time = lambda records: [{k: v for k, v in r.items() if not k.endswith('_s')}
                               for r in records]
  assert drop_time(resumed) == drop_time(whole) and len(whole) == 2


@pytest.mark.parametrize('labels_by_index', [False, True])
def test_multi_label_rows_read_back_with_another_separator(tmp_path, labels_by_index):
  """--label_separator='|' and a label name holding a comma: the files read with it, and the
  predictions file (TSV, each row's labels joined by '|') reads back through the readers to
  the label sets predicted; with --labels_by_index the files spell indices, the predictions
  the names."""
  names = ('late, again', 'broken', 'awful')
  (tmp_path / 'labels.txt').write_text('\n'.join(names) + '\n')
  class_index = {'late': 0, 'broken': 1, 'awful': 2}  # tag -> its name's index
  spell = {tag: str(k) if labels_by_index else names[k] for tag, k in class_index.items()}
  tsv_rows = lambda rows: [f'{text}\t{"|".join(spell[t] for t in tags)}'
                           for text, _, tags, _ in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tlabel', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tlabel', tsv_rows(_rows(12, 1)))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--multi_label',
        f'--labels={tmp_path}/labels.txt', '--label_separator=|', f'--output_dir={out}',
        *(['--labels_by_index'] if labels_by_index else []), *TINY)
  task = tasks.task_from_json(json.loads((out / finetune.RECORD_FILE).read_text())['task'])
  assert [example.label for example in readers.read_file(task, train_file)] == [
      tuple(sorted(class_index[t] + 1 for t in tags)) for _, _, tags, _ in _rows(40, 0)]
  for fmt in ('tsv', 'jsonl'):
    _main('--mode=predict', f'--output_dir={out}', f'--input_file={dev_file}', '--threshold=0.3',
          f'--predictions_file={tmp_path}/predicted.{fmt}')
  predicted = [tuple(names.index(name) + 1 for name in row['labels'])
               for row in _read_jsonl(tmp_path / 'predicted.jsonl')]
  assert any(len(label_set) > 1 for label_set in predicted)
  written = str(tmp_path / 'predicted.tsv')
  back = tasks.file_task(written, text_fields=('line',), label_field='labels',
                         kind='multi_label', labels=names, label_separator='|')
  assert [example.label for example in readers.read_file(back, written)] == predicted


def test_regression_tsv_and_the_labeler(tmp_path):
  """--regression on a TSV: one value a row, written as TSV with a header; the Labeler gives
  the same values for the same text, rows numbered from 1."""
  tsv_rows = lambda rows: [f'{text}\t{score}' for text, _, _, score in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tscore', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tscore', tsv_rows(_rows(12, 1)))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--label_field=score',
        '--regression', f'--output_dir={out}', *TINY)
  texts = [text for text, _, _, _ in _rows(5, 2)]
  input_file = _write(tmp_path / 'new.tsv', 'text', texts)
  _main('--mode=predict', f'--output_dir={out}', f'--input_file={input_file}',
        f'--predictions_file={tmp_path}/out.tsv')
  lines = (tmp_path / 'out.tsv').read_text().splitlines()
  assert lines[0] == 'line\tvalue' and len(lines) == 6
  values = [float(line.split('\t')[1]) for line in lines[1:]]
  labelled = predict.Labeler(str(out))(texts)
  assert [row['row'] for row in labelled] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([row['value'] for row in labelled], values, rtol=1e-5)


def test_labels_by_index_name_goemotions_labels(tmp_path):
  """GoEmotions' layout: label ids in the file, names in labels.txt (--labels with
  --labels_by_index): the run records the names, and predictions are written as names."""
  names = tmp_path / 'labels.txt'
  names.write_text('late\nbroken\nawful\n')
  index = {'late': '0', 'broken': '1', 'awful': '2'}
  tsv_rows = lambda rows: [f'{text}\t"{",".join(index[t] for t in tags)}"'
                           for text, _, tags, _ in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tlabel', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tlabel', tsv_rows(_rows(12, 1)))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--multi_label',
        f'--labels={names}', '--labels_by_index', f'--output_dir={out}', *TINY)
  assert tasks.task_from_json(json.loads((out / finetune.RECORD_FILE).read_text())['task'])\
      .label_names == ('late', 'broken', 'awful')
  metrics = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])
  assert {'validation/micro_f1', 'validation/macro_f1', 'validation/f1/broken'} <= \
      set(metrics['scores'])
  assert metrics['score'] == metrics['scores']['validation/macro_f1']
  [row] = predict.Labeler(str(out))(['late and broken'])
  assert set(row['probabilities']) == {'late', 'broken', 'awful'}


def test_attention_blocks_train_and_evaluate_whole_rows(tmp_path):
  """--attention_block_length=32 in rows of 64: training packs every example within a block of
  32 tokens (recorded in the model config); evaluation runs whole rows, which give the same
  outputs. A block that cannot hold the longest example is one clear error."""
  tsv_rows = lambda rows: [f'{text}\t{queue}' for text, queue, _, _ in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tqueue', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tqueue', tsv_rows(_rows(12, 1)))
  common = [f'--train_file={train_file}', f'--validation_file={dev_file}',
            '--label_field=queue', *TINY, '--max_input_length=64']
  _main(*common, '--attention_block_length=32', f'--output_dir={tmp_path}/run')
  record = json.loads((tmp_path / 'run' / finetune.RECORD_FILE).read_text())
  assert record['model_config']['attention_block_length'] == 32
  assert len((tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()) == 2
  with pytest.raises(finetune.ConfigError, match='--attention_block_length=2: .*block'):
    _main(*common, '--attention_block_length=2', f'--output_dir={tmp_path}/small')


def test_attention_blocks_are_chosen_from_the_data_and_change_no_output(tmp_path, monkeypatch):
  """No --attention_block_length: training, evaluation and Labeler choose blocks smaller than
  the 64-token rows from the data, and give what whole rows give: the score logged in
  training is --mode=eval's with whole rows on the same checkpoint, Labeler's probabilities are
  whole rows' to float32 rounding. (Inference blocks from 16 tokens up, so that rows this short
  have some.)"""
  monkeypatch.setattr(packing, 'SHORTEST_INFERENCE_BLOCK', 16)
  tsv_rows = lambda rows: [f'{text}\t{queue}' for text, queue, _, _ in rows]
  train_file = _write(tmp_path / 'train.tsv', 'text\tqueue', tsv_rows(_rows(40, 0)))
  dev_file = _write(tmp_path / 'dev.tsv', 'text\tqueue', tsv_rows(_rows(30, 1)))
  out = tmp_path / 'run'
  _main(f'--train_file={train_file}', f'--validation_file={dev_file}', '--label_field=queue',
        *TINY, '--max_input_length=64', '--eval_every=6', f'--output_dir={out}')
  record = json.loads((out / finetune.RECORD_FILE).read_text())
  assert record['config']['attention_block_length'] is None
  assert 64 % record['model_config']['attention_block_length'] == 0
  assert record['model_config']['attention_block_length'] < 64
  logged, = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]

  labeler = predict.Labeler(str(out))
  whole_rows = dataclasses.replace(labeler.config, attention_block_length=0)
  assert finetune.evaluate(whole_rows) == logged['scores']
  texts = [text for text, _, _, _ in _rows(30, 1)]
  examples = readers.text_examples(labeler.inference.task, texts)
  packed = evaluation.pack_for_inference(labeler.config, labeler.inference.task, examples,
                                         labeler.vocab)
  assert packing.row_blocks(packed['inputs_segment_ids']).max() < 64
  blocks = labeler(texts)
  labeler.config = whole_rows
  rows = labeler(texts)
  assert [row['label'] for row in blocks] == [row['label'] for row in rows]
  np.testing.assert_allclose([list(row['probabilities'].values()) for row in blocks],
                             [list(row['probabilities'].values()) for row in rows],
                             rtol=1e-5, atol=1e-6)
