"""Fine-tune EncT5 (Liu et al. 2021), or the paper's T5 and 1decT5 baselines, on a GLUE task:
`python train.py --flags`. The command line only: flags -> `finetune.Config` -> `finetune`.

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
  model              --model --checkpoint --load_optimizer_state --size --fresh_pooling_block
                     --d_model --num_heads --head_dim --d_ff --num_layers --dropout_rate --dtype
                     --remat_policy --scan_layers
  training           --batch_size --learning_rate --train_steps --eval_every --log_every
                     --keep_checkpoints --seed
  devices and hosts  --mesh --coordinator_address --num_processes --process_id
                     --compilation_cache
  run                --mode --predict_split --output_dir

Exit statuses (`cli.py`): 0 done; 1 a bug (with its traceback) or a non-finite loss; 2 a
mistake in a flag, a file or the data (one line naming it); 3 stopped by SIGTERM or SIGINT
after a checkpoint (run the same command to resume).
"""
import contextlib
import dataclasses
import os
import tempfile

from absl import app, flags, logging
import jax

import cli
import finetune
import glue
import loop

DEFAULTS = cli.DEFAULTS

# Task and data.
flags.DEFINE_string('task', None, 'GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli or rte. '
                    'Unset: the built-in demo task, generated into OUTPUT_DIR (no data needed).')
flags.DEFINE_string('data_dir', None, 'GLUE data as download_glue_data.py lays it out: the root '
                    '(holding SST-2/, MNLI/, ...) or one task folder such as glue_data/SST-2.')
flags.DEFINE_integer('max_target_length', DEFAULTS.max_target_length, 'Two meanings, by '
                     '--model. enct5: example slots per packed row (T), so at most this many '
                     'examples share a row (paper: 62). t5 and 1dect5: decoder tokens per packed '
                     'row (T5X\'s `targets` length), each example taking its label\'s tokens '
                     'and EOS.')
flags.DEFINE_bool('pack', DEFAULTS.pack, 'Pack several examples per row (paper §3); --nopack: '
                  'one example per row.')

# Model.
flags.DEFINE_enum('model', DEFAULTS.model, list(finetune.MODELS), 'enct5: the T5 encoder, the '
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
                  'predict: GLUE submission TSVs (index, prediction) in OUTPUT_DIR/predictions.')
flags.DEFINE_string('predict_split', 'test', 'Split that --mode=predict labels (test: all the '
                    'task\'s test files, e.g. MNLI-m and MNLI-mm).')

FLAGS = flags.FLAGS
USER_ERROR, INTERRUPTED = cli.USER_ERROR, cli.INTERRUPTED
UserError = cli.UserError
# What --mode=eval/predict choose for themselves, not taken from the training run's record.
NOT_RECORDED = ('output_dir', 'checkpoint', 'mesh')


def check_flags():
  """Numbers that cannot work stop here, before anything is read or compiled."""
  if FLAGS.task and FLAGS.task not in glue.TASKS:
    raise UserError(f'--task={FLAGS.task}: no such GLUE task; one of {sorted(glue.TASKS)}')
  cli.check_positive(cli.POSITIVE_FLAGS + ('max_target_length',))
  if not FLAGS.learning_rate > 0:
    raise UserError(f'--learning_rate={FLAGS.learning_rate}: must be positive')
  if FLAGS['eval_every'].present and FLAGS.eval_every > FLAGS.train_steps:
    raise UserError(f'--eval_every={FLAGS.eval_every} is larger than --train_steps='
                    f'{FLAGS.train_steps}: the run would evaluate only at its end')


def config_from_flags():
  """The run's `finetune.Config`: every field the flag of its name."""
  return finetune.Config(**{field.name: FLAGS[field.name].value
                            for field in dataclasses.fields(finetune.Config)})


# ----------------------------------------------------------------------------------------------
# The run's record: a resumed run must be the same run; --mode=eval/predict take the training
# run's flags.
# ----------------------------------------------------------------------------------------------

