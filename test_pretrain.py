"""Tests of pretrain.py: span corruption against hand-worked cases and seqio's properties, the
batches of a step, and a tiny pre-training run whose checkpoint every model fine-tunes from."""
import inspect
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import enct5
import finetune
import load_ckpt
import partitioning
import pretrain
import t5
import testutil
from testutil import REPO


class IdentityPermutation:
  """A stand-in generator whose `permutation` keeps the order, to work cases by hand."""

  def permutation(self, x):
    return np.asarray(x)


def test_random_spans_helper_gives_t5s_lengths():
  assert pretrain.random_spans_helper(512) == (568, 114)  # T5: 568 raw -> 512 inputs, 114 targets
  tokens_length, targets_length = pretrain.random_spans_helper(128)
  inputs, targets = pretrain.span_corruption(np.arange(3, 3 + tokens_length),
                                             np.random.default_rng(0), first_sentinel=999)
  assert (len(inputs) + 1, len(targets) + 1) == (128, targets_length)  # + EOS: rows exactly full


def test_defaults_are_t5s_span_corruption():
  """pretrain.py's flags, `Objective` and the span functions default to T5's objective: 15%
  noise in spans of mean length 3 and 100 sentinels, which turn 568 raw tokens into T5's 512
  inputs and 114 targets."""
  flags = pretrain.FLAGS
  density, mean = flags['noise_density'].default, flags['mean_noise_span_length'].default
  assert (density, mean, flags['num_extra_ids'].default) == (0.15, 3.0, 100)
  assert pretrain.random_spans_helper(512, density, mean) == (568, 114)
  objective = pretrain.Objective(first_sentinel=32099, inputs_length=512, targets_length=114)
  assert (objective.noise_density, objective.mean_noise_span_length) == (0.15, 3.0)
  for function in (pretrain.random_spans_noise_mask, pretrain.span_corruption,
                   pretrain.random_spans_helper):
    defaults = inspect.signature(function).parameters
    assert (defaults['noise_density'].default,
            defaults['mean_noise_span_length'].default) == (0.15, 3.0), function.__name__


def test_one_span_by_hand():
  # 10 tokens: round(1.5) = 2 noise tokens (half to even in float32: 1.50000006), one span
  # (round(2/3)); non-noise first: 8 kept, then the span. No randomness is left.
  mask = pretrain.random_spans_noise_mask(10, np.random.default_rng(0))
  np.testing.assert_array_equal(mask, [False] * 8 + [True] * 2)
  inputs, targets = pretrain.span_corruption(np.arange(3, 13), np.random.default_rng(0),
                                             first_sentinel=99)
  np.testing.assert_array_equal(inputs, [3, 4, 5, 6, 7, 8, 9, 10, 99])
  np.testing.assert_array_equal(targets, [99, 11, 12])


def test_three_spans_by_hand():
  # 20 tokens at density 0.5: 10 noise tokens in round(10/3) = 3 spans. With the order kept,
  # both partitions of 10 into 3 are [1, 1, 8]: keep, noise, keep, noise, keep 8, noise 8.
  mask = pretrain.random_spans_noise_mask(20, IdentityPermutation(), noise_density=0.5)
  np.testing.assert_array_equal(np.flatnonzero(mask), [1, 3] + list(range(12, 20)))
  inputs, targets = pretrain.span_corruption(np.arange(100, 120), IdentityPermutation(),
                                             first_sentinel=50, noise_density=0.5)
  np.testing.assert_array_equal(inputs, [100, 50, 102, 49] + list(range(104, 112)) + [48])
  np.testing.assert_array_equal(targets, [50, 101, 49, 103, 48] + list(range(112, 120)))


def _spans(mask):
  """Runs of equal values: [(value, length), ...]."""
  edges = np.flatnonzero(np.diff(mask.astype(int))) + 1
  return [(bool(run[0]), len(run)) for run in np.split(mask, edges)]


def _reconstruct(inputs, targets, first_sentinel):
  """The original chunk from inputs and targets: each sentinel in the inputs is replaced by
  what follows the same sentinel in the targets."""
  is_sentinel = lambda t: t > first_sentinel - 1000
  spans, current = {}, None
  for token in targets:
    if is_sentinel(token):
      current = spans.setdefault(token, [])
    else:
      current.append(token)
  out = []
  for token in inputs:
    out.extend(spans[token] if is_sentinel(token) else [token])
  return out


