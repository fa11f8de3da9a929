"""Golden values for enct5 from an independent implementation: Hugging Face transformers (torch).

Produces
  testdata/golden_tiny.npz          a tiny random T5.1.1 (D=16, H=4, K=8 so H*K != D, F=24, 2+2
                                    layers, V=300) with every weight stored in T5X layout, plus
                                    HF encoder outputs (unpacked), EncT5 outputs for a packed batch
                                    (HF run per example, unpacked), and T5 / 1decT5 baseline
                                    decoder outputs and vocabulary logits.
  testdata/golden_baselines.npz     T5 / 1decT5 decoder outputs and per-token losses on the
                                    weights of golden_tiny.npz, with targets of 24 to 136 tokens
                                    (causal and bidirectional buckets differ from distance 8 on,
                                    and the last causal bucket needs distance >= 112), unpacked
                                    and packed (HF run per example).
  testdata/golden_two_task.npz      a two-task EncT5 on the weights of golden_tiny.npz: per task
                                    its own task embedding and projection (3 classes;
                                    regression), a packed batch mixing both tasks, and each
                                    slot's logits from HF's modules with its own task's head.
  testdata/golden_fixture_tiny.npz  HF encoder outputs for the real T5X checkpoint
                                    ../shared/fixtures/t5x_tiny_t5_1_1_legacy.msgpack (the weights
                                    themselves are not copied; the test reads the fixture).
Every key is documented in each file's `README` entry.

NOTE: HF runs in float64 (weights are exactly the stored float32 values) and the results are
stored as float32, so the tests' 1e-5 tolerance is left to enct5's own float32 rounding: HF in
float32 is ~2e-6 from float64 here (~5e-6 with sharper attention; see random_t5x_params).
HF's T5LayerNorm still takes its RMS statistic in float32 (~1e-7 relative).

Rerun (from the repo root): python tools/make_golden.py [--goldens=tiny --goldens=fixture]
(all four by default: tiny, baselines, two_task, fixture)
Needs torch and transformers (test/tool-only, never runtime deps) and msgpack; the fixture is
found through $ENCT5_SHARED (default ../shared). Seeds are fixed, so reruns reproduce the files
up to float32 rounding of the torch build. No enct5 code is imported: the mapping T5X -> HF is
written out here (HF Linear weights are T5X kernels transposed).
"""
import hashlib
import json
import os

from absl import app, flags
import msgpack
import numpy as np
import torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerCrossAttention, T5LayerFF, T5LayerNorm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('ENCT5_SHARED', os.path.join(REPO, '..', 'shared'))
FIXTURE = os.path.join(SHARED, 'fixtures', 't5x_tiny_t5_1_1_legacy.msgpack')
OUT_TINY = os.path.join(REPO, 'testdata', 'golden_tiny.npz')
OUT_FIXTURE = os.path.join(REPO, 'testdata', 'golden_fixture_tiny.npz')
OUT_BASELINES = os.path.join(REPO, 'testdata', 'golden_baselines.npz')
OUT_TWO_TASK = os.path.join(REPO, 'testdata', 'golden_two_task.npz')

# T5X-style sizes of the random tiny model (stored as `config_json`).
TINY = dict(vocab_size=300, d_model=16, num_heads=4, head_dim=8, d_ff=24, num_layers=2,
            num_decoder_layers=2, num_buckets=32, max_distance=128, num_classes=3)
# T5X tiny fixture (SOURCES.md): emb 8, 4 heads x 3, mlp 16, 2+2 layers, vocab 32128.
FIXTURE_SIZES = dict(vocab_size=32128, d_model=8, num_heads=4, head_dim=3, d_ff=16, num_layers=2,
                     num_decoder_layers=2, num_buckets=32, max_distance=128)
DTYPE = torch.float64  # HF compute dtype; see NOTE above
L = 160  # input length: > 128 so that the last relative-position bucket (distance >= 91) is used
EOS = 1

ATTN = ('query', 'key', 'value', 'out')
HF_ATTN = dict(query='q', key='k', value='v', out='o')


