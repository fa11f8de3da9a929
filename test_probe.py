"""Tests of experiments/probe.py: the per-example features against each example encoded on its own,
and the ridge probe against an independent least-squares formulation."""
import jax
import numpy as np

import enct5
import packing
import tasks
from experiments import probe


def test_mean_features_match_each_example_encoded_alone():
  """Packed rows give each example the mean of its own tokens only (not its row's neighbours,
  not the padding)."""
  cfg = enct5.get_config('tiny', vocab_size=128, dropout_rate=0.0)
  params = enct5.init_params(jax.random.PRNGKey(0), cfg)
  rng = np.random.default_rng(0)
  lengths = [5, 17, 3, 9, 12, 7, 1]
  examples = [(list(rng.integers(2, 128, n - 1)) + [1], 1) for n in lengths]
  packed = packing.pack_examples(examples, 32, 4)
  assert (packed['example_ids'] >= 0).sum(1).max() > 1  # some rows hold several examples
  ids, encoded, embedded = probe.mean_features(params, cfg, packed, batch_size=2)
  assert list(ids) == list(range(len(examples)))
  for i, (tokens, _) in enumerate(examples):
    alone = enct5.encode(params, cfg, np.array([tokens]), np.ones((1, len(tokens)), np.int32))
    np.testing.assert_allclose(encoded[i], np.asarray(alone)[0].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        embedded[i], np.asarray(params['token_embedder']['embedding'])[tokens].mean(0),
        rtol=1e-5, atol=1e-6)


def test_ridge_predict_against_augmented_least_squares():
  """Ridge = least squares on [X; sqrt(penalty) I] with an unpenalized intercept."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
  y = x @ rng.normal(size=(6, 2)) + 0.3 * rng.normal(size=(50, 2)) + 4.0
  x_eval = rng.normal(size=(7, 6))
  penalty = 2.5
  standardized = (x - x.mean(0)) / (x.std(0) + 1e-6)
  a = np.block([[standardized, np.ones((50, 1))],
                [np.sqrt(penalty) * np.eye(6), np.zeros((6, 1))]])
  w, *_ = np.linalg.lstsq(a, np.concatenate([y, np.zeros((6, 2))]), rcond=None)
  expected = np.c_[(x_eval - x.mean(0)) / (x.std(0) + 1e-6), np.ones(7)] @ w
  np.testing.assert_allclose(probe.ridge_predict(x, y, x_eval, penalty), expected, rtol=1e-9)
  np.testing.assert_allclose(probe.ridge_predict(x, y[:, 0], x_eval, penalty), expected[:, 0],
                             rtol=1e-9)


def test_probe_score_uses_the_tasks_metrics():
  """Features that carry the label score 100; features of noise score near chance."""
  rng = np.random.default_rng(2)
  sst2, stsb = tasks.get_task('sst2'), tasks.get_task('stsb')
  labels = rng.integers(1, 3, 400)
  informative = np.eye(2)[labels - 1] + 0.1 * rng.normal(size=(400, 2))
  train, dev = (informative[:300], labels[:300]), (informative[300:], labels[300:])
  assert probe.probe_score(sst2, 'validation', train, dev, 1.0) == 100.0
  noise = rng.normal(size=(400, 8))
  chance = probe.probe_score(sst2, 'validation', (noise[:300], labels[:300]),
                             (noise[300:], labels[300:]), 1.0)
  assert 30 < chance < 70
  scores = rng.uniform(0, 5, 400)
  features = np.c_[scores, rng.normal(size=400)]
  pearson_spearman = probe.probe_score(stsb, 'validation', (features[:300], scores[:300]),
                                       (features[300:], scores[300:]), 1.0)
  assert pearson_spearman > 99.0