@pytest.mark.parametrize('length', [2, 3, 7, 10, 20, 33, 141, 568])
@pytest.mark.parametrize('density,mean', [(0.15, 3.0), (0.5, 2.0), (0.3, 8.0)])
def test_noise_mask_properties(length, density, mean):
  """seqio's properties: exact noise count, span count, spans never empty, non-noise first,
  deterministic per seed, and inputs + targets give the chunk back."""
  num_noise = min(max(int(np.round(np.float32(length) * np.float32(density))), 1), length - 1)
  num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean))), 1)
  for seed in range(5):
    mask = pretrain.random_spans_noise_mask(length, np.random.default_rng(seed), density, mean)
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == num_noise
    runs = _spans(mask)
    assert runs[0][0] is False  # non-noise first
    assert all(n > 0 for _, n in runs)
    assert sum(is_noise for is_noise, _ in runs) == num_spans  # alternating, one run a span
    np.testing.assert_array_equal(
        mask, pretrain.random_spans_noise_mask(length, np.random.default_rng(seed), density,
                                               mean))
    tokens = np.random.default_rng(seed).integers(3, 900, length)
    inputs, targets = pretrain.span_corruption(tokens, np.random.default_rng(seed),
                                               first_sentinel=8191, noise_density=density,
                                               mean_noise_span_length=mean)
    assert len(inputs) == length - num_noise + num_spans
    assert len(targets) == num_noise + num_spans
    assert targets[0] == 8191 and inputs[0] == tokens[0]
    np.testing.assert_array_equal(_reconstruct(inputs, targets, 8191), tokens)


def test_length_one_as_seqio():
  # seqio treats a 1-token sequence as 2 (one noise token) and cuts the mask back to 1.
  np.testing.assert_array_equal(pretrain.random_spans_noise_mask(1, np.random.default_rng(0)),
                                [False])


def test_learning_rate_is_t5s_inverse_square_root_then_the_cooldown():
  rate = lambda step, **kw: float(pretrain.learning_rate(step, 10_000, 20_000, **kw))
  assert rate(0) == rate(9_999) == pytest.approx(0.01)  # T5: 0.01 for the first 10,000 steps
  assert rate(19_999) == pytest.approx(1 / np.sqrt(19_999))
  # The last 4,000 of 20,000 steps: 1/sqrt(16,000) down to 1e-3, the last step's rate.
  cool = lambda step: rate(step, cooldown_steps=4_000, final_rate=1e-3)
  assert cool(15_999) == pytest.approx(1 / np.sqrt(15_999))
  assert cool(19_999) == pytest.approx(1e-3)
  assert cool(17_999) == pytest.approx((1 / np.sqrt(16_000) + 1e-3) / 2)
  rates = [cool(step) for step in range(15_000, 20_000, 7)]
  assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_read_paragraphs_drops_wikiextractor_markup(tmp_path):
  path = tmp_path / 'wiki_00'
  path.write_text('<doc id="12" url="u" title="Anarchism">\nAnarchism\n\nFirst paragraph.\n'
                  'Second one.\n</doc>\n<doc id="25" url="v" title="Autism">\nAutism\n\n'
                  'Third.\n</doc>\n')
  assert pretrain.read_paragraphs(str(path)) == ['First paragraph.', 'Second one.', 'Third.']
  plain = tmp_path / 'plain.txt'
  plain.write_text(' = Title = \r\n Some text . \r\n')
  assert pretrain.read_paragraphs(str(plain)) == ['= Title =', 'Some text .']


def test_batches_are_a_function_of_the_step():
  chunks = np.arange(3, 3 + 40 * 141).reshape(40, 141) % 500 + 3
  objective = pretrain.Objective(first_sentinel=999, inputs_length=128, targets_length=29)
  make = lambda: pretrain.TrainBatches(chunks, 8, seed=1, objective=objective)
  in_order = make()
  first = [in_order(step) for step in range(7)]  # 56 examples: the second epoch starts
  resumed = make()
  for step in (6, 3):
    for key in first[step]:
      np.testing.assert_array_equal(resumed(step)[key], first[step][key])
  batch = first[0]
  assert batch['inputs'].shape == (8, 128) and batch['decoder_target_tokens'].shape == (8, 29)
  assert (batch['inputs'][:, -1] == 1).all() and (batch['decoder_target_tokens'][:, -1] == 1).all()
  assert (batch['inputs_segment_ids'] == 1).all()  # every example fills its row exactly
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:],
                                batch['decoder_target_tokens'][:, :-1])
  # A chunk seen again in the second epoch gets other spans.
  epoch0 = np.concatenate([b['inputs'] for b in first[:5]])
  epoch1 = np.concatenate([first[5]['inputs'], first[6]['inputs']])
  assert not any((epoch0 == row).all(axis=1).any() for row in epoch1)