# ----------------------------------------------------------------------------------------------
# Weights in T5X layout (flat dict 'a/b/c' -> float32 array).
# ----------------------------------------------------------------------------------------------
def random_t5x_params(rng, s):
  """Full T5.1.1 tree + EncT5's bos_embedding/class_projection, seeded, all non-trivial.

  Scales are chosen so every part matters yet float32 rounding stays well under 1e-5: q/k std
  0.5/sqrt(D) (attention logits of std ~1; larger logits amplify rounding), relpos tables std
  1.5, RMSNorm scales uniform in [0.5, 1.5] (never 1).
  """
  D, H, K, F, V = s['d_model'], s['num_heads'], s['head_dim'], s['d_ff'], s['vocab_size']
  C = s['num_classes'] + 1
  f32 = lambda x: np.asarray(x, np.float32)
  normal = lambda shape, std: f32(rng.normal(0.0, std, shape))
  scale = lambda: f32(rng.uniform(0.5, 1.5, (D,)))
  p = {'token_embedder/embedding': normal((V, D), 1.0)}

  def attention(prefix):
    for name in ATTN:
      shape = (H * K, D) if name == 'out' else (D, H * K)
      std = {'query': 0.5 * D ** -0.5, 'key': 0.5 * D ** -0.5, 'value': D ** -0.5,
             'out': (H * K) ** -0.5}[name]
      p[f'{prefix}/{name}/kernel'] = normal(shape, std)

  def mlp(prefix):
    p[f'{prefix}/wi_0/kernel'] = normal((D, F), D ** -0.5)
    p[f'{prefix}/wi_1/kernel'] = normal((D, F), D ** -0.5)
    p[f'{prefix}/wo/kernel'] = normal((F, D), F ** -0.5)

  p['encoder/relpos_bias/rel_embedding'] = normal((H, s['num_buckets']), 1.5)
  for i in range(s['num_layers']):
    e = f'encoder/layers_{i}'
    p[f'{e}/pre_attention_layer_norm/scale'] = scale()
    attention(f'{e}/attention')
    p[f'{e}/pre_mlp_layer_norm/scale'] = scale()
    mlp(f'{e}/mlp')
  p['encoder/encoder_norm/scale'] = scale()
  p['decoder/relpos_bias/rel_embedding'] = normal((H, s['num_buckets']), 1.5)
  for i in range(s['num_decoder_layers']):
    d = f'decoder/layers_{i}'
    p[f'{d}/pre_self_attention_layer_norm/scale'] = scale()
    attention(f'{d}/self_attention')
    p[f'{d}/pre_cross_attention_layer_norm/scale'] = scale()
    attention(f'{d}/encoder_decoder_attention')
    p[f'{d}/pre_mlp_layer_norm/scale'] = scale()
    mlp(f'{d}/mlp')
  p['decoder/decoder_norm/scale'] = scale()
  p['decoder/logits_dense/kernel'] = normal((D, V), D ** -0.5)
  p['decoder/bos_embedding'] = normal((D,), 1.0)
  p['decoder/class_projection/kernel'] = normal((D, C), D ** -0.5)
  p['decoder/class_projection/bias'] = f32(rng.uniform(-1.0, 1.0, (C,)))
  return p


def hf_config(s, num_decoder_layers=None):
  """T5.1.1 in HF terms: gated tanh-GELU, untied lm_head (no d**-0.5 output scaling), no dropout."""
  cfg = T5Config(vocab_size=s['vocab_size'], d_model=s['d_model'], num_heads=s['num_heads'],
                 d_kv=s['head_dim'], d_ff=s['d_ff'], num_layers=s['num_layers'],
                 num_decoder_layers=num_decoder_layers or s['num_decoder_layers'],
                 relative_attention_num_buckets=s['num_buckets'],
                 relative_attention_max_distance=s['max_distance'],
                 feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0,
                 layer_norm_epsilon=1e-6)
  cfg._attn_implementation = 'eager'
  assert cfg.dense_act_fn == 'gelu_new' and not cfg.scale_decoder_outputs, 'not T5.1.1 semantics'
  return cfg


