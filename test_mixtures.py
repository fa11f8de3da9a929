"""Tests of mixtures.py and multi-task EncT5: T5's mixing rates by hand, a packed mixture equal to
each task's examples run alone (logits, losses, gradients), a head untouched by the slots of
other tasks, every task in one pass, training on GLUE tasks through train.py (per-task scores,
--mode=eval with one head, exact resume, one task's fine-tuning from the mixture), the label
columns of one file as tasks (one pass labelling them all), and bad flags as one line.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enct5
import finetune
import load_ckpt
import loop
import mixtures
import packing
import testutil

HEADS = (enct5.Head('three', 3), enct5.Head('score', 1), enct5.Head('tags', 4, multi_label=True))


def test_mixing_rates_as_raffel():
  """r_k = min(n_k, K)^(1/T) / sum_j min(n_j, K)^(1/T) (Raffel et al. §3.5.2), by hand."""
  sizes = [100, 1000, 10000]
  np.testing.assert_allclose(mixtures.mixing_rates(sizes), [100 / 11100, 1000 / 11100,
                                                            10000 / 11100])
  np.testing.assert_allclose(mixtures.mixing_rates(sizes, cap=2000), [100 / 3100, 1000 / 3100,
                                                                      2000 / 3100])
  root = np.sqrt([100, 1000, 2000])
  np.testing.assert_allclose(mixtures.mixing_rates(sizes, cap=2000, temperature=2.0),
                             root / root.sum())
  # T = 1 and no cap: every example once; a cap keeps K of the largest task; T > 1 up-samples.
  assert mixtures.mixture_counts(sizes, mixtures.mixing_rates(sizes)).tolist() == sizes
  assert mixtures.mixture_counts(sizes, mixtures.mixing_rates(sizes, 2000), 2000).tolist() == [
      100, 1000, 2000]
  counts = mixtures.mixture_counts(sizes, root / root.sum(), 2000)
  assert counts.sum() in (3099, 3100, 3101) and counts[0] == round(3100 * root[0] / root.sum())


def test_draw_cycles_a_seeded_order():
  drawn = mixtures.draw(5, 12, seed=3, task_id=1)
  assert sorted(drawn[:5]) == list(range(5)) and (drawn[5:10] == drawn[:5]).all()
  assert (mixtures.draw(5, 12, seed=3, task_id=1) == drawn).all()
  assert not (mixtures.draw(5, 5, seed=3, task_id=2) == drawn[:5]).all()


def _examples(rng, head, n):
  """n random (token ids ending in EOS, label) examples of a head's kind."""
  def label():
    if head.multi_label:
      return sorted(rng.choice(np.arange(1, head.num_classes + 1), rng.integers(0, 3),
                               replace=False).tolist())
    if head.num_classes == 1:
      return float(rng.normal())
    return int(rng.integers(1, head.num_classes + 1))
  return [(list(rng.integers(2, 101, rng.integers(2, 9))) + [1], label()) for _ in range(n)]


@pytest.fixture(scope='module')
def mixture():
  rng = np.random.default_rng(0)
  tokenized = [_examples(rng, head, n) for head, n in zip(HEADS, (7, 5, 6))]
  cfg = testutil.tiny_config(heads=HEADS, dropout_rate=0.0)
  params = enct5.init_params(jax.random.PRNGKey(1), cfg)
  # Non-zero biases: a head whose bias stays 0 would hide a missing one.
  for k, head in enumerate(HEADS):
    projection = params['decoder']['heads'][head.name]['class_projection']
    projection['bias'] = jnp.linspace(-1.0, 1.0, projection['bias'].size) * (k + 1)
  packed = mixtures.pack_mixture(HEADS, tokenized, [7, 5, 6], 0, 24, 4)
  return cfg, params, tokenized, packed


