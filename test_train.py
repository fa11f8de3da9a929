"""Tests for train.py: Adafactor against hand-worked updates and T5X's state, sharding, resume,
and the T5 and 1decT5 baselines (labels as text, greedy decoding mapped back to labels)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from scipy import stats

import adafactor
import cli
import enct5
import finetune
import load_ckpt
import loop
import metrics
import partitioning
import t5
import tasks
import testutil
import train
import vocabularies

SHARED = testutil.SHARED
MINI_CKPT = os.path.join(SHARED, 'fixtures', 't5x_mini_t5_1_1', 'checkpoint_3')


# ------------------------------------------------------------------------------------ Adafactor

def _adafactor_reference(param, grads, lr, factored):
  """Plain numpy, float64, T5X defaults: the formulas of `apply_param_gradient` written out."""
  p = np.asarray(param, np.float64)
  v = v_row = v_col = None
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    rho = 1.0 - (t + 1.0) ** -0.8
    g2 = g * g + 1e-30
    if factored:  # rows = dim 0 (the smaller or equal dim) in these tests
      v_row = g2.mean(1) if t == 0 else rho * v_row + (1 - rho) * g2.mean(1)
      v_col = g2.mean(0) if t == 0 else rho * v_col + (1 - rho) * g2.mean(0)
      v_hat = np.outer(v_row, v_col) / v_row.mean()
    else:
      v = g2 if t == 0 else rho * v + (1 - rho) * g2
      v_hat = v
    y = g / np.sqrt(v_hat)
    y /= max(1.0, np.sqrt(np.mean(y * y)))
    p = p - lr * max(np.sqrt(np.mean(p * p)), 1e-3) * y
  return p, (v_row, v_col) if factored else v


def _run(param, grads, lr, min_dim=adafactor.MIN_DIM_SIZE_TO_FACTOR):
  params = {'w': jnp.asarray(param, jnp.float32)}
  state = adafactor.init(params, min_dim_size_to_factor=min_dim)
  for g in grads:
    params, state = adafactor.update({'w': jnp.asarray(g, jnp.float32)}, state, params, lr,
                                     min_dim_size_to_factor=min_dim)
  return params['w'], state


def test_adafactor_vector_first_step_by_hand():
  # Step 0: rho = 0, v = g^2 + eps1, y = sign(g), RMS(y) = 1 (no clipping);
  # RMS([3, 4]) = sqrt(12.5) = 3.5355339, lr 0.1 -> the step is 0.35355339.
  new, state = _run([3.0, 4.0], [[0.5, -2.0]], 0.1)
  np.testing.assert_allclose(new, [3.0 - 0.35355339, 4.0 + 0.35355339], rtol=1e-6)
  np.testing.assert_allclose(state['param_states']['w']['v'], [0.25, 4.0], rtol=1e-6)
  assert int(state['step']) == 1
  for k in ('m', 'v_row', 'v_col'):
    assert state['param_states']['w'][k].shape == (1,)


def test_adafactor_vector_second_step_decay_and_clipping():
  # Step 1: rho = 1 - 2^-0.8 = 0.42565082. g1 small, g2 large: y = g2 / sqrt(v) has RMS > 1,
  # so update clipping divides by it.
  g1, g2 = [0.01, -0.02, 0.03], [1.0, 2.0, -3.0]
  rho = 1.0 - 2.0 ** -0.8
  new, state = _run([0.0, 0.0, 0.0], [g1, g2], 1.0)   # zero params: scale = eps2 = 1e-3
  ref, _ = _adafactor_reference([0.0, 0.0, 0.0], [g1, g2], 1.0, factored=False)
  v = rho * np.square(g1) + (1 - rho) * np.square(g2)
  np.testing.assert_allclose(state['param_states']['w']['v'], v, rtol=1e-6)
  y = np.asarray(g2) / np.sqrt(v)
  assert np.sqrt(np.mean(y * y)) > 1.0  # so this step is clipped
  np.testing.assert_allclose(new, ref, rtol=1e-5)
  # Step 0 moved the zero params to -1e-3 sign(g1) (RMS 1e-3); step 1 is clipped to RMS 1e-3.
  p1 = -1e-3 * np.sign(g1)
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(new) - p1))), 1e-3, rtol=1e-4)


def test_adafactor_factored_rank_one_gradient_by_hand():
  # A rank-one gradient a b^T is factored exactly: y = sign(g) on the first step.
  a, b = np.array([1.0, -2.0, 0.5]), np.array([0.3, 1.0, -4.0, 2.0, 0.1])
  p = np.arange(15, dtype=np.float64).reshape(3, 5) / 10.0
  new, state = _run(p, [np.outer(a, b)], 0.01, min_dim=3)
  s = state['param_states']['w']
  assert s['v_row'].shape == (3,) and s['v_col'].shape == (5,) and s['v'].shape == (1,)
  np.testing.assert_allclose(s['v_row'], a * a * np.mean(b * b), rtol=1e-6)
  np.testing.assert_allclose(s['v_col'], b * b * np.mean(a * a), rtol=1e-6)
  expected = p - 0.01 * np.sqrt(np.mean(p * p)) * np.sign(np.outer(a, b))
  np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_adafactor_factored_three_steps_vs_reference():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(4, 6))
  grads = [rng.normal(size=(4, 6)) * s for s in (1.0, 0.1, 3.0)]
  new, state = _run(p, grads, 0.05, min_dim=4)
  ref, (v_row, v_col) = _adafactor_reference(p, grads, 0.05, factored=True)
  np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(state['param_states']['w']['v_row'], v_row, rtol=1e-5)
  np.testing.assert_allclose(state['param_states']['w']['v_col'], v_col, rtol=1e-5)
  assert int(state['step']) == 3
  # min_dim 5 > second-largest dim 4: not factored, full v.
  _, state = _run(p, grads[:1], 0.05, min_dim=5)
  assert state['param_states']['w']['v'].shape == (4, 6)


@pytest.mark.parametrize('shape,v_row,v_col', [
    ((128, 128), (128,), (128,)),          # attention kernels
    ((128, 256), (128,), (256,)),          # wi_0 / wi_1
    ((256, 128), (128,), (256,)),          # wo: v_row indexed by dim 1
    ((32128, 128), (128,), (32128,)),      # token embedding
    ((128, 127), (1,), (1,)),              # second-largest dim < 128: full v
])
def test_adafactor_state_shapes_are_t5x(shape, v_row, v_col):
  state = adafactor.init({'w': jnp.zeros(shape)})['param_states']['w']
  assert state['v_row'].shape == v_row and state['v_col'].shape == v_col
  assert state['v'].shape == (shape if v_row == (1,) else (1,))
  assert state['m'].shape == (1,)


def test_adafactor_square_matrix_rows_are_dim0():
  # (128, 128): v_row is the mean over dim 1, indexed by dim 0 (T5X's argsort keeps order).
  g = np.zeros((128, 128))
  g[3, :] = 1.0
  _, state = _run(np.ones((128, 128)), [g], 0.1)
  v_row = np.asarray(state['param_states']['w']['v_row'])
  assert v_row[3] == pytest.approx(1.0) and v_row[4] == pytest.approx(1e-30)


# ------------------------------------------------------------------------------------- Sharding

def _run_tool(name, *args, timeout=120, devices=1):
  """Runs `python -m tools.<name>` in its own process with `devices` CPU devices (XLA_FLAGS
  must be set before jax is imported) -> its last line of output, as JSON."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-m', f'tools.{name}', *args], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=testutil.REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_train_step_equals_single_device():
  result = _run_tool('sharding_check')
  for mesh in ('4x2', '8x1'):
    r = result[mesh]
    np.testing.assert_allclose(r['losses'], r['ref_losses'], rtol=1e-5)
    assert r['param_diff'] < 1e-5 and r['opt_diff'] < 1e-5 and r['logits_diff'] < 1e-5, r
  specs = result['4x2']['specs']
  assert specs['embedding'] == "P('model', None)"     # vocab on 'model'
  assert specs['wo'] == "P('model', None)"            # mlp on 'model'
  assert specs['wo_v_col'] == "P('model',)"  # v_col of wo [F, D] is [F]
  assert specs['rel_embedding'] == 'P(None, None)'    # 3 heads: replicated
  assert result['8x1']['specs']['embedding'] == "P('model', None)"


