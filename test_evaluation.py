"""Tests of evaluation.py: inference rows sized to their examples label what whole rows label,
in several block lengths; the rows of each model (EncT5 packed, T5 one example a row); and a
multi-label task's thresholds chosen on validation, then applied."""
import jax
import numpy as np
import pytest

import enct5
import evaluation
import finetune
import packing
import partitioning
import readers
import tasks
import testutil


@pytest.fixture(scope='module')
def vocab(tmp_path_factory):
  return testutil.train_small_vocab(tmp_path_factory)


@pytest.fixture(scope='module')
def tickets(tmp_path_factory, vocab):
  """(task, vocab, examples): tickets of 1 to 40 words, for a tiny random EncT5 to label."""
  root = tmp_path_factory.mktemp('evaluation')
  rng = np.random.default_rng(0)
  rows = [(i, ' '.join(rng.choice(testutil.WORDS, int(rng.integers(1, 41)))),
           'billing' if i % 3 else 'refund') for i in range(60)]
  task = tasks.file_task(testutil.tickets_csv(root / 'train.csv', rows), label_field='queue')
  return task, vocab, readers.text_examples(task, [text for _, text, _ in rows])


def _inference(task, vocab, **overrides):
  cfg = testutil.tiny_config(num_classes=task.num_classes, vocab_size=128, **overrides)
  shardings = partitioning.Shardings(enct5.param_specs(cfg),
                                     partitioning.make_mesh(devices=jax.devices()[:1]))
  params = enct5.init_params(jax.random.PRNGKey(3), cfg)
  return evaluation.Inference(task, cfg, shardings, evaluation.make_eval_step(cfg, shardings),
                              labels=None, thresholds=None), params


def test_rows_sized_to_their_examples_label_as_whole_rows(tickets):
  """With --attention_block_length unset, each batch runs in its rows' block (several here);
  the probabilities are those of whole rows, for every example."""
  task, vocab, examples = tickets
  inference, params = _inference(task, vocab)
  config = finetune.Config(max_input_length=64, max_target_length=4, batch_size=2)
  packed = evaluation.pack_for_inference(config, task, examples, vocab)
  used = {packing.batch_block_length(batch['inputs_segment_ids'])
          for batch in packing.eval_batches(packed, config.batch_size)}
  assert len(used) >= 3 and max(used) == 64, used
  ids, by_length = evaluation.infer(config, inference, params, packed, evaluation.label_outputs)
  whole_rows = finetune.Config(max_input_length=64, max_target_length=4, batch_size=2,
                               attention_block_length=0)
  whole_ids, whole = evaluation.infer(
      whole_rows, inference, params, evaluation.pack_for_inference(whole_rows, task, examples,
                                                                   vocab),
      evaluation.label_outputs)
  assert ids.tolist() == whole_ids.tolist() == list(range(60))
  np.testing.assert_allclose(by_length, whole, rtol=1e-5, atol=1e-6)


def test_rows_of_each_model(tickets):
  task, vocab, examples = tickets
  for model, pack, slots in (('enct5', True, 4), ('enct5', False, 1), ('t5', True, 1)):
    config = finetune.Config(model=model, pack=pack, max_input_length=64, max_target_length=4)
    packed = evaluation.pack_for_inference(config, task, examples, vocab)
    assert packed['example_ids'].shape[1] == slots, (model, pack)
    assert sorted(packed['example_ids'][packed['example_ids'] >= 0].tolist()) == list(range(60))


def test_multi_label_thresholds_are_chosen_on_validation_then_applied(tmp_path, vocab):
  rng = np.random.default_rng(1)
  rows = [f'{" ".join(rng.choice(testutil.WORDS, 5))},"{"a,b" if i % 2 else "b"}"'
          for i in range(40)]
  path = testutil.write_rows(tmp_path / 'tags.csv', 'text,label', rows)
  task = tasks.file_task(path, path, kind='multi_label', name='tags')
  inference, params = _inference(task, vocab, multi_label=True)
  config = finetune.Config(max_input_length=32, max_target_length=4, batch_size=4)
  eval_sets = {'validation': evaluation.load_eval_split(config, task, 'validation', vocab)}
  scores, chosen = evaluation.evaluate_sets(config, inference, params, eval_sets)
  assert chosen.shape == (2,) and {'tags/macro_f1', 'tags/macro_f1@0.5'} <= set(scores)
  # Given thresholds are applied, not chosen: all at 0 predicts every label.
  scores, given = evaluation.evaluate_sets(config, inference._replace(thresholds=0.0), params,
                                           eval_sets)
  assert given == 0.0 and scores['tags/micro_f1'] == pytest.approx(100 * 2 * 60 / (60 + 80))