def test_swapped_inputs_measure_what_the_decoder_reads_from_the_encoder():
  """evaluate's second loss pairs each example's targets with the previous example's inputs: the
  same as the first when the decoder cannot see the encoder (cross-attention output zeroed),
  different when it can."""
  cfg = enct5.get_config('tiny', vocab_size=256, num_layers=2, num_decoder_layers=2,
                         dropout_rate=0.0)
  objective = pretrain.Objective(first_sentinel=255, inputs_length=32, targets_length=8)
  rng = np.random.default_rng(0)
  tokens_length, _ = pretrain.random_spans_helper(32)
  chunks = rng.integers(3, 150, size=(6, tokens_length))
  packed = pretrain.corrupt(chunks, [np.random.default_rng(i) for i in range(6)], objective)
  shardings = partitioning.Shardings(enct5.param_specs(cfg, 't5'),
                                     partitioning.make_mesh(devices=jax.devices()[:1]))
  eval_step = jax.jit(lambda p, batch: t5.loss_fn(p, cfg, batch)[1])
  params = enct5.init_params(jax.random.PRNGKey(0), cfg, 't5')
  loss, _, swapped_loss = pretrain.evaluate(eval_step, params, packed, shardings, batch_size=4)
  assert abs(loss - swapped_loss) > 1e-3
  for layer in params['decoder'].values():
    if 'encoder_decoder_attention' in layer:
      out = layer['encoder_decoder_attention']['out']
      out['kernel'] = np.zeros_like(out['kernel'])
  loss, _, swapped_loss = pretrain.evaluate(eval_step, params, packed, shardings, batch_size=4)
  assert swapped_loss == pytest.approx(loss, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# A tiny pre-training run, end to end.
# ---------------------------------------------------------------------------------------------

def _write_corpus(directory, seed, num_docs):
  """WikiExtractor-style files of made-up sentences (a grammar the model can learn)."""
  rng = np.random.default_rng(seed)
  nouns = 'cat dog bird king river city song house tree stone'.split()
  verbs = 'sees likes finds builds paints follows'.split()
  adjectives = 'old red quiet tall bright small'.split()
  os.makedirs(directory, exist_ok=True)
  for f in range(2):
    lines = []
    for d in range(num_docs):
      lines += [f'<doc id="{d}" url="u" title="T{d}">', f'T{d}', '']
      for _ in range(8):
        sentence = lambda: (f'The {rng.choice(adjectives)} {rng.choice(nouns)} '
                            f'{rng.choice(verbs)} the {rng.choice(nouns)}.')
        lines.append(' '.join(sentence() for _ in range(4)))
      lines.append('</doc>')
    with open(os.path.join(directory, f'wiki_{f:02d}'), 'w') as out:
      out.write('\n'.join(lines) + '\n')


PRETRAIN_FLAGS = ['--size=tiny', '--d_model=32', '--num_heads=2', '--head_dim=16', '--d_ff=64',
                  '--num_layers=2', '--vocab_size=110', '--max_input_length=32',
                  '--batch_size=4', '--validation_examples=8', '--log_every=1']


def _pretrain(tmp, output_dir, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'pretrain.py'), f'--corpus={tmp}/train',
       f'--validation_corpus={tmp}/validation', f'--output_dir={output_dir}',
       *PRETRAIN_FLAGS, *flags], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


@pytest.mark.parametrize('flags,message', [
    (['--model=enct5'], "Unknown command line flag 'model'"),  # no fine-tuning flags
    (['--train_steps=5', '--cooldown_steps=10'], '--cooldown_steps=10: must be between 0 and'),
    (['--cooldown_steps=2', '--final_learning_rate=0'], '--final_learning_rate=0.0: must be'),
])
def test_bad_flags_stop_before_any_work(tmp_path, flags, message):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'pretrain.py'), f'--output_dir={tmp_path / "out"}',
       *flags], capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=120)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'out')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """Pre-trains 2 steps, then resumes to 4; and the same 4 steps in one go."""
  tmp = tmp_path_factory.mktemp('pretrain')
  _write_corpus(tmp / 'train', seed=0, num_docs=20)
  _write_corpus(tmp / 'validation', seed=1, num_docs=3)
  _pretrain(tmp, tmp / 'resumed', '--train_steps=2', '--eval_every=2')
  log = _pretrain(tmp, tmp / 'resumed', '--train_steps=4', '--eval_every=2')
  _pretrain(tmp, tmp / 'straight', '--train_steps=4', '--eval_every=2')
  return tmp, log


