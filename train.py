"""Fine-tune EncT5 (Liu et al. 2021), or the paper's T5 and 1decT5 baselines, on a GLUE task or
your own CSV, TSV or JSON Lines files, and label new text: `python train.py --flags`. The
command line only: flags -> `finetune.Config` -> `finetune`.

  python train.py                                    # demo: a tiny EncT5 learns a generated
                                                     # task from scratch (~1 minute on a CPU)
  python train.py --task=sst2 --data_dir=glue_data/SST-2 --size=tiny --max_input_length=128 \
      --max_target_length=32 --batch_size=32 --train_steps=3000 --eval_every=250
      # from random init with its own SentencePiece model: 79.8% dev accuracy, 10 min, 2 cores
  python train.py --task=mnli --data_dir=glue_data \
      --checkpoint=gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000 \
      --vocab=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model --output_dir=runs/mnli
  python train.py --task=rte --data_dir=glue_data --checkpoint=google/mt5-small  # a local HF dir
  python train.py --size=byt5-tiny --vocab=byt5      # the demo with ByT5's shape and bytes
  python train.py --mode=eval --output_dir=runs/mnli # metrics of OUTPUT_DIR/best
  python train.py --mode=predict --output_dir=...    # GLUE submission TSVs
  python train.py --train_file=tickets.csv --validation_file=dev.csv --text_fields=subject,body \
      --label_field=queue --output_dir=runs/tickets   # your own files (add --multi_label or
                                                      # --regression for those kinds of label)
  python train.py --mode=predict --output_dir=runs/tickets --input_file=new.csv \
      --predictions_file=new.jsonl                    # label a file of any size
  python train.py ... --model=t5                     # the T5 baseline (paper §4.3): labels as
                                                     # text, predictions decoded greedily

Re-running the same command resumes from OUTPUT_DIR/checkpoints exactly. OUTPUT_DIR/
run_config.json (copied into every checkpoint) records the run: resuming with another --task,
--model, --size, --vocab or shape flag stops, and --mode=eval/predict take the training run's
flags from it. Many hosts: run the same command on each with --coordinator_address,
--num_processes and --process_id.

Flags by section (`--helpfull` lists them; the shared ones are `cli.py`'s):
  task and data      --task --data_dir --vocab --vocab_size --max_input_length
                     --max_target_length --pack
  your own files     --train_file --validation_file --test_file --file_format --text_fields
                     --label_field --regression --multi_label --labels --labels_by_index
                     --label_separator --skip_bad_rows --selection_metric --threshold
  model              --model --checkpoint --load_optimizer_state --size --fresh_pooling_block
                     --d_model --num_heads --head_dim --d_ff --num_layers --dropout_rate --dtype
                     --remat_policy --scan_layers --attention_block_length
  training           --batch_size --learning_rate --train_steps --eval_every --log_every
                     --keep_checkpoints --seed --eval_batch_size
  devices and hosts  --mesh --coordinator_address --num_processes --process_id
                     --host_timeout --compilation_cache
  run                --mode --predict_split --input_file --predictions_file --id_field
                     --output_dir

Exit statuses (`cli.py`): 0 done; 1 a bug (with its traceback) or a non-finite loss; 2 a
mistake in a flag, a file or the data (one line naming it); 3 stopped by SIGTERM or SIGINT
(training: after a checkpoint, run the same command to resume; eval and predict: at once,
nothing half-written); 4 another process of a run on several
hosts stopped answering (one line: which, the step, the last checkpoint, how to resume).
"""
import contextlib
import dataclasses
import os
import tempfile

from absl import app, flags, logging
import jax

import cli
import evaluation
import finetune
import loop
import metrics
import mixtures
import predict
import tasks

DEFAULTS = cli.DEFAULTS

# Task and data.
flags.DEFINE_string('task', None, 'GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli or rte. '
                    'Several, comma-separated (rte,mrpc,stsb): one multi-task EncT5 on their '
                    'mixture, a task embedding and head each (--mixing_*). With --mode=eval/'
                    'predict on a multi-task run: the one task to use (unset: all). Unset: the '
                    'built-in demo task, generated into OUTPUT_DIR (no data needed).')
flags.DEFINE_string('data_dir', None, 'GLUE data as download_glue_data.py lays it out: the root '
                    '(holding SST-2/, MNLI/, ...) or one task folder such as glue_data/SST-2.')