def test_two_processes_reach_the_same_loss_as_one():
  """Two processes on 127.0.0.1 (2 CPU devices each, mesh 2x2, gloo collectives), each feeding
  its half of the global batch, match one single-device process on the same global batch."""
  single = _run_tool('multihost_check')
  address = f'127.0.0.1:{testutil.free_port()}'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  outs = testutil.run_processes(
      [[sys.executable, '-m', 'tools.multihost_check', '--num_processes=2',
        f'--process_id={i}', f'--coordinator_address={address}', '--mesh=2x2']
       for i in range(2)], env, timeout=120, cwd=testutil.REPO)
  multi = json.loads(outs[0].strip().splitlines()[-1])
  assert multi['processes'] == 2 and multi['devices'] == 4, multi
  np.testing.assert_allclose(multi['losses'], single['losses'], rtol=1e-5)
  np.testing.assert_allclose(multi['checksum'], single['checksum'], rtol=1e-6)


def _mini_checkpoint():
  if not os.path.isdir(MINI_CKPT):
    pytest.skip(f'T5X mini checkpoint not found at {MINI_CKPT} (set ENCT5_SHARED)')
  import load_ckpt
  return load_ckpt


def test_adafactor_state_layout_equals_t5x_mini_checkpoint():
  """Our Adafactor state for the T5X-trained mini T5.1.1 has exactly T5X's leaves and shapes,
  and T5X's step after its 3 updates is 3, as ours after 3 updates."""
  load_ckpt = _mini_checkpoint()
  flat = load_ckpt.flatten(load_ckpt.read_index(MINI_CKPT))
  params = {name[len('target/'):]: jnp.zeros(load_ckpt.leaf_shape(leaf))
            for name, leaf in flat.items() if name.startswith('target/')}
  ours = load_ckpt.flatten(adafactor.init(load_ckpt.unflatten(params)))
  theirs = {name[len('state/'):]: load_ckpt.leaf_shape(leaf)
            for name, leaf in flat.items() if name.startswith('state/')}
  assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v) for k, v in theirs.items()}
  assert ours['param_states/encoder/layers_0/mlp/wo/kernel/v_row'].shape == (128,)
  assert ours['param_states/token_embedder/embedding/v_col'].shape == (32128,)
  state = load_ckpt.read_t5x(MINI_CKPT, ['state/step'])
  assert int(state['state']['step']) == 3
  _, after3 = _run(np.ones(4), [np.ones(4)] * 3, 0.1)
  assert int(after3['step']) == 3


