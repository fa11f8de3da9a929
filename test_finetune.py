"""Tests of finetune.py, mostly through train.py runs: fine-tuning T5X's own checkpoint, the T5
and 1decT5 baselines, EncT5 learning SST-2 and STS-B from scratch (--mode=eval and
--mode=predict agreeing with training's scores), and a fresh multi-label head's prior bias."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import stats

import enct5
import finetune
import load_ckpt
import readers
import tasks
import testutil
from testutil import MINI_CKPT, checkpoint_params, mini_checkpoint, train_main, write_rows

SHARED = testutil.SHARED


def _glue_sample(tmp_path, task_dir='SST-2', train_rows=64, dev_rows=32):
  source = os.path.join(SHARED, 'glue', task_dir)
  if not os.path.isdir(source):
    pytest.skip(f'GLUE data not found at {source} (set ENCT5_SHARED)')
  target = tmp_path / task_dir
  target.mkdir()
  for name, rows in (('train.tsv', train_rows), ('dev.tsv', dev_rows)):
    with open(os.path.join(source, name)) as f:
      lines = [next(f) for _ in range(rows + 1)]
    (target / name).write_text(''.join(lines))
  return target


def test_fine_tune_t5x_mini_checkpoint_then_eval_and_predict(tmp_path, caplog):
  """From T5X's own 3-step checkpoint (its Adafactor state and step loaded): 2 steps on 64
  SST-2 examples; the saved checkpoint reads back with load_ckpt, continues T5X's step count,
  and --mode=eval on it reproduces the score logged in training."""
  load_ckpt = mini_checkpoint()
  data = _glue_sample(tmp_path)
  out = tmp_path / 'out'
  common = ['--task=sst2', f'--data_dir={data}', f'--output_dir={out}', '--batch_size=2',
            '--max_input_length=64', '--max_target_length=8', '--vocab_size=200']
  train_main(f'--checkpoint={MINI_CKPT}', '--train_steps=2', '--eval_every=2', '--log_every=1',
             *common)
  saved = load_ckpt.latest_checkpoint(str(out / 'checkpoints'))
  assert os.path.basename(saved) == 'checkpoint_5'  # T5X's step 3 + 2
  tree = load_ckpt.read_t5x(saved)
  assert int(tree['state']['step']) == 5
  assert load_ckpt.config_from_checkpoint(saved)['d_model'] == 128
  assert tree['target']['decoder']['class_projection']['kernel'].shape == (128, 3)
  wo = tree['state']['param_states']['encoder']['layers_0']['mlp']['wo']['kernel']
  assert wo['v_row'].shape == (128,) and wo['v_col'].shape == (256,) and wo['v'].shape == (1,)
  mini = load_ckpt.read_t5x(MINI_CKPT, ['target/encoder/layers_0/mlp/wo/kernel'])
  assert not np.array_equal(tree['target']['encoder']['layers_0']['mlp']['wo']['kernel'],
                            mini['target']['encoder']['layers_0']['mlp']['wo']['kernel'])
  record = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])
  assert record['t5x_step'] == 5 and set(record['scores']) == {'sst2/accuracy'}
  assert os.path.isdir(out / 'best' / 'checkpoint_5')
  caplog.clear()
  caplog.set_level('INFO')
  train_main('--mode=eval', *common)  # OUTPUT_DIR/best, read back through load_ckpt
  assert f'score {record["score"]:.2f}' in caplog.text
  train_main('--mode=predict', '--predict_split=validation', *common)
  lines = (out / 'predictions' / 'SST-2.validation.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 33
  assert [int(l.split('\t')[0]) for l in lines[1:]] == list(range(32))
  assert {l.split('\t')[1] for l in lines[1:]} <= {'0', '1'}
  # --size is checked against the checkpoint's shape.
  with pytest.raises(finetune.ConfigError, match='does not match the flags: d_model 128'):
    train_main(f'--checkpoint={MINI_CKPT}', '--size=small', f'--output_dir={tmp_path}/other',
               *common[:2], *common[3:])


@pytest.mark.parametrize('model, decoder_layers', [('t5', 2), ('1dect5', 1)])
def test_seq2seq_model_trains_evaluates_and_predicts(tmp_path, caplog, model, decoder_layers):
  """--model=t5|1dect5 through train.py on 64 SST-2 examples: the loss goes down, the decoded
  strings become labels (accuracy far above the 0 of unknown strings), the checkpoint is a
  T5.1.1 tree, and the eval/predict modes read it back."""
  data = _glue_sample(tmp_path)
  out = tmp_path / 'out'
  common = [f'--model={model}', '--task=sst2', f'--data_dir={data}', f'--output_dir={out}',
            '--batch_size=4', '--max_input_length=64', '--max_target_length=8',
            '--vocab_size=200', '--d_model=32', '--d_ff=64', '--num_heads=2', '--num_layers=2']
  train_main('--train_steps=16', '--eval_every=8', '--log_every=4', '--learning_rate=0.01', *common)
  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [8, 16]
  assert all(set(r['scores']) == {'sst2/accuracy'} for r in records)
  assert np.isfinite(records[0]['train_loss'])
  assert records[1]['train_loss'] < 0.7 * records[0]['train_loss']
  assert records[1]['score'] > 40
  decoder = load_ckpt.read_t5x(load_ckpt.latest_checkpoint(str(out / 'checkpoints')))[
      'target']['decoder']
  assert sorted(k for k in decoder if k.startswith('layers_')) == [
      f'layers_{i}' for i in range(decoder_layers)]
  assert 'self_attention' in decoder['layers_0'] and 'logits_dense' in decoder
  assert 'class_projection' not in decoder

  caplog.clear()
  caplog.set_level('INFO')
  train_main('--mode=eval', *common)  # OUTPUT_DIR/best: the first record with the best score
  best = records[1] if records[1]['score'] > records[0]['score'] else records[0]
  assert f'score {best["score"]:.2f}' in caplog.text
  train_main('--mode=predict', '--predict_split=validation', *common)
  lines = (out / 'predictions' / 'SST-2.validation.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 33
  assert {line.split('\t')[1] for line in lines[1:]} <= {'0', '1'}


# ---------------------------------------------- end to end: `python train.py` as a user runs it

def _train_py(tmp_path, *argv):
  """`python train.py ARGV` in its own process (CPU); returns its log (absl logs to stderr)."""
  out = subprocess.run([sys.executable, os.path.join(testutil.REPO, 'train.py'), *argv],
                       cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout + out.stderr


def _predictions(out, file_name):
  """{example index: prediction text} of a --mode=predict file, checking its header."""
  lines = (out / 'predictions' / file_name).read_text().splitlines()
  assert lines[0] == 'index\tprediction'
  return {int(index): value for index, value in (line.split('\t') for line in lines[1:])}


# From scratch, small enough for about a minute on two busy cores.
E2E_MODEL = ['--max_input_length=128', '--max_target_length=16', '--batch_size=8',
             '--vocab_size=1000', '--d_model=64', '--d_ff=128', '--num_heads=4',
             '--head_dim=16', '--num_layers=2']


def test_enct5_learns_sst2_and_predict_writes_what_eval_scored(tmp_path):
  """EncT5 from scratch on 8,000 SST-2 examples, 200 steps: its best dev accuracy is at least
  10 points above always answering the dev sample's majority class (50.5%); --mode=eval of
  the best checkpoint logs that score again; and the labels --mode=predict writes for the dev
  split, read against dev.tsv, score exactly that (the same predictions, each at its index)."""
  data = _glue_sample(tmp_path, 'SST-2', train_rows=8000, dev_rows=200)
  gold = [line.split('\t')[1] for line in (data / 'dev.tsv').read_text().splitlines()[1:]]
  majority = 100 * max(gold.count('0'), gold.count('1')) / len(gold)
  out = tmp_path / 'out'
  common = ['--task=sst2', f'--data_dir={data}', f'--output_dir={out}', *E2E_MODEL]
  _train_py(tmp_path, '--train_steps=200', '--eval_every=100', '--log_every=100',
            '--learning_rate=0.01', '--dropout_rate=0', *common)
  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
  best = max(records, key=lambda r: r['score'])  # the first of equal scores, as train.py
  assert best['score'] >= majority + 10, (majority, records)

  assert f'score {best["score"]:.2f}' in _train_py(tmp_path, '--mode=eval', *common)
  _train_py(tmp_path, '--mode=predict', '--predict_split=validation', *common)
  predicted = _predictions(out, 'SST-2.validation.tsv')
  assert sorted(predicted) == list(range(len(gold)))
  correct = sum(predicted[i] == label for i, label in enumerate(gold))
  assert 100 * correct / len(gold) == pytest.approx(best['score'])


def test_stsb_regression_trains_evaluates_and_predicts(tmp_path):
  """STS-B, the paper's regression task, through train.py: a one-output head trained with the
  squared error; --mode=eval logs the score of the best checkpoint; the scores --mode=predict
  writes for the dev split give eval's Pearson and Spearman correlations (scipy's): Spearman
  within 0.5, as the file rounds scores to 3 decimals, which can tie or untie ranks."""
  data = _glue_sample(tmp_path, 'STS-B', train_rows=2000, dev_rows=200)
  gold = [float(line.split('\t')[-1])
          for line in (data / 'dev.tsv').read_text().splitlines()[1:]]
  out = tmp_path / 'out'
  common = ['--task=stsb', f'--data_dir={data}', f'--output_dir={out}', *E2E_MODEL]
  _train_py(tmp_path, '--train_steps=100', '--eval_every=50', '--log_every=50',
            '--learning_rate=0.01', '--dropout_rate=0', *common)
  records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [50, 100]
  assert set(records[0]['scores']) == {'stsb/pearson_corrcoef', 'stsb/spearman_corrcoef'}
  assert records[1]['train_loss'] < records[0]['train_loss']
  best = max(records, key=lambda r: r['score'])
  assert best['score'] > 15  # mean of Pearson and Spearman; ~0 for a model that learned nothing
  head = checkpoint_params(out / 'best')['target']['decoder']['class_projection']
  assert head['kernel'].shape == (64, 1) and head['bias'].shape == (1,)

  assert f'score {best["score"]:.2f}' in _train_py(tmp_path, '--mode=eval', *common)
  _train_py(tmp_path, '--mode=predict', '--predict_split=validation', *common)
  predicted = _predictions(out, 'STS-B.validation.tsv')
  assert sorted(predicted) == list(range(len(gold)))
  scores = np.array([float(predicted[i]) for i in range(len(gold))])  # written as %.3f
  assert np.std(scores) > 0.01
  pearson = 100 * stats.pearsonr(gold, scores)[0]
  spearman = 100 * stats.spearmanr(gold, scores)[0]
  assert pearson == pytest.approx(best['scores']['stsb/pearson_corrcoef'], abs=0.05)
  assert spearman == pytest.approx(best['scores']['stsb/spearman_corrcoef'], abs=0.5)


# --------------------------------------------------------------------------------- a fresh head

def test_a_fresh_multi_label_head_starts_at_the_label_priors(tmp_path):
  """The bias of a fresh multi-label head is each label's log prior odds: sigmoid(bias) is its
  training frequency, smoothed as (count + 1) / (rows + 2); nothing else changes."""
  task = tasks.file_task(write_rows(tmp_path / 'train.tsv', 'text\tlabel', ['a\tx,y', 'b\tz']),
                         kind='multi_label')
  examples = [readers.Example(i, i + 1, 'text', label)
              for i, label in enumerate([(1,), (1, 2), (), (1,)])]  # x 3 times, y once, z never
  cfg = enct5.get_config('tiny', vocab_size=128, num_classes=3, multi_label=True)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  started = finetune.with_prior_bias(params, task, examples)
  np.testing.assert_allclose(jax.nn.sigmoid(started['decoder']['class_projection']['bias']),
                             [4 / 6, 2 / 6, 1 / 6], rtol=1e-6)
  flat, flat_started = load_ckpt.flatten(params), load_ckpt.flatten(started)
  assert [k for k in flat if not np.array_equal(flat[k], flat_started[k])] == [
      'decoder/class_projection/bias']