flags.DEFINE_integer('max_target_length', DEFAULTS.max_target_length, 'Two meanings, by '
                     '--model. enct5: example slots per packed row (T), so at most this many '
                     'examples share a row (paper: 62). t5 and 1dect5: decoder tokens per packed '
                     'row (T5X\'s `targets` length), each example taking its label\'s tokens '
                     'and EOS.')
flags.DEFINE_bool('pack', DEFAULTS.pack, 'Pack several examples per row (paper §3); --nopack: '
                  'one example per row.')

# Multi-task (--task=a,b,c).
flags.DEFINE_integer('mixing_cap', None, 'Multi-task: K of examples-proportional mixing (Raffel '
                     'et al. §3.5.2), each task\'s rate proportional to min(its examples, K). '
                     'Unset: no cap.')
flags.DEFINE_float('mixing_temperature', DEFAULTS.mixing_temperature, 'Multi-task: T of '
                   'temperature-scaled mixing, rates proportional to min(n, K)^(1/T); 1: '
                   'examples-proportional, larger: closer to equal.')
flags.DEFINE_string('selection_task', None, 'Multi-task: the task whose validation score picks '
                    'the best checkpoint. Unset: the mean of the tasks\' scores (as GLUE\'s '
                    'average).')

# Your own files (instead of --task): the text fields become the input as GLUE's do.
flags.DEFINE_string('train_file', None, 'Training rows: CSV, TSV or JSON Lines (by extension, '
                    'or --file_format). Needs --validation_file.')
flags.DEFINE_string('validation_file', None, 'Validation rows: the best checkpoint is chosen on '
                    'them (--selection_metric).')
flags.DEFINE_string('test_file', None, 'Rows to label with --mode=predict (the label column '
                    'optional), unless --input_file names others.')
flags.DEFINE_enum('file_format', None, ['csv', 'tsv', 'jsonl'], 'The files\' format, when their '
                  'extensions do not say it.')
flags.DEFINE_list('text_fields', list(DEFAULTS.text_fields), 'The text columns (JSON keys), in '
                  'order; each becomes `field: value` in the input, e.g. question,passage.')
flags.DEFINE_string('label_field', DEFAULTS.label_field, 'The label column (JSON key). Several, '
                    'each a task of one model (multi-task, one text): topic,stars:regression,'
                    'tags:multi_label (a bare column is a class).')
flags.DEFINE_bool('regression', DEFAULTS.regression, 'A number a row (squared error), instead '
                  'of a class.')
flags.DEFINE_bool('multi_label', DEFAULTS.multi_label, 'Zero or more labels a row (a JSON list, '
                  'or --label_separator between them in CSV/TSV): a sigmoid per label, binary '
                  'cross-entropy, --threshold.')
flags.DEFINE_string('labels', None, 'The label names in order, a,b,c or a file of one a line. '
                    'Unset: the training file\'s, sorted (numbers by value). A label outside '
                    'them is an error naming file and line.')
flags.DEFINE_bool('labels_by_index', DEFAULTS.labels_by_index, 'The files spell each label as its '
                  '0-based index into --labels (GoEmotions: 0,15 and labels.txt).')
flags.DEFINE_string('label_separator', DEFAULTS.label_separator, 'Between a row\'s labels in '
                    'CSV/TSV (--multi_label).')
flags.DEFINE_bool('skip_bad_rows', DEFAULTS.skip_bad_rows, 'Leave out (and count) rows that cannot '
                  'be read, instead of stopping at the first, naming file and line.')
flags.DEFINE_enum('selection_metric', None, ['accuracy', 'macro_f1', 'micro_f1',
                                             'pearson_corrcoef', 'spearman_corrcoef'],
                  'The validation metric that picks the best checkpoint. Unset: accuracy; the '
                  'mean of Pearson and Spearman (--regression); macro-F1 (--multi_label).')
flags.DEFINE_float('threshold', DEFAULTS.threshold, '--multi_label: a label is predicted when its '
                   'probability is at least this. Unset: thresholds chosen on validation at '
                   'each evaluation, one for all labels and one per label seen there >= '
                   f'{metrics.MIN_THRESHOLD_SUPPORT} times, recorded in metrics.jsonl and used '
                   'by --mode=eval/predict.')

# Model.
flags.DEFINE_enum('model', DEFAULTS.model, list(evaluation.MODELS), 'enct5: the T5 encoder, the '
                  'pooling block and a class head (paper §3). t5: the full T5.1.1 '
                  'encoder-decoder, labels as T5 text, predictions decoded greedily and mapped '
                  'back to labels (§4.3 baseline). 1dect5: the same with only the first decoder '
                  'layer (§4.3).')