def test_adafactor_continues_t5x_state_at_its_step():
  """The 4th update of a loaded T5X state decays with rho = 1 - 4^-0.8 (T5X's step 3)."""
  load_ckpt = _mini_checkpoint()
  names = ['target/encoder/layers_0/mlp/wo/kernel', 'target/encoder/encoder_norm/scale',
           'state/param_states/encoder/layers_0/mlp/wo/kernel',
           'state/param_states/encoder/encoder_norm/scale', 'state/step']
  tree = load_ckpt.read_t5x(MINI_CKPT, names)
  params = {'wo': tree['target']['encoder']['layers_0']['mlp']['wo']['kernel'],
            'scale': tree['target']['encoder']['encoder_norm']['scale']}
  states = tree['state']['param_states']['encoder']
  opt_state = {'step': jnp.asarray(tree['state']['step']),
               'param_states': {'wo': states['layers_0']['mlp']['wo']['kernel'],
                                'scale': states['encoder_norm']['scale']}}
  # Embedding rows never seen in T5X's batches keep v_col = eps1 (their gradient is 0).
  v_col = load_ckpt.read_t5x(
      MINI_CKPT, ['state/param_states/token_embedder/embedding/v_col'])
  v_col = v_col['state']['param_states']['token_embedder']['embedding']['v_col']
  assert np.sum(np.isclose(v_col, 1e-30, rtol=1e-3)) == 32128 - 364
  rng = np.random.default_rng(0)
  grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  _, new = adafactor.update(grads, opt_state, params, 1e-3)
  rho = 1.0 - 4.0 ** -0.8
  g2 = {k: np.float64(g) ** 2 + 1e-30 for k, g in grads.items()}
  old = opt_state['param_states']
  np.testing.assert_allclose(new['param_states']['scale']['v'],
                             rho * old['scale']['v'] + (1 - rho) * g2['scale'], rtol=1e-5)
  # wo [F, D] = (256, 128): v_row [D] averages g^2 over F (dim 0), v_col [F] over D.
  np.testing.assert_allclose(new['param_states']['wo']['v_row'],
                             rho * old['wo']['v_row'] + (1 - rho) * g2['wo'].mean(0), rtol=1e-5)
  np.testing.assert_allclose(new['param_states']['wo']['v_col'],
                             rho * old['wo']['v_col'] + (1 - rho) * g2['wo'].mean(1), rtol=1e-5)
  assert int(new['step']) == 4