def hf_state_dict(p, num_layers, num_decoder_layers, with_decoder, dtype=DTYPE):
  """T5X flat params -> HF T5 state dict (Linear weights are T5X kernels transposed)."""
  t = lambda x: torch.tensor(np.ascontiguousarray(x), dtype=dtype)
  sd = {'shared.weight': t(p['token_embedder/embedding']),
        'encoder.embed_tokens.weight': t(p['token_embedder/embedding']),
        'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight':
            t(p['encoder/relpos_bias/rel_embedding'].T),
        'encoder.final_layer_norm.weight': t(p['encoder/encoder_norm/scale'])}

  def attention(hf, t5x):
    for name in ATTN:
      sd[f'{hf}.{HF_ATTN[name]}.weight'] = t(p[f'{t5x}/{name}/kernel'].T)

  def mlp(hf, t5x):
    for name in ('wi_0', 'wi_1', 'wo'):
      sd[f'{hf}.DenseReluDense.{name}.weight'] = t(p[f'{t5x}/{name}/kernel'].T)

  for i in range(num_layers):
    hf, e = f'encoder.block.{i}.layer', f'encoder/layers_{i}'
    sd[f'{hf}.0.layer_norm.weight'] = t(p[f'{e}/pre_attention_layer_norm/scale'])
    attention(f'{hf}.0.SelfAttention', f'{e}/attention')
    sd[f'{hf}.1.layer_norm.weight'] = t(p[f'{e}/pre_mlp_layer_norm/scale'])
    mlp(f'{hf}.1', f'{e}/mlp')
  if not with_decoder:
    return sd
  sd['decoder.embed_tokens.weight'] = t(p['token_embedder/embedding'])
  sd['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = t(
      p['decoder/relpos_bias/rel_embedding'].T)
  sd['decoder.final_layer_norm.weight'] = t(p['decoder/decoder_norm/scale'])
  sd['lm_head.weight'] = t(p['decoder/logits_dense/kernel'].T)
  for i in range(num_decoder_layers):
    hf, d = f'decoder.block.{i}.layer', f'decoder/layers_{i}'
    sd[f'{hf}.0.layer_norm.weight'] = t(p[f'{d}/pre_self_attention_layer_norm/scale'])
    attention(f'{hf}.0.SelfAttention', f'{d}/self_attention')
    sd[f'{hf}.1.layer_norm.weight'] = t(p[f'{d}/pre_cross_attention_layer_norm/scale'])
    attention(f'{hf}.1.EncDecAttention', f'{d}/encoder_decoder_attention')
    sd[f'{hf}.2.layer_norm.weight'] = t(p[f'{d}/pre_mlp_layer_norm/scale'])
    mlp(f'{hf}.2', f'{d}/mlp')
  return sd


def load_hf(model, sd):
  """Loads `sd` and checks every HF tensor afterwards (HF 5.x force-ties lm_head to shared)."""
  model = model.to(next(iter(sd.values())).dtype)
  if 'lm_head.weight' in sd:  # untie first: T5.1.1 has a separate logits_dense
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(sd['lm_head.weight']))
  model.load_state_dict(sd, strict=True)
  got = model.state_dict()
  assert set(got) == set(sd), set(got) ^ set(sd)
  for k, v in sd.items():
    assert torch.equal(got[k], v), f'HF tensor {k} differs from what was loaded (tied weights?)'
  return model.eval()


# ----------------------------------------------------------------------------------------------
# HF reference computations.
# ----------------------------------------------------------------------------------------------
def hf_encode(enc_model, ids):
  """[B, L] int with 0 padding at the end -> [B, L, D] final-norm output (HF)."""
  with torch.no_grad():
    ids_t = torch.tensor(ids, dtype=torch.long)
    return enc_model(input_ids=ids_t, attention_mask=(ids_t != 0).long()).last_hidden_state.numpy()


def hf_pool(p, s, enc_out):
  """EncT5 pooling block from HF modules for ONE example: enc_out [1, n, D] -> logits [C].

  query = bos_embedding; q += CrossAttn(RMSNorm(q), enc_out) (decoder layer 0's cross-attention);
  q += FFN(RMSNorm(q)) (decoder layer 0's MLP); decoder final RMSNorm; q @ W + b.
  """
  dec_cfg = hf_config(s)
  dec_cfg.is_decoder = True
  cross = T5LayerCrossAttention(dec_cfg, layer_idx=0).to(DTYPE)
  ff = T5LayerFF(dec_cfg).to(DTYPE)
  norm = T5LayerNorm(s['d_model'], eps=1e-6).to(DTYPE)
  full = hf_state_dict(p, s['num_layers'], s['num_decoder_layers'], with_decoder=True)
  cross.load_state_dict({k[len('decoder.block.0.layer.1.'):]: v for k, v in full.items()
                         if k.startswith('decoder.block.0.layer.1.')}, strict=True)
  ff.load_state_dict({k[len('decoder.block.0.layer.2.'):]: v for k, v in full.items()
                      if k.startswith('decoder.block.0.layer.2.')}, strict=True)
  norm.load_state_dict({'weight': full['decoder.final_layer_norm.weight']}, strict=True)
  with torch.no_grad():
    q = torch.tensor(p['decoder/bos_embedding'], dtype=DTYPE)[None, None, :]  # [1, 1, D]
    q = cross.eval()(q, key_value_states=torch.tensor(enc_out, dtype=DTYPE))[0]
    q = norm(ff.eval()(q))[0, 0].numpy()  # [D]
  kernel = p['decoder/class_projection/kernel'].astype(np.float64)
  return q @ kernel + p['decoder/class_projection/bias'].astype(np.float64)