flags.DEFINE_string('checkpoint', None, 'T5.1.1, mT5 or ByT5 checkpoint: T5X\'s format, local '
                    'or gs:// (e.g. gs://t5-data/pretrained_models/t5x/t5_1_1_small/'
                    'checkpoint_1000000), or a Hugging Face model directory (config.json + '
                    'safetensors, e.g. a local copy of google/mt5-small): its encoder and first '
                    'decoder layer are loaded with their Adafactor state (paper §4.2; '
                    '--model=t5: all of it; 1dect5: all but decoder layers 1 and up), and its '
                    'shapes fix the model. Unset: random init. With --mode=eval/predict: the '
                    'checkpoint to use (default OUTPUT_DIR/best).')
flags.DEFINE_bool('load_optimizer_state', DEFAULTS.load_optimizer_state, 'With --checkpoint: '
                  'continue its Adafactor state and step (T5X\'s default; paper §4.2). '
                  '--noload_optimizer_state: fresh Adafactor state from step 0, as with random '
                  'init (T5X: an assignment_map sending state/.* to None).')
flags.DEFINE_integer('attention_block_length', DEFAULTS.attention_block_length, 'Encoder '
                     'self-attention in blocks of this many tokens (it must divide '
                     '--max_input_length), each packed example within one block: the same '
                     'outputs, attention L/b times cheaper. Unset: the smallest block that '
                     'holds the longest example, chosen from the data by training, evaluation '
                     'and prediction alike. 0: whole rows.')
flags.DEFINE_bool('fresh_pooling_block', DEFAULTS.fresh_pooling_block, 'From an encoder-only '
                  'checkpoint (Hugging Face T5EncoderModel, Sentence-T5): start EncT5\'s pooling '
                  'block (the first decoder layer\'s cross-attention and FFN) from random init '
                  'instead of stopping because the checkpoint has none.')

# Training.
flags.DEFINE_float('learning_rate', DEFAULTS.learning_rate, 'Adafactor\'s constant learning rate '
                   '(paper §4.1).')

# Run.
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'train: fine-tune (resuming '
                  'from OUTPUT_DIR). eval: the task\'s metrics on the validation split(s). '
                  'predict: label --input_file (your own files: default --test_file), else GLUE '
                  'submission TSVs (index, prediction) in OUTPUT_DIR/predictions.')
flags.DEFINE_string('predict_split', 'test', 'The GLUE split that --mode=predict labels (test: '
                    'all the task\'s test files, e.g. MNLI-m and MNLI-mm).')
flags.DEFINE_string('input_file', None, '--mode=predict: rows to label (CSV, TSV or JSON Lines, '
                    'any size, streamed), one output row each, in order.')
flags.DEFINE_string('predictions_file', None, '--mode=predict --input_file: the output, in the '
                    'format its extension names (.jsonl or .ndjson, .csv, .tsv). Default: '
                    'OUTPUT_DIR/predictions/<input name>.jsonl.')
flags.DEFINE_string('id_field', None, '--input_file\'s id column, copied into each output row '
                    'as "id"; unset: the row\'s "line" number.')

FLAGS = flags.FLAGS
UserError = cli.UserError
# What --mode=eval/predict choose for themselves, not taken from the training run's record
# (attention blocks: from the rows they label).
NOT_RECORDED = ('output_dir', 'checkpoint', 'mesh', 'attention_block_length')