# --------------------------------------------------------------------------- Dropout keys

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
  train_step = loop.make_train_step(cfg, shardings, finetune.MODELS['enct5'].loss, 0.0, seed=0)

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


# --------------------------------------------------------------------------------- The loop

TINY = ['--max_input_length=64', '--max_target_length=8', '--batch_size=4', '--log_every=1',
        '--vocab_size=300', '--d_model=32', '--d_ff=64', '--num_heads=2', '--num_layers=1']


def _main(*argv):
  """train.py's main in this process, with these flags (the others at their defaults); a
  user's mistake raised, not turned into an exit status (`train.run_command`)."""
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', *argv])
  train.logging.set_verbosity(train.logging.INFO)  # as app.run does
  train.run_command(['train.py'])


def _params(checkpoint_dir):
  return load_ckpt.read_t5x(load_ckpt.latest_checkpoint(checkpoint_dir))


def test_resume_is_bit_identical(tmp_path, monkeypatch):
  """A run interrupted after its step-3 checkpoint and re-run with the same command ends with
  exactly the parameters and Adafactor state of an uninterrupted run (dropout on)."""
  _main('--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}/a', *TINY)
  command = ['--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}/b',
             f'--vocab={tmp_path}/a/vocab/synthetic.model', *TINY]

  save_checkpoint = load_ckpt.save_checkpoint

  def crash(directory, *args, **kwargs):
    save_checkpoint(directory, *args, **kwargs)
    if os.path.basename(directory) == 'checkpoints':
      raise KeyboardInterrupt('interrupted after the step-3 checkpoint')
  with monkeypatch.context() as m:
    m.setattr(load_ckpt, 'save_checkpoint', crash)
    with pytest.raises(KeyboardInterrupt):
      _main(*command)
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['checkpoint_3']
  _main(*command)
  a, b = _params(tmp_path / 'a' / 'checkpoints'), _params(tmp_path / 'b' / 'checkpoints')
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
    _main('--train_steps=6', '--eval_every=3', f'--output_dir={tmp_path}', *TINY)
  assert 'loss is nan at step 5' in str(stopped.value) and 'checkpoint_3' in str(stopped.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_3']
  assert int(_params(tmp_path / 'checkpoints')['state']['step']) == 3


def test_a_step_that_cannot_fit_stops_before_it_runs(tmp_path, monkeypatch, capsys, caplog):
  """The compiled step's memory is logged; when it exceeds what is free, train.py stops before
  the first step: one line naming --batch_size, exit status 2, no checkpoint."""
  caplog.set_level('INFO')
  sizes = []
  free_memory_bytes = loop.free_memory_bytes
  monkeypatch.setattr(loop, 'free_memory_bytes', lambda: sizes.append(free_memory_bytes()) or 1)
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', '--train_steps=2', f'--output_dir={tmp_path}', *TINY])
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
  common = ['--eval_every=2', f'--output_dir={tmp_path}', *TINY]
  _main('--train_steps=4', *common)
  _main('--train_steps=6', *common)
  assert [r['score'] for r in loop.read_metrics(str(tmp_path))] == [70.0, 50.0, 60.0]
  assert os.listdir(tmp_path / 'best') == ['checkpoint_2']


def test_run_recorded_resume_checked_and_eval_from_output_dir_alone(tmp_path, caplog):
  """config.json (in OUTPUT_DIR and every checkpoint) records the run: re-running with another
  --size, --vocab or --task stops naming the flag, and --mode=eval needs only --output_dir
  (the demo's data lives there)."""
  out = tmp_path / 'run'
  _main('--train_steps=2', '--eval_every=2', f'--output_dir={out}', *TINY)
  record = json.loads((out / 'run_config.json').read_text())
  assert record['config']['size'] == 'tiny' and record['config']['d_model'] == 32
  assert record['model_config']['d_model'] == 32 and record['model_config']['num_classes'] == 2
  assert record['vocab_file'] == str(out / 'vocab' / 'synthetic.model')
  for directory in ('checkpoints', 'best'):
    assert json.loads((out / directory / 'checkpoint_2' / 'run_config.json').read_text()) == record
  for flag, changed in [('--size', ['--size=small']), ('--vocab', [f'--vocab={tmp_path}/x']),
                        ('--task', ['--task=rte', f'--data_dir={tmp_path}'])]:
    with pytest.raises(train.app.UsageError,
                       match=f'{flag}=.* but the run in .* was trained with {flag}='):
      _main('--train_steps=4', '--eval_every=2', f'--output_dir={out}', *TINY, *changed)
  score = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])['score']
  caplog.clear()
  caplog.set_level('INFO')
  _main('--mode=eval', f'--output_dir={out}')
  assert f'score {score:.2f}' in caplog.text


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
  load_ckpt = _mini_checkpoint()
  data = _glue_sample(tmp_path)
  out = tmp_path / 'out'
  common = ['--task=sst2', f'--data_dir={data}', f'--output_dir={out}', '--batch_size=2',
            '--max_input_length=64', '--max_target_length=8', '--vocab_size=200']
  _main(f'--checkpoint={MINI_CKPT}', '--train_steps=2', '--eval_every=2', '--log_every=1',
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
  _main('--mode=eval', *common)  # OUTPUT_DIR/best, read back through load_ckpt
  assert f'score {record["score"]:.2f}' in caplog.text
  _main('--mode=predict', '--predict_split=validation', *common)
  lines = (out / 'predictions' / 'SST-2.validation.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 33
  assert [int(l.split('\t')[0]) for l in lines[1:]] == list(range(32))
  assert {l.split('\t')[1] for l in lines[1:]} <= {'0', '1'}
  # --size is checked against the checkpoint's shape.
  with pytest.raises(finetune.ConfigError, match='does not match the flags: d_model 128'):
    _main(f'--checkpoint={MINI_CKPT}', '--size=small', f'--output_dir={tmp_path}/other',
          *common[:2], *common[3:])


# ------------------------------------------------------------ The T5 and 1decT5 baselines

def test_label_text_as_t5():
  """T5's target strings (`preprocessors.glue` with `glue_utils` label names; STS-B:
  `preprocessors.stsb`, round(5x) / 5 half to even, one decimal)."""
  names = {'cola': ['unacceptable', 'acceptable'], 'sst2': ['negative', 'positive'],
           'mrpc': ['not_equivalent', 'equivalent'], 'qqp': ['not_duplicate', 'duplicate'],
           'mnli': ['entailment', 'neutral', 'contradiction'],
           'qnli': ['entailment', 'not_entailment'], 'rte': ['entailment', 'not_entailment']}
  for name, texts in names.items():
    task = tasks.get_task(name)
    assert [t5.label_text(task, i + 1) for i in range(len(texts))] == texts
    assert t5.label_texts(task) == texts
  stsb = tasks.get_task('stsb')
  for score, text in [(0.0, '0.0'), (1.8, '1.8'), (2.5, '2.4'), (3.5, '3.6'), (3.13, '3.2'),
                      (4.9, '4.8'), (5.0, '5.0')]:
    assert t5.label_text(stsb, score) == text, score
  assert t5.label_texts(stsb) == [f'{i / 5:.1f}' for i in range(26)]


@pytest.fixture(scope='module')
def label_vocab(tmp_path_factory):
  """A small SentencePiece model that spells SST-2's and STS-B's labels (and has no '_')."""
  texts = (['a good movie', 'not a bad film', 'negative positive', 'the end'] * 50 +
           [f'{i / 5:.1f}' for i in range(26)] * 10)
  return vocabularies.train_vocab(texts, str(tmp_path_factory.mktemp('vocab') / 'labels'), 80)


def _rows(rows):
  """Token lists as one [B, width] array, zero-padded as greedy decoding leaves them."""
  width = max(map(len, rows))
  return np.array([row + [0] * (width - len(row)) for row in rows])


def test_decoded_strings_map_back_to_labels(label_vocab):
  """T5's postprocessors: the text before EOS is a label's class id, else -1 (counted wrong);
  STS-B: a float, else -1.0."""
  sst2 = tasks.get_task('sst2')
  labels = t5.LabelText(sst2, label_vocab)
  encode = lambda text: label_vocab.encode(text) + [vocabularies.EOS_ID]
  assert labels.tokens([2, 1]) == [encode('positive'), encode('negative')]
  assert labels.decode_length == max(len(encode('positive')), len(encode('negative')))
  rows = [encode('positive'), encode('negative'), encode('neutral'), encode('positive positive'),
          encode('positive')[:-1] + [label_vocab.GetPieceSize() + 3],  # id past the vocab
          encode('negative') + encode('bad')]  # after EOS: ignored
  predictions = labels.parse(_rows(rows))
  np.testing.assert_array_equal(predictions, [2, 1, -1, -1, -1, 1])

  # Unknown strings count as wrong: accuracy, and F1 as T5's `f1_score_with_invalid`.
  gold = [2, 1, 1, 2, 2, 1]
  assert metrics.compute_metrics(sst2, 'validation', gold,
                                 predictions)['sst2/accuracy'] == pytest.approx(300 / 6)
  mrpc = tasks.get_task('mrpc')
  scores = metrics.compute_metrics(mrpc, 'validation', gold, predictions)
  # Positives (class 2): gold at 0, 3, 4; predicted 2 at 0 and, as the opposite of gold 1, at 2.
  assert scores['mrpc/f1'] == pytest.approx(100 * 2 * 1 / (3 + 2))
  assert scores['mrpc/accuracy'] == pytest.approx(300 / 6)

  stsb = tasks.get_task('stsb')
  scores = t5.LabelText(stsb, label_vocab)
  assert scores.tokens([2.5]) == [encode('2.4')]
  values = scores.parse(_rows([encode('3.4'), encode('5.0'), encode('end')]))
  np.testing.assert_allclose(values, [3.4, 5.0, -1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="cannot spell the rte label 'not_entailment'"):
    t5.LabelText(tasks.get_task('rte'), label_vocab)


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
  _main('--train_steps=16', '--eval_every=8', '--log_every=4', '--learning_rate=0.01', *common)
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
  _main('--mode=eval', *common)  # OUTPUT_DIR/best: the first record with the best score
  best = records[1] if records[1]['score'] > records[0]['score'] else records[0]
  assert f'score {best["score"]:.2f}' in caplog.text
  _main('--mode=predict', '--predict_split=validation', *common)
  lines = (out / 'predictions' / 'SST-2.validation.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 33
  assert {line.split('\t')[1] for line in lines[1:]} <= {'0', '1'}


# ------------------------------------------ End to end: `python train.py` as a user runs it

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
  head = _params(out / 'best')['target']['decoder']['class_projection']
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