def test_packed_mixture_equals_each_task_alone(mixture):
  """Each slot's logits and loss are those of its example packed with its own task alone, in
  that task's one-task model (enct5.task_config, task_params); the mixture's loss is the sum of
  the tasks' and its gradient the sum of their gradients."""
  cfg, params, tokenized, packed = mixture
  rows_per_task = {tuple(np.unique(row[row >= 0])) for row in
                   np.where(packed['example_ids'] >= 0, packed['task_ids'], -1)}
  assert any(len(tasks) > 1 for tasks in rows_per_task)  # rows mix tasks
  logits = enct5.apply(params, cfg, packed)
  starts = np.cumsum([0, 7, 5])
  total_loss, total_grads = 0.0, None
  for k, head in enumerate(HEADS):
    task_cfg = enct5.task_config(cfg, head.name)
    alone = packing.pack_examples(tokenized[k], 24, 4, regression=head.num_classes == 1,
                                  num_labels=head.num_classes if head.multi_label else None)
    alone_logits = enct5.apply(enct5.task_params(params, head.name), task_cfg, alone)
    ids, expected = packing.per_example(alone['example_ids'], alone_logits)
    mine = (packed['task_ids'] == k) & (packed['example_ids'] >= 0)
    got = np.asarray(logits[head.name])[mine]
    # The mixture's j-th example of task k is the task's example draw(...)[j].
    original = mixtures.draw(len(tokenized[k]), len(tokenized[k]), 0, k)[
        packed['example_ids'][mine] - starts[k]]
    order = np.argsort(original)
    assert (np.sort(original) == ids).all()
    np.testing.assert_allclose(got[order], expected, atol=1e-5, rtol=1e-5)

    def alone_loss(p, k=k, head=head, task_cfg=task_cfg, alone=alone):
      return enct5.loss_fn(enct5.task_params(p, head.name), task_cfg, alone)[0]
    loss, grads = jax.value_and_grad(alone_loss)(params)
    total_loss += loss
    total_grads = grads if total_grads is None else jax.tree.map(jnp.add, total_grads, grads)
  (loss, aux), grads = jax.value_and_grad(enct5.loss_fn, has_aux=True)(params, cfg, packed)
  np.testing.assert_allclose(loss, total_loss, rtol=1e-5)
  assert int(aux['num_examples']) == 18 and int(aux['num_examples/score']) == 5
  for (path, got), expected in zip(jax.tree_util.tree_leaves_with_path(grads),
                                   jax.tree.leaves(total_grads)):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_a_head_without_slots_gets_no_gradient(mixture):
  """Rows holding only tasks 0 and 2: task 1's query and projection get exactly zero gradient,
  the others and the shared encoder not."""
  cfg, params, _, packed = mixture
  rows = [r for r in range(len(packed['inputs']))
          if not ((packed['task_ids'][r] == 1) & (packed['example_ids'][r] >= 0)).any()]
  assert rows
  batch = {name: array[rows] for name, array in packed.items()}
  grads = jax.grad(lambda p: enct5.loss_fn(p, cfg, batch)[0])(params)
  heads = grads['decoder']['heads']
  assert all((np.asarray(g) == 0).all() for g in jax.tree.leaves(heads['score']))
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(heads['three']))
  assert np.abs(np.asarray(grads['encoder']['layers_0']['mlp']['wo']['kernel'])).max() > 0


def test_pack_mixture_targets_and_task_ids(mixture):
  """Every drawn example sits in one slot with its task id and its label in its task's targets
  (0 in the other tasks')."""
  _, _, tokenized, packed = mixture
  real = packed['example_ids'] >= 0
  assert real.sum() == 18 and sorted(packed['example_ids'][real]) == list(range(18))
  order = [mixtures.draw(n, n, 0, k) for k, n in enumerate((7, 5, 6))]
  for slot in zip(*np.nonzero(real)):
    mixture_id = packed['example_ids'][slot]
    k = int(np.searchsorted([7, 12, 18], mixture_id, side='right'))
    label = tokenized[k][order[k][mixture_id - (0, 7, 12)[k]]][1]
    assert packed['task_ids'][slot] == k
    got = packed[f'targets/{HEADS[k].name}'][slot]
    if HEADS[k].multi_label:
      assert np.flatnonzero(got).tolist() == [c - 1 for c in label]
    else:
      assert got == pytest.approx(label)
    for other in set(range(3)) - {k}:
      assert not np.any(packed[f'targets/{HEADS[other].name}'][slot])