def check_flags():
  """Flags that cannot work stop here, before anything is read or compiled."""
  if FLAGS.task and FLAGS.train_file and FLAGS.mode == 'train':
    raise UserError(f'--task={FLAGS.task} and --train_file: one or the other (the tasks of your '
                    'own file are its label columns, --label_field)')
  names = FLAGS.task.split(',') if FLAGS.task else []
  unknown = [name for name in names if name not in tasks.TASKS]
  if unknown and not FLAGS.train_file:  # eval and predict: a label column of the run's file
    raise UserError(f'--task={FLAGS.task}: no GLUE task {", ".join(map(repr, unknown))}; one of '
                    f'{sorted(tasks.TASKS)}')
  run_tasks = mixtures.task_names(config_from_flags())
  if FLAGS.selection_task and FLAGS.selection_task not in run_tasks:
    raise UserError(f'--selection_task={FLAGS.selection_task} is not one of the run\'s tasks '
                    f'({", ".join(run_tasks) or "it has one"})')
  if not FLAGS.mixing_temperature > 0:
    raise UserError(f'--mixing_temperature={FLAGS.mixing_temperature}: must be positive')
  if FLAGS.mixing_cap is not None and FLAGS.mixing_cap < 1:
    raise UserError(f'--mixing_cap={FLAGS.mixing_cap}: must be >= 1')
  if FLAGS.train_file and not FLAGS.validation_file:
    raise UserError('--train_file needs --validation_file: the best checkpoint is chosen on it')
  if FLAGS.regression and FLAGS.multi_label:
    raise UserError('--regression and --multi_label: one kind of label or the other')
  block = FLAGS.attention_block_length
  if block is not None and (block < 0 or (block and FLAGS.max_input_length % block)):
    raise UserError(f'--attention_block_length={block}: must be 0 (whole rows) or divide '
                    f'--max_input_length={FLAGS.max_input_length}')
  if FLAGS.threshold is not None and not 0 < FLAGS.threshold < 1:
    raise UserError(f'--threshold={FLAGS.threshold}: must be between 0 and 1')
  if FLAGS.multi_label and not FLAGS.label_separator:
    raise UserError('--label_separator is empty: a multi-label field needs a separator between '
                    'its labels (default ",")')
  labels = FLAGS.labels
  if labels and ',' not in labels and not os.path.isfile(labels) and (
      os.sep in labels or os.path.splitext(labels)[1]):
    raise UserError(f'--labels={labels}: no such file (a label set is a file of one name a line, '
                    'or names separated by commas)')
  cli.check_positive(cli.POSITIVE_FLAGS + ('max_target_length',))
  if not FLAGS.learning_rate > 0:
    raise UserError(f'--learning_rate={FLAGS.learning_rate}: must be positive')
  if FLAGS['eval_every'].present and FLAGS.eval_every > FLAGS.train_steps:
    raise UserError(f'--eval_every={FLAGS.eval_every} is larger than --train_steps='
                    f'{FLAGS.train_steps}: the run would evaluate only at its end')


def config_from_flags():
  """The run's `finetune.Config`: every field the flag of its name."""
  values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(finetune.Config)}
  return finetune.Config(**dict(values, text_fields=tuple(values['text_fields'])))


# ----------------------------------------------------------------------------------------------
# The run's record: a resumed run must be the same run; --mode=eval/predict take the training
# run's flags.
# ----------------------------------------------------------------------------------------------

def check_same_run(record):
  """A run resumed in OUTPUT_DIR must be the same model, size, task and vocabulary."""
  for name in finetune.RUN_FIELDS:  # a field added since the run was made: its default then
    was, now = record['config'].get(name, getattr(DEFAULTS, name)), FLAGS[name].value
    if (list(now) if name == 'text_fields' else now) != was:
      raise app.UsageError(
          f'--{name}={FLAGS[name].value} but the run in {FLAGS.output_dir} was trained with '
          f'--{name}={was} ({os.path.join(FLAGS.output_dir, finetune.RECORD_FILE)}): resume it '
          'with the same flags, or give another --output_dir')


def use_recorded_flags(record):
  """--mode=eval/predict: every flag not given on the command line takes the training run's
  value, and --vocab its vocabulary file."""
  for name, value in record['config'].items():
    if name not in NOT_RECORDED and not FLAGS[name].present:
      FLAGS[name].value = value
  if not FLAGS['vocab'].present:
    FLAGS.vocab = record['vocab_file']


# ----------------------------------------------------------------------------------------------
# The demo: plain `python train.py`, a tiny model, short rows, a few hundred steps (flags given
# on the command line still win).
# ----------------------------------------------------------------------------------------------

DEMO_FLAGS = dict(size='tiny', vocab_size=1000, max_input_length=128, max_target_length=16,
                  batch_size=16, train_steps=300, eval_every=100, log_every=25)
GLUE_PLACES = (os.path.join(tasks.SHARED, 'glue'), 'glue_data')