def hf_t5(p, s, num_decoder_layers, inputs, decoder_input_tokens, decoder_target_tokens):
  """Full HF T5ForConditionalGeneration -> encoder output [B, L, D], decoder output [B, Ld, D],
  vocab logits [B, Ld, V]."""
  model = load_hf(T5ForConditionalGeneration(hf_config(s, num_decoder_layers)),
                  hf_state_dict(p, s['num_layers'], num_decoder_layers, with_decoder=True))
  ids = torch.tensor(inputs, dtype=torch.long)
  dec_ids = torch.tensor(decoder_input_tokens, dtype=torch.long)
  # NOTE: T5X masks decoder self-attention with causal & (decoder_target_tokens > 0) on queries
  # and keys; HF gets causal & (key target > 0). With padding only at the end the two agree on
  # every real (target > 0) query position, the only ones stored as meaningful.
  dec_mask = torch.tensor(decoder_target_tokens > 0).long()
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=(ids != 0).long(), decoder_input_ids=dec_ids,
                decoder_attention_mask=dec_mask, use_cache=False)
    enc = out.encoder_last_hidden_state
    dec = model.decoder(input_ids=dec_ids, attention_mask=dec_mask, encoder_hidden_states=enc,
                        encoder_attention_mask=(ids != 0).long(), use_cache=False).last_hidden_state
  logits, dec = out.logits.numpy(), dec.numpy()
  np.testing.assert_allclose(logits, dec @ p['decoder/logits_dense/kernel'].astype(np.float64),
                             atol=1e-9)
  return enc.numpy(), dec, logits


# ----------------------------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------------------------
def example(rng, n, vocab_size):
  """n real tokens: random ids in [2, V) followed by EOS (id 1)."""
  return np.concatenate([rng.integers(2, vocab_size, n - 1), [EOS]]).astype(np.int32)


def unpacked_batch(rng, lengths, vocab_size, length):
  x = np.zeros((len(lengths), length), np.int32)
  for b, n in enumerate(lengths):
    x[b, :n] = example(rng, n, vocab_size)
  return x


def packed_batch(rng, rows, vocab_size, length, num_slots, num_classes):
  """rows: list of per-row example lengths -> packed arrays + the examples in order."""
  B = len(rows)
  inputs, seg, pos = (np.zeros((B, length), np.int32) for _ in range(3))
  targets = np.zeros((B, num_slots), np.int32)
  examples = []  # (row, slot, start, tokens)
  for b, lengths in enumerate(rows):
    assert sum(lengths) <= length and len(lengths) <= num_slots
    start = 0
    for j, n in enumerate(lengths):
      toks = example(rng, n, vocab_size)
      inputs[b, start:start + n] = toks
      seg[b, start:start + n] = j + 1
      pos[b, start:start + n] = np.arange(n)
      targets[b, j] = rng.integers(1, num_classes + 1)
      examples.append((b, j, start, toks))
      start += n
  return inputs, seg, pos, targets, examples


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------
README_TINY = """golden_tiny.npz: HF transformers (torch, eager attention) on a random T5.1.1,
computed in float64 from the stored float32 weights, stored as float32.
Made by tools/make_golden.py; rerun with `python tools/make_golden.py`.
Sizes in config_json (JSON string): vocab_size 300, d_model D=16, num_heads H=4, head_dim K=8
(H*K=32 != D), d_ff F=24, num_layers 2, num_decoder_layers 2, num_buckets 32, max_distance 128,
num_classes n=3 (head has C=n+1=4 outputs, class 0 = padding). L=160, B=4 unpacked, B=3 packed,
T=4 slots, Ld=6 decoder length.
param/<T5X path>: every weight in T5X layout (kernels [in, out], rel_embedding [H, 32], norm
  scales random in [0.5, 1.5], relpos tables std 1.5). Full T5.1.1 tree (both decoder layers,
  self-attention, decoder relpos, logits_dense [D, V]) plus EncT5's decoder/bos_embedding [D],
  decoder/class_projection/kernel [D, C], decoder/class_projection/bias [C] (non-zero).
inputs [4, L] int32: unpacked rows of 150, 37, 160 and 3 real tokens (ids >= 2, last real token
  EOS=1), then 0 padding. Real tokens are inputs != 0.
encoder_output [4, L, D]: HF T5EncoderModel final-norm output with attention_mask = inputs != 0.
  Meaningful only where inputs != 0; padding positions hold 0.
packed_inputs, packed_segment_ids, packed_positions [3, L] int32: packed rows (segments 1.., 0 =
  padding, positions restart at 0). Row 0: 4 examples of 30, 45, 50, 35 tokens (ends exactly at
  L, all slots used); row 1: one example of 140 tokens, 20 padding, 3 padding slots; row 2:
  examples of 20, 1, 61 tokens, 78 padding, 1 padding slot.
packed_targets [3, T] int32: class id 1..3 of segment j+1 in slot j; 0 on padding slots.
packed_slot_valid [3, T] bool: slot j's segment j+1 exists in the row.
packed_encoder_output [3, L, D]: each example run ALONE (unpacked, no padding) through HF
  T5EncoderModel, placed at its packed positions. Meaningful only where packed_segment_ids > 0;
  0 elsewhere.
packed_logits [3, T, C]: per example, HF's own modules: q = bos_embedding;
  T5LayerCrossAttention(layer_idx 0; decoder/layers_0 pre_cross_attention_layer_norm +
  encoder_decoder_attention) over that example's HF encoder output; T5LayerFF(decoder/layers_0
  pre_mlp_layer_norm + mlp); T5LayerNorm(decoder/decoder_norm); q @ class_projection/kernel +
  bias. Meaningful only where packed_slot_valid; 0 elsewhere.
decoder_target_tokens [4, Ld] int32: targets of rows of 3, 6, 1, 4 tokens (EOS-terminated),
  0 padding. decoder_input_tokens [4, Ld]: targets shifted right with BOS 0.
t5_decoder_output [4, Ld, D], t5_logits [4, Ld, V]: HF T5ForConditionalGeneration (2+2 layers,
  untied lm_head = logits_dense, no output scaling) on inputs / decoder_input_tokens: decoder
  final-norm output and vocabulary logits. Meaningful where decoder_target_tokens > 0 (decoder
  self-attention mask = causal & targets > 0, cross-attention mask = inputs != 0).
dec1_decoder_output, dec1_logits: the same with num_decoder_layers=1 (1decT5 baseline: decoder
  layers_0 weights with self-attention, decoder relpos table, decoder_norm, logits_dense).
"""

