"""Golden values for the Hugging Face fixtures, from transformers itself (test_hf.py reads them).

For each of ../shared/fixtures/hf_{t5_v1_1,mt5,byt5}_tiny (written by transformers'
`save_pretrained`; see SOURCES.md there) it writes testdata/golden_hf_<fixture>.npz with

  inputs [B, L]                  token ids, 0-padded rows of different lengths ending in EOS 1
  encoded [B, L, D]              the encoder's output (`last_hidden_state`), float64
  decoder_input_tokens [B, Ld]   the targets shifted right with BOS 0
  decoder_target_tokens [B, Ld]  0-padded targets ending in EOS
  logits_ids [C]                 the vocabulary ids whose logits are kept (all of ByT5's)
  logits [B, Ld, C]              `{T5,MT5}ForConditionalGeneration`'s teacher-forced logits at
                                 those ids, float64
  logsumexp [B, Ld]              logsumexp of the logits over the whole vocabulary, float64
  sha256                         of the fixture's model.safetensors (the test checks it)

Only the weights of the fixtures are used (read by transformers, in float64); the weights are
not copied here. Values at padding (inputs 0, targets 0) are whatever HF computes there: the
test compares real tokens only.

Rerun from the repo root: python tools/make_hf_golden.py. Needs torch and transformers
(test-tool only, never runtime dependencies); the fixtures are found through $ENCT5_SHARED
(default ../shared). Seeds are fixed.
"""
import hashlib
import os

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('ENCT5_SHARED', os.path.join(REPO, '..', 'shared'))
FIXTURES = ('hf_t5_v1_1_tiny', 'hf_mt5_tiny', 'hf_byt5_tiny')
BATCH, LENGTH, TARGET_LENGTH, KEPT_LOGITS = 3, 12, 5, 512


def padded_rows(rng, vocab_size, lengths, width):
  """Rows of random ids in [3, V) ending in EOS 1, 0-padded to `width`."""
  rows = np.zeros((len(lengths), width), np.int64)
  for row, length in zip(rows, lengths):
    row[:length - 1] = rng.integers(3, vocab_size, length - 1)
    row[length - 1] = 1
  return rows


def golden(fixture):
  directory = os.path.join(SHARED, 'fixtures', fixture)
  model = AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=torch.float64).eval()
  # transformers 5.x may tie lm_head to shared whatever config.json says: make sure it did not.
  weights = load_file(os.path.join(directory, 'model.safetensors'))
  assert torch.equal(model.lm_head.weight.float(), weights['lm_head.weight']), 'lm_head tied'
  assert not getattr(model.config, 'scale_decoder_outputs', False)
  vocab_size = model.config.vocab_size

  rng = np.random.default_rng(20261129)
  inputs = padded_rows(rng, vocab_size, [LENGTH, 7, 3], LENGTH)
  targets = padded_rows(rng, vocab_size, [TARGET_LENGTH, 3, 1], TARGET_LENGTH)
  decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int64), targets[:, :-1]], axis=1)
  logits_ids = (np.arange(vocab_size) if vocab_size <= KEPT_LOGITS else
                np.sort(rng.choice(vocab_size, KEPT_LOGITS, replace=False)))

  with torch.no_grad():
    attention_mask = torch.tensor(inputs > 0)
    encoded = model.encoder(input_ids=torch.tensor(inputs),
                            attention_mask=attention_mask).last_hidden_state
    logits = model(input_ids=torch.tensor(inputs), attention_mask=attention_mask,
                   decoder_input_ids=torch.tensor(decoder_inputs),
                   decoder_attention_mask=torch.tensor(targets > 0)).logits
  with open(os.path.join(directory, 'model.safetensors'), 'rb') as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  return dict(inputs=inputs.astype(np.int32), encoded=encoded.numpy(),
              decoder_input_tokens=decoder_inputs.astype(np.int32),
              decoder_target_tokens=targets.astype(np.int32),
              logits_ids=logits_ids.astype(np.int32), logits=logits.numpy()[..., logits_ids],
              logsumexp=torch.logsumexp(logits, dim=-1).numpy(), sha256=np.array(sha256))


def main():
  for fixture in FIXTURES:
    path = os.path.join(REPO, 'testdata', f'golden_{fixture}.npz')
    np.savez_compressed(path, **golden(fixture))
    print(f'wrote {path} ({os.path.getsize(path):,} bytes)')


if __name__ == '__main__':
  main()