def test_every_task_in_one_pass_equals_each_task_on_every_slot(mixture):
  """`apply_every_task` (one encoder pass, every task's query on every slot) gives each task
  what `apply` gives when every slot is that task's."""
  cfg, params, _, packed = mixture
  batch = {k: jnp.asarray(v) for k, v in packed.items() if k != 'example_ids'}
  batch['targets'] = batch['targets/three']
  every = enct5.apply_every_task(params, cfg, batch)
  assert set(every) == {head.name for head in HEADS}
  for k, head in enumerate(HEADS):
    alone = enct5.apply(params, cfg, dict(batch, task_ids=jnp.full_like(batch['task_ids'], k)))
    np.testing.assert_allclose(every[head.name], alone[head.name], atol=1e-5, err_msg=head.name)


# ---------------------------------------------------------------------------- through train.py

MIX_FLAGS = ['--task=rte,stsb', '--size=tiny', '--d_model=32', '--d_ff=64', '--num_heads=2',
             '--num_layers=1', '--max_input_length=128', '--max_target_length=8',
             '--batch_size=8', '--vocab_size=500', '--log_every=5', '--eval_every=5',
             '--compilation_cache=']


@pytest.fixture(scope='module')
def mix_run(tmp_path_factory):
  """A mixture of RTE and STS-B trained 10 steps in one go."""
  testutil.need_glue()
  out = tmp_path_factory.mktemp('mix') / 'run'
  testutil.train_main(*MIX_FLAGS, f'--data_dir={testutil.GLUE_DIR}', '--train_steps=10',
                      f'--output_dir={out}')
  return str(out)


def test_mixture_records_each_task_and_evaluates_with_its_head(mix_run, tmp_path):
  records = loop.read_metrics(mix_run)
  assert [r['step'] for r in records] == [5, 10]
  last = records[-1]
  assert set(last['task_scores']) == {'rte', 'stsb'}
  assert last['score'] == pytest.approx(np.mean(list(last['task_scores'].values())))
  assert last['task_scores']['rte'] == last['scores']['rte/accuracy']
  record = json.load(open(os.path.join(mix_run, 'run_config.json')))
  assert [t['name'] for t in record['tasks']] == ['rte', 'stsb']
  # --mode=eval --task=stsb: the one-task path, with the stsb head from the checkpoint.
  config = finetune.Config(task='stsb', data_dir=testutil.GLUE_DIR, output_dir=mix_run,
                           vocab=record['vocab_file'], size='tiny', d_model=32, d_ff=64,
                           num_heads=2, num_layers=1, max_input_length=128,
                           max_target_length=8, batch_size=8,
                           checkpoint=load_ckpt.latest_checkpoint(
                               os.path.join(mix_run, 'checkpoints')))
  scores = finetune.evaluate(config)
  assert scores['stsb/pearson_corrcoef'] == last['scores']['stsb/pearson_corrcoef']


def test_mixture_resumes_exactly(mix_run, tmp_path):
  out = tmp_path / 'resumed'
  for steps in (5, 10):
    testutil.train_main(*MIX_FLAGS, f'--data_dir={testutil.GLUE_DIR}', f'--train_steps={steps}',
                        f'--output_dir={out}')
  straight = testutil.checkpoint_params(os.path.join(mix_run, 'checkpoints'))
  resumed = testutil.checkpoint_params(os.path.join(out, 'checkpoints'))
  for name, value in load_ckpt.flatten(straight).items():
    np.testing.assert_array_equal(load_ckpt.flatten(resumed)[name], value, err_msg=name)
  assert loop.read_metrics(out)[-1]['scores'] == loop.read_metrics(mix_run)[-1]['scores']