README_TWO_TASK = """golden_two_task.npz: a multi-task EncT5 (one encoder and pooling block; per task
its own task embedding and class projection), HF transformers' modules (torch, eager, computed
in float64, stored as float32) on the shared weights param/* of golden_tiny.npz (not repeated
here; made from the same seed) and the two heads below. Made by tools/make_golden.py; rerun
with `python tools/make_golden.py --goldens=two_task`.
Tasks, in task-id order: 'nli' (3 classes: C=4 outputs, class 0 = padding), 'score'
  (regression: 1 output).
head/<task>/bos_embedding [D], head/<task>/class_projection/kernel [D, C], .../bias [C]
  (non-zero): each task's query and projection, drawn apart from golden_tiny.npz's own.
packed_inputs, packed_segment_ids, packed_positions [2, L] int32: row 0 holds examples of 30,
  45, 50, 35 tokens, row 1 of 20, 1, 61 tokens (slot 3 empty); T=4 slots.
packed_task_ids [2, T] int32: the task of slot j's example (segment j+1): row 0 nli, score,
  score, nli; row 1 score, nli, score; 0 on the empty slot.
packed_slot_valid [2, T] bool: slot j's segment j+1 exists in the row.
logits_nli [2, T, 4], logits_score [2, T]: each example run ALONE through HF's T5EncoderModel,
  then golden_tiny.npz's pooling block (see its packed_logits) with its own task's
  bos_embedding, then its own task's class_projection. Meaningful only where the slot is valid
  and of that task; 0 elsewhere.
"""


def make_two_task():
  s = TINY
  p = random_t5x_params(np.random.default_rng(20211015), s)  # golden_tiny.npz's weights
  rng = np.random.default_rng(5678)
  V, D = s['vocab_size'], s['d_model']
  heads = {}
  for name, outputs in (('nli', s['num_classes'] + 1), ('score', 1)):
    heads[name] = {'bos_embedding': rng.normal(0.0, 1.0, (D,)).astype(np.float32),
                   'class_projection/kernel': rng.normal(0.0, D ** -0.5,
                                                         (D, outputs)).astype(np.float32),
                   'class_projection/bias': rng.uniform(-1.0, 1.0, (outputs,)).astype(
                       np.float32)}
  T = 4
  rows = [[30, 45, 50, 35], [20, 1, 61]]
  task_of = [['nli', 'score', 'score', 'nli'], ['score', 'nli', 'score']]
  p_inputs, p_seg, p_pos, _, examples = packed_batch(rng, rows, V, L, T, s['num_classes'])
  enc_model = load_hf(T5EncoderModel(hf_config(s)),
                      hf_state_dict(p, s['num_layers'], 0, with_decoder=False))
  task_ids = np.zeros((len(rows), T), np.int32)
  valid = np.zeros((len(rows), T), bool)
  logits = {'nli': np.zeros((len(rows), T, s['num_classes'] + 1), np.float32),
            'score': np.zeros((len(rows), T), np.float32)}
  for b, j, _, toks in examples:
    name = task_of[b][j]
    head = {f'decoder/{k}': v for k, v in heads[name].items()}
    out = hf_pool({**p, **head}, s, hf_encode(enc_model, toks[None, :]))
    logits[name][b, j] = out if name == 'nli' else out[0]
    task_ids[b, j] = list(heads).index(name)
    valid[b, j] = True
  out = {f'head/{name}/{k}': v for name, head in heads.items() for k, v in head.items()}
  out.update(README=np.array(README_TWO_TASK), packed_inputs=p_inputs, packed_segment_ids=p_seg,
             packed_positions=p_pos, packed_task_ids=task_ids, packed_slot_valid=valid,
             logits_nli=logits['nli'], logits_score=logits['score'])
  np.savez_compressed(OUT_TWO_TASK, **out)