def test_pretraining_writes_a_t5x_checkpoint_with_its_vocabulary(pretrained):
  tmp, log = pretrained
  assert 'resuming from' in log and 'held-out loss' in log
  checkpoint = os.path.join(tmp, 'resumed', 'checkpoints', 'checkpoint_4')
  assert os.path.isfile(os.path.join(checkpoint, finetune.CHECKPOINT_VOCAB))
  tree = load_ckpt.read_t5x(checkpoint)
  assert int(tree['state']['step']) == 4
  assert 'logits_dense' in tree['target']['decoder']
  # 110 pieces + 100 sentinels, padded to a multiple of 128.
  assert tree['target']['token_embedder']['embedding'].shape == (256, 32)
  rows = [line for line in open(os.path.join(tmp, 'resumed', 'metrics.jsonl'))]
  assert len(rows) == 2  # steps 2 and 4, none twice


def test_resumed_pretraining_equals_an_uninterrupted_run(pretrained):
  tmp, _ = pretrained
  resumed = load_ckpt.read_t5x(os.path.join(tmp, 'resumed', 'checkpoints', 'checkpoint_4'))
  straight = load_ckpt.read_t5x(os.path.join(tmp, 'straight', 'checkpoints', 'checkpoint_4'))
  for (name, a), (_, b) in zip(load_ckpt.flatten(resumed).items(),
                               load_ckpt.flatten(straight).items()):
    np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize('model', ['enct5', 't5', '1dect5'])
def test_checkpoint_loads_for_every_model(pretrained, model):
  tmp, _ = pretrained
  checkpoint = os.path.join(tmp, 'resumed', 'checkpoints', 'checkpoint_4')
  shape = load_ckpt.config_from_checkpoint(checkpoint)
  cfg = enct5.get_config('tiny', **shape)
  params = load_ckpt.load_params(checkpoint, cfg, jax.random.PRNGKey(0), model=model)
  stored = load_ckpt.read_t5x(checkpoint)['target']
  np.testing.assert_array_equal(params['encoder']['layers_1']['mlp']['wo']['kernel'],
                                stored['encoder']['layers_1']['mlp']['wo']['kernel'])


@pytest.mark.parametrize('model,flags,t5x_step', [
    ('enct5', [], 4 + 2), ('t5', [], 4 + 2), ('enct5', ['--noload_optimizer_state'], 2)])
def test_train_fine_tunes_from_the_checkpoint_with_its_vocabulary(pretrained, model, flags,
                                                                  t5x_step):
  """train.py --checkpoint without --vocab reads the checkpoint's sentencepiece.model and
  continues Adafactor's step count (paper §4.2); --noload_optimizer_state loads the weights
  alone and starts Adafactor at step 0."""
  rte = os.path.join(testutil.SHARED, 'glue', 'RTE')
  if not os.path.isfile(os.path.join(rte, 'train.tsv')):
    pytest.skip(f'GLUE RTE data not found at {rte} (set ENCT5_SHARED)')
  tmp, _ = pretrained
  run = f'{model}{"".join(flags)}'
  data = tmp / f'rte_{run}'
  data.mkdir()
  for name, lines in (('train.tsv', 33), ('dev.tsv', 17)):  # header + 32 / 16 examples
    with open(os.path.join(rte, name)) as f:
      (data / name).write_text(''.join(f.readlines()[:lines]))
  checkpoint = os.path.join(tmp, 'resumed', 'checkpoints', 'checkpoint_4')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'train.py'), f'--model={model}', '--task=rte',
       f'--data_dir={data}', f'--checkpoint={checkpoint}', '--train_steps=2', '--eval_every=2',
       '--batch_size=4', '--max_input_length=32', '--max_target_length=32',
       f'--output_dir={tmp / ("finetune_" + run)}', *flags],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.join(checkpoint, finetune.CHECKPOINT_VOCAB) in result.stderr
  with open(tmp / f'finetune_{run}' / 'metrics.jsonl') as f:
    record = json.loads(f.readline())
  assert record['step'] == 2 and record['t5x_step'] == t5x_step
  # The weights are the checkpoint's, moved by two updates of at most ~lr * RMS(param) each.
  embedding = lambda path: load_ckpt.read_t5x(path)['target']['token_embedder']['embedding']
  pretrained_embedding = embedding(checkpoint)
  tuned = embedding(str(tmp / f'finetune_{run}' / 'checkpoints' / f'checkpoint_{t5x_step}'))
  np.testing.assert_allclose(tuned, pretrained_embedding,
                             atol=0.02 * np.sqrt(np.mean(pretrained_embedding ** 2)))