def test_one_task_fine_tunes_from_the_mixture_with_its_head(mix_run):
  """T5's recipe (Raffel et al. §3.5.3): a one-task model from a multi-task checkpoint takes
  that task's query and class projection."""
  path = load_ckpt.latest_checkpoint(os.path.join(mix_run, 'checkpoints'))
  cfg = testutil.config_of(path, num_classes=2)
  params = load_ckpt.load_params(path, cfg, jax.random.PRNGKey(9), task='rte')
  whole = load_ckpt.flatten(testutil.checkpoint_params(os.path.join(mix_run, 'checkpoints')))
  for name in ('bos_embedding', 'class_projection/kernel', 'class_projection/bias'):
    np.testing.assert_array_equal(load_ckpt.flatten(params)[f'decoder/{name}'],
                                  whole[f'target/decoder/heads/rte/{name}'])
  with pytest.raises(load_ckpt.CheckpointError, match="no task 'mrpc'"):
    load_ckpt.load_params(path, cfg, jax.random.PRNGKey(9), task='mrpc')


def test_mixture_labels_a_file_with_the_task_named(mix_run, tmp_path, capsys):
  rows = tmp_path / 'rows.tsv'
  with open(os.path.join(testutil.GLUE_DIR, 'RTE', 'dev.tsv')) as f:
    rows.write_text(''.join(f.readlines()[:4]))
  out = tmp_path / 'labels.jsonl'
  flags = [f'--output_dir={mix_run}', '--mode=predict', f'--input_file={rows}',
           f'--predictions_file={out}']
  assert testutil.train_status(*flags) == 2
  assert ('multi-task run of GLUE tasks, which do not share their text: say which task labels, '
          '--task= (task=) one of rte,stsb') in capsys.readouterr().err.strip().splitlines()[-1]
  assert testutil.train_status(*flags, '--task=rte') == 0
  labelled = [json.loads(line) for line in out.read_text().splitlines()]
  assert [row['line'] for row in labelled] == [2, 3, 4]
  assert {row['label'] for row in labelled} <= {'entailment', 'not_entailment'}
  import predict
  with pytest.raises(finetune.ConfigError, match='do not share their text: say which task'):
    predict.Labeler(mix_run)
  pair = {'sentence1': 'A man plays a guitar.', 'sentence2': 'A man plays music.'}
  assert set(predict.Labeler(mix_run, task='stsb')(pair)) == {'row', 'value'}


@pytest.mark.parametrize('flags, message', [
    (['--task=rte,sst3'], "--task=rte,sst3: no GLUE task 'sst3'"),
    (['--task=rte,rte'], '--task=rte,rte: rte given twice'),
    (['--task=rte,stsb', '--selection_task=cola'], '--selection_task=cola is not one of'),
    (['--task=rte,stsb', '--mixing_temperature=0'], '--mixing_temperature=0.0: must be positive'),
    (['--task=rte,stsb', '--model=t5'], 'a mixture trains a packed EncT5'),
])
def test_bad_mixture_flags_are_one_line(flags, message, tmp_path, capsys):
  testutil.need_glue()
  status = testutil.train_status(*flags, f'--data_dir={testutil.GLUE_DIR}',
                                 f'--output_dir={tmp_path}')
  assert status == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and 'Traceback' not in '\n'.join(err)


# ------------------------------------------------------------ your own file's label columns

COLUMNS = '--label_field=topic,stars:regression,tags:multi_label'


def _tickets_of_three_labels(path, n, offset):
  """id,text,topic,stars,tags: of each made-up ticket a class, a number and a set of labels."""
  rows = []
  for i in range(offset, offset + n):
    words = [testutil.WORDS[(i + k) % len(testutil.WORDS)] for k in range(4)]
    topic = 'billing' if {'billing', 'card'} & set(words) else 'other'
    stars = sum(word in ('great', 'kind', 'fast') for word in words)
    tags = ','.join(tag for tag, cues in (('late', {'late', 'slow'}),
                                          ('broken', {'broken', 'awful'})) if cues & set(words))
    rows.append(f'{i},{" ".join(words)},{topic},{stars},"{tags}"')
  return testutil.write_rows(path, 'id,text,topic,stars,tags', rows)


@pytest.fixture(scope='module')
def file_mix(tmp_path_factory):
  """One model trained on three label columns of one file, 4 steps."""
  root = tmp_path_factory.mktemp('file_mix')
  files = dict(train=_tickets_of_three_labels(root / 'train.csv', 60, 0),
               dev=_tickets_of_three_labels(root / 'dev.csv', 20, 100), run=str(root / 'run'))
  testutil.train_main(f'--train_file={files["train"]}', f'--validation_file={files["dev"]}',
                      COLUMNS, *testutil.TICKET_FLAGS, f'--output_dir={files["run"]}')
  return files


