"""Tests of train.py itself: the run's record (resuming with other flags refused, --mode=eval
from OUTPUT_DIR alone) and flags checked before anything is read."""
import json

import pytest

import cli
import train
from testutil import TICKET_FLAGS, TINY_FLAGS, tickets, tickets_csv, train_main, train_status


def test_run_recorded_resume_checked_and_eval_from_output_dir_alone(tmp_path, caplog):
  """config.json (in OUTPUT_DIR and every checkpoint) records the run: re-running with another
  --size, --vocab or --task stops naming the flag, and --mode=eval needs only --output_dir
  (the demo's data lives there)."""
  out = tmp_path / 'run'
  train_main('--train_steps=2', '--eval_every=2', f'--output_dir={out}', *TINY_FLAGS)
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
      train_main('--train_steps=4', '--eval_every=2', f'--output_dir={out}', *TINY_FLAGS, *changed)
  score = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])['score']
  caplog.clear()
  caplog.set_level('INFO')
  train_main('--mode=eval', f'--output_dir={out}')
  assert f'score {score:.2f}' in caplog.text


@pytest.mark.parametrize('flags, message', [
    (['--labels=label_names.txt'], '--labels=label_names.txt: no such file'),
    (['--labels=conf/labels'], '--labels=conf/labels: no such file'),
    (['--multi_label', '--label_separator='], '--label_separator is empty')])
def test_label_flags_checked_before_reading(tmp_path, capsys, flags, message):
  train_file = tickets_csv(tmp_path / 'train.csv', tickets(8))
  assert train_status(f'--train_file={train_file}', f'--validation_file={train_file}',
                      '--text_fields=text', '--label_field=queue', f'--output_dir={tmp_path}/run',
                      *flags, *TICKET_FLAGS) == cli.USER_ERROR
  assert capsys.readouterr().err.strip() == f'train.py: error: {message}' + {
      '--labels=label_names.txt: no such file': ' (a label set is a file of one name a line, '
                                                'or names separated by commas)',
      '--labels=conf/labels: no such file': ' (a label set is a file of one name a line, or '
                                            'names separated by commas)',
      '--label_separator is empty': ': a multi-label field needs a separator between its '
                                    'labels (default ",")'}[message]