def demo_setup(with_demo_flags):
  """The demo's data, written into OUTPUT_DIR/data (and its flags, unless given)."""
  for name, value in DEMO_FLAGS.items():
    if name == 'size' and FLAGS.checkpoint:
      continue  # the checkpoint's shape is the model's
    if with_demo_flags and not FLAGS[name].present:
      FLAGS[name].value = value
  if FLAGS.data_dir and with_demo_flags:
    raise app.UsageError('--data_dir needs --task (one of %s)' % ', '.join(sorted(tasks.TASKS)))
  if FLAGS.output_dir is None:
    FLAGS.output_dir = tempfile.mkdtemp(prefix='enct5_demo_')
  logging.info('no --task: the demo. A generated task (sentences of made-up words; is there more '
               '"good" than "bad" cue words?), a SentencePiece model trained on it, a tiny '
               '%s trained from scratch, in %s', evaluation.MODELS[FLAGS.model].name,
               FLAGS.output_dir)
  for place in GLUE_PLACES:
    if os.path.isdir(place):
      logging.info('GLUE data found at %s: fine-tune on it with e.g. `python train.py '
                   '--task=sst2 --data_dir=%s --size=tiny`', os.path.normpath(place),
                   os.path.normpath(os.path.join(place, 'SST-2')))
  FLAGS.data_dir = os.path.join(FLAGS.output_dir, 'data', tasks.DEMO_TASK.dir_name)
  # Every process writes the same files (same seed), atomically; dev.tsv is written last.
  if not os.path.isfile(os.path.join(FLAGS.data_dir, tasks.DEMO_TASK.files['validation'])):
    tasks.write_demo_task(FLAGS.data_dir, FLAGS.seed)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def main(argv):
  cli.run('train.py', run_command, argv)


def run_command(argv):
  """Train (resuming), evaluate or predict, as the flags say."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  with cli.start_up() as watchdog:
    run_mode(watchdog)


def run_mode(watchdog):
  """The flags checked and completed (the run's record, the demo), then --mode's work."""
  if FLAGS.output_dir is None and FLAGS.task:
    FLAGS.output_dir = os.path.join('runs', FLAGS.task.replace(',', '+'))
  record = finetune.read_run_record(FLAGS.output_dir) if FLAGS.output_dir else None
  if FLAGS.mode != 'train' and record is None and not FLAGS.checkpoint:
    raise app.UsageError(f'--mode={FLAGS.mode}: no run in --output_dir={FLAGS.output_dir} (no '
                         f'{finetune.RECORD_FILE}); train one there first, or give --checkpoint')
  recorded_flags = record is not None and FLAGS.mode != 'train'
  if recorded_flags:
    use_recorded_flags(record)
  check_flags()
  demo = FLAGS.task is None and FLAGS.train_file is None
  if demo:
    demo_setup(with_demo_flags=not recorded_flags)
  elif FLAGS.task and not FLAGS.train_file and FLAGS.data_dir is None:
    found = [p for p in GLUE_PLACES if os.path.isdir(p)]
    hint = f' (GLUE data found: --data_dir={os.path.normpath(found[0])})' if found else ''
    raise app.UsageError(f'--task={FLAGS.task} needs --data_dir{hint}')
  if record and FLAGS.mode == 'train':
    check_same_run(record)
  config = config_from_flags()
  if FLAGS.mode == 'eval':
    with cli.stop_at_once_on_signals('evaluating'):
      (mixtures.evaluate if mixtures.is_mixture(config) else finetune.evaluate)(config)
  elif FLAGS.mode == 'predict' and (FLAGS.input_file or FLAGS.train_file):
    input_file = FLAGS.input_file or FLAGS.test_file
    if not input_file:
      raise app.UsageError('--mode=predict needs --input_file (or the run\'s --test_file)')
    with cli.stop_at_once_on_signals(f'labelling {input_file}'):
      predict.predict_file(config, input_file, FLAGS.predictions_file, FLAGS.id_field)
  elif FLAGS.mode == 'predict':
    with cli.stop_at_once_on_signals('predicting'):
      for task_config in mixtures.task_configs(config):
        predict.glue_submission(task_config, FLAGS.predict_split)
  else:
    with (cli.lock_output_dir(config.output_dir) if jax.process_index() == 0
          else contextlib.nullcontext()):
      fine_tune(config, demo, watchdog)


def fine_tune(config, demo, watchdog):
  """--mode=train: `finetune.train` (a mixture: `mixtures.train`), then the learning curve
  logged."""
  mixture = mixtures.is_mixture(config)
  best = (mixtures.train if mixture else finetune.train)(config, watchdog)
  curve = loop.read_metrics(config.output_dir)
  if curve:
    selection = (config.selection_task or 'mean of the tasks' if mixture
                 else ', '.join(finetune.get_task(config).selection_keys))
    logging.info('learning curve (validation %s): %s', selection,
                 ', '.join(f'step {r["step"]}: {r["score"]:.1f}' for r in curve))
    logging.info('best %.2f at step %d: %s/best', best['score'], best['step'], config.output_dir)
  if demo and curve:
    logging.info('final validation accuracy %.1f%% (chance: 50%%)', curve[-1]['score'])


if __name__ == '__main__':
  app.run(main)