README_FIXTURE = """golden_fixture_tiny.npz: HF transformers T5EncoderModel (torch, eager, computed
in float64, stored as float32)
loaded with the real T5X checkpoint fixtures/t5x_tiny_t5_1_1_legacy.msgpack (sha256 in
fixture_sha256; weights NOT stored here: the test reads the fixture). Made by
tools/make_golden.py; rerun with `python tools/make_golden.py`.
config_json: vocab_size 32128, d_model 8, num_heads 4, head_dim 3, d_ff 16, num_layers 2,
  num_decoder_layers 2, num_buckets 32, max_distance 128.
inputs [3, 160] int32: unpacked rows of 140, 57 and 5 real tokens (ids in [2, 32128), last real
  token EOS=1), 0 padding.
encoder_output [3, 160, 8]: HF final-norm encoder output with attention_mask = inputs != 0;
  meaningful only where inputs != 0 (padding positions hold 0).
"""


README_BASELINES = """golden_baselines.npz: the T5 and 1decT5 baselines with long targets, HF
transformers T5ForConditionalGeneration (torch, eager, computed in float64, stored as float32)
on the weights param/* of golden_tiny.npz (not repeated here; made from the same seed and
checked equal to that file). Made by tools/make_golden.py; rerun with
`python tools/make_golden.py baselines`.
Why long targets: the decoder's causal relative-position buckets and the encoder's
bidirectional ones agree only below distance 8; the last causal bucket (31) starts at distance
112, and distances past max_distance 128 share it. Targets here reach 136 tokens.
Lengths: L=48 input tokens, Ld=136 decoder tokens; vocab 300 (ids >= 2, EOS=1 last, 0 padding).
inputs [3, L] int32: rows of 40, 13 and 29 real tokens.
decoder_target_tokens [3, Ld] int32: targets of 136 (the whole row), 24 and 57 tokens;
  decoder_input_tokens: shifted right with BOS 0.
<m>_decoder_output [3, Ld, D], m = t5 (2 decoder layers) or dec1 (1decT5: decoder layers_0
  only): HF decoder final-norm output (self-attention mask causal & target > 0,
  cross-attention mask inputs != 0). <m>_log_z [3, Ld]: logsumexp of HF's vocabulary logits
  (untied lm_head = logits_dense); <m>_target_logit [3, Ld]: the logit of the target token.
  Meaningful where decoder_target_tokens > 0; 0 elsewhere.
packed_inputs, packed_inputs_segment_ids [2, L] int32: row 0 holds 3 examples of 20, 9 and 15
  input tokens (4 padding); row 1 one example of 30 (18 padding).
packed_decoder_target_tokens, packed_decoder_input_tokens, packed_decoder_segment_ids [2, Ld]:
  row 0 the three targets of 70, 21 and 40 tokens (segments 1, 2, 3; 5 padding), row 1 one
  target of 136 tokens; decoder inputs restart with BOS 0 in each segment.
packed_<m>_decoder_output [2, Ld, D], packed_<m>_log_z, packed_<m>_target_logit [2, Ld]: each
  example run ALONE (its own inputs and targets, no padding) through HF, placed at its packed
  positions; 0 on padding.
"""