def check_same_run(record):
  """A run resumed in OUTPUT_DIR must be the same model, size, task and vocabulary."""
  for name in finetune.RUN_FIELDS:
    was = record['config'].get(name)
    if FLAGS[name].value != was:
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
GLUE_PLACES = (os.path.join(glue.SHARED, 'glue'), 'glue_data')


def demo_setup(with_demo_flags):
  """The demo's data, written into OUTPUT_DIR/data (and its flags, unless given)."""
  for name, value in DEMO_FLAGS.items():
    if name == 'size' and FLAGS.checkpoint:
      continue  # the checkpoint's shape is the model's
    if with_demo_flags and not FLAGS[name].present:
      FLAGS[name].value = value
  if FLAGS.data_dir and with_demo_flags:
    raise app.UsageError('--data_dir needs --task (one of %s)' % ', '.join(sorted(glue.TASKS)))
  if FLAGS.output_dir is None:
    FLAGS.output_dir = tempfile.mkdtemp(prefix='enct5_demo_')
  logging.info('no --task: the demo. A generated task (sentences of made-up words; is there more '
               '"good" than "bad" cue words?), a SentencePiece model trained on it, a tiny '
               '%s trained from scratch, in %s', finetune.MODELS[FLAGS.model].name,
               FLAGS.output_dir)
  for place in GLUE_PLACES:
    if os.path.isdir(place):
      logging.info('GLUE data found at %s: fine-tune on it with e.g. `python train.py '
                   '--task=sst2 --data_dir=%s --size=tiny`', os.path.normpath(place),
                   os.path.normpath(os.path.join(place, 'SST-2')))
  FLAGS.data_dir = os.path.join(FLAGS.output_dir, 'data', glue.DEMO_TASK.dir_name)
  # Every process writes the same files (same seed), atomically; dev.tsv is written last.
  if not os.path.isfile(os.path.join(FLAGS.data_dir, glue.DEMO_TASK.files['validation'])):
    glue.write_demo_task(FLAGS.data_dir, FLAGS.seed)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def main(argv):
  cli.run('train.py', run_command, argv)


def run_command(argv):
  """Train (resuming), evaluate or predict, as the flags say."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are --name=value')
  cli.start_up()
  if FLAGS.output_dir is None and FLAGS.task:
    FLAGS.output_dir = os.path.join('runs', FLAGS.task)
  record = finetune.read_run_record(FLAGS.output_dir) if FLAGS.output_dir else None
  recorded_flags = record is not None and FLAGS.mode != 'train'
  if recorded_flags:
    use_recorded_flags(record)
  check_flags()
  demo = FLAGS.task is None
  if demo:
    demo_setup(with_demo_flags=not recorded_flags)
  elif FLAGS.data_dir is None:
    found = [p for p in GLUE_PLACES if os.path.isdir(p)]
    hint = f' (GLUE data found: --data_dir={os.path.normpath(found[0])})' if found else ''
    raise app.UsageError(f'--task={FLAGS.task} needs --data_dir{hint}')
  if record and FLAGS.mode == 'train':
    check_same_run(record)
  config = config_from_flags()
  if FLAGS.mode == 'eval':
    finetune.evaluate(config)
  elif FLAGS.mode == 'predict':
    finetune.predict(config, FLAGS.predict_split)
  else:
    with (cli.lock_output_dir(config.output_dir) if jax.process_index() == 0
          else contextlib.nullcontext()):
      fine_tune(config, demo)


def fine_tune(config, demo):
  """--mode=train: `finetune.train`, then the learning curve logged."""
  best = finetune.train(config)
  curve = loop.read_metrics(config.output_dir)
  if curve:
    task = glue.get_task(config.task or glue.DEMO_TASK.name)
    logging.info('learning curve (validation %s): %s', ', '.join(task.metric_keys),
                 ', '.join(f'step {r["step"]}: {r["score"]:.1f}' for r in curve))
    logging.info('best %.2f at step %d: %s/best', best['score'], best['step'], config.output_dir)
  if demo and curve:
    logging.info('final validation accuracy %.1f%% (chance: 50%%)', curve[-1]['score'])


if __name__ == '__main__':
  app.run(main)