def test_label_columns_are_tasks_of_one_model_and_one_text(file_mix):
  run = file_mix['run']
  record = json.load(open(os.path.join(run, 'run_config.json')))
  assert [(t['name'], t['kind'], t['text_prefix']) for t in record['tasks']] == [
      ('topic', 'classification', ''), ('stars', 'regression', ''), ('tags', 'multi_label', '')]
  best = max(loop.read_metrics(run), key=lambda r: r['score'])
  assert set(best['task_scores']) == {'topic', 'stars', 'tags'}
  assert set(best['thresholds/tags']) == {'late', 'broken'}
  # --mode=eval: every task's scores at the best checkpoint, its thresholds as chosen then.
  config = dict(record['config'], text_fields=tuple(record['config']['text_fields']),
                output_dir=run, vocab=record['vocab_file'])
  scores = mixtures.evaluate(finetune.Config(**config))
  for key, value in best['scores'].items():
    assert scores[key] == pytest.approx(value, abs=1e-4), key


def test_label_columns_label_a_file_in_one_pass_as_each_task_alone(file_mix, tmp_path):
  """One encoder pass for every task: each task's part of a row is that task's own row."""
  run, dev = file_mix['run'], file_mix['dev']
  predict_flags = [f'--output_dir={run}', '--mode=predict', f'--input_file={dev}']
  assert testutil.train_status(*predict_flags, f'--predictions_file={tmp_path / "all.jsonl"}',
                               '--compilation_cache=') == 0
  every = [json.loads(line) for line in (tmp_path / 'all.jsonl').read_text().splitlines()]
  assert len(every) == 20 and [row['line'] for row in every] == list(range(2, 22))
  for task in ('topic', 'stars', 'tags'):
    out = tmp_path / f'{task}.jsonl'
    assert testutil.train_status(*predict_flags, f'--task={task}', f'--predictions_file={out}',
                                 '--compilation_cache=') == 0
    for row, alone in zip(every, map(json.loads, out.read_text().splitlines())):
      assert row['line'] == alone.pop('line')
      assert row[task].keys() == alone.keys()
      for key, value in alone.items():
        if key == 'probabilities':
          assert row[task][key] == pytest.approx(value, abs=2e-6)
        else:
          assert row[task][key] == pytest.approx(value, abs=1e-5) if key == 'value' else value
  assert testutil.train_status(*predict_flags, f'--predictions_file={tmp_path / "all.csv"}',
                               '--compilation_cache=') == 0
  assert (tmp_path / 'all.csv').read_text().splitlines()[0] == (
      'line,topic,topic p(billing),topic p(other),stars,tags,tags p(broken),tags p(late)')
  import predict
  text = 'refund card late slow'
  both = predict.Labeler(run)([text, 'great kind fast film'])
  assert [row['row'] for row in both] == [1, 2]
  assert both[0]['stars']['value'] == pytest.approx(
      predict.Labeler(run, task='stars')(text)['value'], abs=1e-5)


@pytest.mark.parametrize('flags, message', [
    (['--label_field=topic,topic'], '--label_field=topic,topic: topic given twice'),
    (['--label_field=topic,stars:ranking'], "'stars:ranking' is not a column or column:kind"),
    (['--label_field=topic,stars', '--regression'], 'give each column its kind'),
    (['--label_field=topic,stars', '--labels=a,b'], '--labels would hold for every column'),
    ([COLUMNS, '--task=topic'], '--task=topic and --train_file: one or the other'),
    (['--label_field=topic:regression,stars'], "score 'billing' is not a number"),
])
def test_bad_label_columns_are_one_line(file_mix, flags, message, tmp_path, capsys):
  status = testutil.train_status(f'--train_file={file_mix["train"]}',
                                 f'--validation_file={file_mix["dev"]}', *flags,
                                 *testutil.TICKET_FLAGS, f'--output_dir={tmp_path}')
  assert status == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and 'Traceback' not in '\n'.join(err)