def make_tiny():
  s = TINY
  p = random_t5x_params(np.random.default_rng(20211015), s)
  rng = np.random.default_rng(1234)
  V, D = s['vocab_size'], s['d_model']

  # Unpacked encoder golden.
  inputs = unpacked_batch(rng, [150, 37, 160, 3], V, L)
  enc_model = load_hf(T5EncoderModel(hf_config(s)),
                      hf_state_dict(p, s['num_layers'], 0, with_decoder=False))
  encoder_output = hf_encode(enc_model, inputs) * (inputs != 0)[..., None]

  # Packed EncT5 golden: every example run on its own (own row, no padding, positions from 0).
  T = 4
  rows = [[30, 45, 50, 35], [140], [20, 1, 61]]
  p_inputs, p_seg, p_pos, p_targets, examples = packed_batch(rng, rows, V, L, T, s['num_classes'])
  p_enc = np.zeros((len(rows), L, D), np.float32)
  p_logits = np.zeros((len(rows), T, s['num_classes'] + 1), np.float32)
  p_valid = np.zeros((len(rows), T), bool)
  for b, j, start, toks in examples:
    enc = hf_encode(enc_model, toks[None, :])  # [1, n, D]
    p_enc[b, start:start + len(toks)] = enc[0]
    p_logits[b, j] = hf_pool(p, s, enc)
    p_valid[b, j] = True
  assert (p_valid == (p_targets > 0)).all()

  # Baselines: full T5 and 1decT5 on the unpacked batch.
  Ld = 6
  targets = unpacked_batch(rng, [3, 6, 1, 4], V, Ld)
  dec_inputs = np.zeros_like(targets)
  dec_inputs[:, 1:] = targets[:, :-1]  # BOS = 0
  t5_enc, t5_dec, t5_logits = hf_t5(p, s, 2, inputs, dec_inputs, targets)
  d1_enc, d1_dec, d1_logits = hf_t5(p, s, 1, inputs, dec_inputs, targets)
  for enc in (t5_enc, d1_enc):  # the full models' encoders are T5EncoderModel's
    np.testing.assert_allclose(enc[inputs != 0], encoder_output[inputs != 0], atol=1e-6)
  real = (targets > 0)[..., None]

  out = {f'param/{k}': v for k, v in p.items()}
  out.update(
      config_json=np.array(json.dumps(s)), README=np.array(README_TINY),
      inputs=inputs, encoder_output=encoder_output.astype(np.float32),
      packed_inputs=p_inputs, packed_segment_ids=p_seg, packed_positions=p_pos,
      packed_targets=p_targets, packed_slot_valid=p_valid,
      packed_encoder_output=p_enc, packed_logits=p_logits,
      decoder_input_tokens=dec_inputs, decoder_target_tokens=targets,
      t5_decoder_output=(t5_dec * real).astype(np.float32),
      t5_logits=(t5_logits * real).astype(np.float32),
      dec1_decoder_output=(d1_dec * real).astype(np.float32),
      dec1_logits=(d1_logits * real).astype(np.float32))
  np.savez_compressed(OUT_TINY, **out)
  return p, s, inputs, encoder_output


def hf_baseline(p, s, num_decoder_layers, inputs, targets):
  """HF decoder output [B, Ld, D], log Z and target logit [B, Ld] (float64) for targets [B, Ld]
  (padding at the end) and the decoder inputs they imply (shifted right, BOS 0)."""
  dec_inputs = np.zeros_like(targets)
  dec_inputs[:, 1:] = targets[:, :-1]
  _, dec, logits = hf_t5(p, s, num_decoder_layers, inputs, dec_inputs, targets)
  log_z = torch.logsumexp(torch.tensor(logits), dim=-1).numpy()
  target_logit = np.take_along_axis(logits, targets[..., None].astype(np.int64), -1)[..., 0]
  return dec, log_z, target_logit


def make_baselines():
  s = TINY
  p = random_t5x_params(np.random.default_rng(20211015), s)
  with np.load(OUT_TINY) as z:  # the test reads the weights from golden_tiny.npz
    for k, v in p.items():
      assert np.array_equal(z[f'param/{k}'], v), f'{OUT_TINY} has other weights ({k})'
  rng = np.random.default_rng(5678)
  V, D, L_in, Ld = s['vocab_size'], s['d_model'], 48, 136
  models = (('t5', 2), ('dec1', 1))

  # Unpacked rows.
  inputs = unpacked_batch(rng, [40, 13, 29], V, L_in)
  targets = unpacked_batch(rng, [136, 24, 57], V, Ld)
  dec_inputs = np.zeros_like(targets)
  dec_inputs[:, 1:] = targets[:, :-1]
  real = targets > 0
  out = dict(README=np.array(README_BASELINES), config_json=np.array(json.dumps(s)),
             inputs=inputs, decoder_input_tokens=dec_inputs, decoder_target_tokens=targets)
  for name, layers in models:
    dec, log_z, target_logit = hf_baseline(p, s, layers, inputs, targets)
    out[f'{name}_decoder_output'] = (dec * real[..., None]).astype(np.float32)
    out[f'{name}_log_z'] = (log_z * real).astype(np.float32)
    out[f'{name}_target_logit'] = (target_logit * real).astype(np.float32)

  # Packed rows: inputs and targets packed side by side; each example run alone through HF.
  rows = [[(20, 70), (9, 21), (15, 40)], [(30, 136)]]
  B = len(rows)
  packed = {k: np.zeros((B, L_in), np.int32) for k in ('inputs', 'inputs_segment_ids')}
  packed.update({k: np.zeros((B, Ld), np.int32) for k in (
      'decoder_target_tokens', 'decoder_input_tokens', 'decoder_segment_ids')})
  results = {f'{name}_{k}': np.zeros(shape, np.float32) for name, _ in models
             for k, shape in (('decoder_output', (B, Ld, D)), ('log_z', (B, Ld)),
                              ('target_logit', (B, Ld)))}
  for b, row in enumerate(rows):
    start, target_start = 0, 0
    for j, (n, m) in enumerate(row):
      x, t = example(rng, n, V), example(rng, m, V)
      packed['inputs'][b, start:start + n] = x
      packed['inputs_segment_ids'][b, start:start + n] = j + 1
      packed['decoder_target_tokens'][b, target_start:target_start + m] = t
      packed['decoder_input_tokens'][b, target_start + 1:target_start + m] = t[:-1]
      packed['decoder_segment_ids'][b, target_start:target_start + m] = j + 1
      for name, layers in models:
        dec, log_z, target_logit = hf_baseline(p, s, layers, x[None], t[None])
        results[f'{name}_decoder_output'][b, target_start:target_start + m] = dec[0]
        results[f'{name}_log_z'][b, target_start:target_start + m] = log_z[0]
        results[f'{name}_target_logit'][b, target_start:target_start + m] = target_logit[0]
      start, target_start = start + n, target_start + m
  out.update({f'packed_{k}': v for k, v in packed.items()})
  out.update({f'packed_{k}': v for k, v in results.items()})
  np.savez_compressed(OUT_BASELINES, **out)


