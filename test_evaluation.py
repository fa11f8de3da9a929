"""Tests of evaluation.py: inference in attention blocks, in batches of a CPU's size and a
last batch of the rows it needs, labels what whole rows in full batches label; the rows of
each model (EncT5 packed, T5 one example a row); and a multi-label task's thresholds chosen on
validation, then applied."""
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
  """(task, vocab, examples): tickets of 1 to 20 words, for a tiny random EncT5 to label."""
  root = tmp_path_factory.mktemp('evaluation')
  rng = np.random.default_rng(0)
  rows = [(i, ' '.join(rng.choice(testutil.WORDS, int(rng.integers(1, 21)))),
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


def test_blocks_and_short_batches_label_as_whole_rows_and_full_batches(tickets, monkeypatch):
  """With --attention_block_length and --eval_batch_size unset, rows run in the shortest
  inference block their examples allow (`packing.row_blocks`; blocks from 16 tokens up here),
  or, past a length's last full batch, a longer one they allow; in batches of
  `inference_batch_size` (4 rows of 256 with d_ff 1024 on a CPU), only the last with fewer rows,
  as few as it needs: every example's probabilities are those of whole rows in batches of 16."""
  monkeypatch.setattr(packing, 'SHORTEST_INFERENCE_BLOCK', 16)
  task, vocab, examples = tickets
  inference, params = _inference(task, vocab, d_ff=1024)
  config = finetune.Config(max_input_length=256, pack=False, batch_size=16)  # a row an example
  packed = evaluation.pack_for_inference(config, task, examples[:38], vocab)  # 9 x 4, 2
  calls = []

  def counted_step(params, batch, block_length):
    allowed = packing.row_blocks(np.asarray(batch['inputs_segment_ids']))
    calls.append((block_length, len(allowed), bool(np.all(block_length % allowed == 0))))
    return inference.eval_step(params, batch, block_length)
  ids, fast = evaluation.infer(config, inference._replace(eval_step=counted_step), params,
                               packed, evaluation.label_outputs)
  block_lengths, rows, allowed = zip(*calls)
  assert rows == (4,) * 9 + (2,) and all(allowed)
  assert list(block_lengths) == sorted(block_lengths) and len(set(block_lengths)) > 1
  assert max(block_lengths) < 256
  whole = [evaluation.label_outputs(np.asarray(inference.eval_step(
      params, partitioning.global_batch(batch, inference.shardings.batch), 0)), inference)
           for batch in packing.eval_batches(
               {k: packed[k] for k in evaluation.MODELS['enct5'].eval_keys}, 16)]
  ids_whole, whole = packing.per_example(packed['example_ids'], np.concatenate(whole))
  assert ids.tolist() == ids_whole.tolist() == list(range(38))
  np.testing.assert_allclose(fast, whole, rtol=1e-5, atol=1e-6)


def test_inference_batch_size():
  """--eval_batch_size when given; else the training batch, on a CPU cut to 4 MiB of hidden FFN
  activations (EncT5-small, d_ff 1024: 1024 tokens in float32, 2048 in bfloat16), at least the
  mesh's data axis and a multiple of it; a tiny model's batch stays whole."""
  size = evaluation.inference_batch_size
  assert size(finetune.Config(batch_size=128), 1024, 512, 1) == 2
  assert size(finetune.Config(batch_size=128, dtype='bfloat16'), 1024, 512, 1) == 4
  assert size(finetune.Config(batch_size=128), 1024, 128, 1) == 8
  assert size(finetune.Config(batch_size=2), 1024, 128, 1) == 2
  assert size(finetune.Config(batch_size=128), 1024, 512, 8) == 8
  assert size(finetune.Config(batch_size=128), 1024, 128, 3) == 6
  assert size(finetune.Config(batch_size=16), 32, 128, 1) == 16
  assert size(finetune.Config(batch_size=128, eval_batch_size=32), 1024, 512, 8) == 32


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
