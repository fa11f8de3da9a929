"""Tests of loop.py: each step's dropout masks, and the training loop through train.py runs: a
resumed run bit-identical to an uninterrupted one, a non-finite loss, a step too large for the
free memory, and best/ across a resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli
import enct5
import evaluation
import loop
import metrics
import partitioning
import save_ckpt
import train
from testutil import TINY_FLAGS, checkpoint_params, train_main


# --------------------------------------------------------------------------------- dropout keys

def test_each_step_draws_new_dropout_masks_and_a_resumed_step_the_same():
  """Learning rate 0 keeps the parameters fixed, so the losses of steps on one batch differ
  only by their dropout masks: each step draws new ones (`dropout_rng(seed, step)`), and the
  same step again (its Adafactor step restored, as a resumed run does) draws the same ones."""
  cfg = enct5.get_config('tiny', num_classes=2, vocab_size=128, d_model=32, num_heads=2,
                         head_dim=16, d_ff=64, num_layers=2, dropout_rate=0.1)
  shardings = partitioning.Shardings(enct5.param_specs(cfg, 'enct5'), partitioning.make_mesh())
  params, opt_state = loop.init_train_state(cfg, 'enct5', shardings, jax.random.PRNGKey(0))
  start = jax.device_get(opt_state)
  rng = np.random.default_rng(0)
  segment_ids = np.repeat(np.arange(1, 5), 8)[None].repeat(2, 0).astype(np.int32)  # 4 x 8
  batch = dict(inputs=rng.integers(2, 128, (2, 32)).astype(np.int32),
               inputs_segment_ids=segment_ids,
               inputs_positions=np.tile(np.arange(8), 4)[None].repeat(2, 0).astype(np.int32),
               targets=rng.integers(1, 3, (2, 4)).astype(np.int32))
  batch = partitioning.global_batch(batch, shardings.batch)

  host_params = jax.device_get(params)
  train_step = loop.make_train_step(cfg, shardings, evaluation.MODELS['enct5'].loss, 0.0, seed=0)

  def losses(opt_state, num_steps):
    p = jax.device_put(host_params, shardings.params)  # donated: a fresh copy each time
    state, out = jax.device_put(opt_state, shardings.opt_state), []
    for _ in range(num_steps):
      p, state, metrics = train_step(p, state, batch)
      out.append(float(metrics['loss']))
    return out

  first = losses(start, 3)
  assert len(set(first)) == 3, f'steps 0, 1, 2 drew the same dropout masks: {first}'
  assert losses(dict(start, step=np.int32(1)), 2) == first[1:]
  assert not np.array_equal(loop.dropout_rng(0, 1), loop.dropout_rng(1, 1))  # seed matters


# ------------------------------------------------------------------------------------- the loop

def test_resume_is_bit_identical(tmp_path, monkeypatch):
  """A run interrupted after its step-3 checkpoint and re-run with the same command ends with
  exactly the parameters and Adafactor state of an uninterrupted run (dropout on)."""
  train_main('--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}/a', *TINY_FLAGS)
  command = ['--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}/b',
             f'--vocab={tmp_path}/a/vocab/synthetic.model', *TINY_FLAGS]

  save_checkpoint = save_ckpt.save_checkpoint

  def crash(directory, *args, **kwargs):
    save_checkpoint(directory, *args, **kwargs)
    if os.path.basename(directory) == 'checkpoints':
      raise KeyboardInterrupt('interrupted after the step-3 checkpoint')
  with monkeypatch.context() as m:
    m.setattr(save_ckpt, 'save_checkpoint', crash)
    with pytest.raises(KeyboardInterrupt):
      train_main(*command)
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['checkpoint_3']
  train_main(*command)
  a, b = (checkpoint_params(tmp_path / 'a' / 'checkpoints'),
          checkpoint_params(tmp_path / 'b' / 'checkpoints'))
  assert int(a['state']['step']) == int(b['state']['step']) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  records = [json.loads(line) for line in open(tmp_path / 'a' / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [3, 6]
  assert set(records[0]['scores']) == {'synthetic/accuracy'}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, caplog):
  compile_step = loop.compile_step

  def poisoned(*args):
    step_fn = compile_step(*args)

    def step(params, opt_state, batch):
      params, opt_state, metrics = step_fn(params, opt_state, batch)
      if int(opt_state['step']) >= 5:
        metrics = dict(metrics, loss=jnp.float32(np.nan))
      return params, opt_state, metrics
    return step
  monkeypatch.setattr(loop, 'compile_step', poisoned)
  with pytest.raises(loop.NonFiniteLoss) as stopped:  # train.py: logged, exit status 1
    train_main('--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}', *TINY_FLAGS)
  assert 'loss is nan at step 5' in str(stopped.value) and 'checkpoint_3' in str(stopped.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_3']
  assert int(checkpoint_params(tmp_path / 'checkpoints')['state']['step']) == 3


def test_a_step_that_cannot_fit_stops_before_it_runs(tmp_path, monkeypatch, capsys, caplog):
  """The compiled step's memory is logged; when it exceeds what is free, train.py stops before
  the first step: one line naming --batch_size, exit status 2, no checkpoint."""
  caplog.set_level('INFO')
  sizes = []
  free_memory_bytes = loop.free_memory_bytes
  monkeypatch.setattr(loop, 'free_memory_bytes', lambda: sizes.append(free_memory_bytes()) or 1)
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', '--train_steps=2', f'--output_dir={tmp_path}', *TINY_FLAGS])
  with pytest.raises(SystemExit) as stopped:
    cli.run('train.py', train.run_command, ['train.py'])
  assert stopped.value.code == cli.USER_ERROR and sizes
  [line] = capsys.readouterr().err.splitlines()
  assert 'the train step needs' in line and '--batch_size=1 would fit' in line, line
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')
  assert any('step memory per device' in r.getMessage() for r in caplog.records)


def test_on_resume_best_stays_the_highest_score_not_the_last(tmp_path, monkeypatch):
  """Scores 70 then 50, stopped, resumed, then 60: best/ stays step 2's checkpoint, the
  highest score of the whole history, not the last one evaluated before the stop."""
  scores = iter([70.0, 50.0, 60.0])
  monkeypatch.setattr(metrics, 'task_score', lambda task, _: next(scores))
  common = ['--eval_every=2', f'--output_dir={tmp_path}', *TINY_FLAGS]
  train_main('--train_steps=4', *common)
  train_main('--train_steps=6', *common)
  assert [r['score'] for r in loop.read_metrics(str(tmp_path))] == [70.0, 50.0, 60.0]
  assert os.listdir(tmp_path / 'best') == ['checkpoint_2']