def read_legacy_msgpack(path):
  """Legacy T5X checkpoint (flax to_bytes): ext type 1 = [shape, dtype, bytes], 3 = scalar."""
  def ext_hook(code, data):
    if code in (1, 3):
      shape, dtype, buf = msgpack.unpackb(data)
      return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
    raise ValueError(f'{path}: unexpected msgpack ext type {code}')
  with open(path, 'rb') as f:
    return msgpack.unpackb(f.read(), ext_hook=ext_hook, strict_map_key=False)


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else k
    out.update(flatten(v, path) if isinstance(v, dict) else {path: v})
  return out


def make_fixture():
  if not os.path.exists(FIXTURE):
    raise SystemExit(f'fixture not found at {FIXTURE} (set ENCT5_SHARED)')
  with open(FIXTURE, 'rb') as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  p = flatten(read_legacy_msgpack(FIXTURE)['optimizer']['target'])
  s = FIXTURE_SIZES
  enc_model = load_hf(T5EncoderModel(hf_config(s)),
                      hf_state_dict(p, s['num_layers'], 0, with_decoder=False))
  inputs = unpacked_batch(np.random.default_rng(4321), [140, 57, 5], s['vocab_size'], L)
  encoder_output = hf_encode(enc_model, inputs) * (inputs != 0)[..., None]
  np.savez_compressed(OUT_FIXTURE, config_json=np.array(json.dumps(s)),
                      README=np.array(README_FIXTURE), fixture_sha256=np.array(sha),
                      inputs=inputs, encoder_output=encoder_output.astype(np.float32))
  return encoder_output


def float32_gap(p, s, inputs, encoder_output):
  """How far HF in float32 is from the float64 golden (see NOTE in the module docstring)."""
  enc32 = load_hf(T5EncoderModel(hf_config(s)),
                  hf_state_dict(p, s['num_layers'], 0, False, dtype=torch.float32))
  real = inputs != 0
  return np.abs(hf_encode(enc32, inputs)[real] - encoder_output[real]).max()


def main(argv):
  del argv
  which = flags.FLAGS.goldens
  torch.manual_seed(0)
  os.makedirs(os.path.dirname(OUT_TINY), exist_ok=True)
  if 'tiny' in which:
    p, s, inputs, encoder_output = make_tiny()
    print(f'wrote {OUT_TINY} ({os.path.getsize(OUT_TINY)} bytes); HF float32 encoder vs '
          f'golden: max |diff| {float32_gap(p, s, inputs, encoder_output):.2e}')
  if 'baselines' in which:
    make_baselines()
    print(f'wrote {OUT_BASELINES} ({os.path.getsize(OUT_BASELINES)} bytes)')
  if 'two_task' in which:
    make_two_task()
    print(f'wrote {OUT_TWO_TASK} ({os.path.getsize(OUT_TWO_TASK)} bytes)')
  if 'fixture' in which:
    make_fixture()
    print(f'wrote {OUT_FIXTURE} ({os.path.getsize(OUT_FIXTURE)} bytes)')


if __name__ == '__main__':
  flags.DEFINE_multi_enum('goldens', ['tiny', 'baselines', 'two_task', 'fixture'],
                          ['tiny', 'baselines', 'two_task', 'fixture'],
                          'The golden files to write.')
  app.run(main)
