"""Hugging Face checkpoints of T5.1.1, mT5 and ByT5, read lazily as if they were T5X's.

A model directory written by transformers' `save_pretrained` holds

  config.json                      the architecture (d_model, num_heads, d_kv, d_ff, ...)
  model.safetensors                every tensor, by Hugging Face's module names, or shards
  model-0000k-of-0000n.safetensors   with model.safetensors.index.json, whose `weight_map`
                                     names the shard of each tensor

`read_index` turns it into the tree that `load_ckpt.read_index` gives for a T5X checkpoint,
{'target': params}, under T5X's names (`NAME_MAP`), each leaf a `LazyTensor`: only its shape is
known until it is used, so `load_ckpt.load_params` reads just the tensors the model needs (EncT5
never reads `lm_head` nor the decoder past its first layer) and a sharded load reads just each
device's slice. No torch or transformers: the `safetensors` package's numpy API.
"""
import json
import os
import re

import ml_dtypes  # noqa: F401  (registers numpy's 'bfloat16', a safetensors dtype)
import numpy as np
from safetensors import safe_open

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
TORCH_WEIGHTS_FILE = 'pytorch_model.bin'

# T5X name (ours) <-> Hugging Face name, one row per kind of parameter. {i}: the layer; {proj}:
# an attention projection (T5X query/key/value/out = HF q/k/v/o); {mlp}: wi_0, wi_1 or wo.
# HF keeps one relative-position table per stack, in block 0 (T5X: `relpos_bias`).
NAME_MAP = (
    ('token_embedder/embedding', 'shared.weight'),
    ('encoder/relpos_bias/rel_embedding',
     'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'),
    ('encoder/layers_{i}/pre_attention_layer_norm/scale',
     'encoder.block.{i}.layer.0.layer_norm.weight'),
    ('encoder/layers_{i}/attention/{proj}/kernel',
     'encoder.block.{i}.layer.0.SelfAttention.{proj}.weight'),
    ('encoder/layers_{i}/pre_mlp_layer_norm/scale',
     'encoder.block.{i}.layer.1.layer_norm.weight'),
    ('encoder/layers_{i}/mlp/{mlp}/kernel',
     'encoder.block.{i}.layer.1.DenseReluDense.{mlp}.weight'),
    ('encoder/encoder_norm/scale', 'encoder.final_layer_norm.weight'),
    ('decoder/relpos_bias/rel_embedding',
     'decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'),
    ('decoder/layers_{i}/pre_self_attention_layer_norm/scale',
     'decoder.block.{i}.layer.0.layer_norm.weight'),
    ('decoder/layers_{i}/self_attention/{proj}/kernel',
     'decoder.block.{i}.layer.0.SelfAttention.{proj}.weight'),
    ('decoder/layers_{i}/pre_cross_attention_layer_norm/scale',
     'decoder.block.{i}.layer.1.layer_norm.weight'),
    ('decoder/layers_{i}/encoder_decoder_attention/{proj}/kernel',
     'decoder.block.{i}.layer.1.EncDecAttention.{proj}.weight'),
    ('decoder/layers_{i}/pre_mlp_layer_norm/scale',
     'decoder.block.{i}.layer.2.layer_norm.weight'),
    ('decoder/layers_{i}/mlp/{mlp}/kernel',
     'decoder.block.{i}.layer.2.DenseReluDense.{mlp}.weight'),
    ('decoder/decoder_norm/scale', 'decoder.final_layer_norm.weight'),
    ('decoder/logits_dense/kernel', 'lm_head.weight'),
)
_PROJ = {'query': 'q', 'key': 'k', 'value': 'v', 'out': 'o'}  # T5X -> HF
# The stacks' copies of `shared.weight` (T5EncoderModel saves one): the same tensor, not read.
TIED_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


class HFCheckpointError(ValueError):
  """A Hugging Face directory that is not a T5.1.1-family checkpoint we can read."""


def _pattern(template, column):
  """A template of NAME_MAP -> regex with groups i, proj, mlp (`column`: 0 T5X, 1 HF)."""
  proj = '|'.join(_PROJ if column == 0 else _PROJ.values())
  fields = {'i': r'(?P<i>\d+)', 'proj': f'(?P<proj>{proj})', 'mlp': '(?P<mlp>wi_0|wi_1|wo)'}
  parts = re.split(r'\{(\w+)\}', template)  # literal, field, literal, ...
  return re.compile(''.join(re.escape(part) if k % 2 == 0 else fields[part]
                            for k, part in enumerate(parts)))


def _rename(name, source, target):
  """`name` in column `source` of NAME_MAP -> its name in column `target`, or None."""
  for row in NAME_MAP:
    match = _pattern(row[source], source).fullmatch(name)
    if match:
      fields = match.groupdict()
      if 'proj' in fields:
        to_hf = _PROJ if target == 1 else {v: k for k, v in _PROJ.items()}
        fields['proj'] = to_hf[fields['proj']]
      return row[target].format(**fields)
  return None


def hf_name(name):
  """T5X name -> HF name: 'encoder/layers_0/attention/query/kernel' ->
  'encoder.block.0.layer.0.SelfAttention.q.weight'; None if it has none."""
  return _rename(name, 0, 1)


def t5x_name(name):
  """HF name -> T5X name, the inverse of `hf_name`; None for a name not in NAME_MAP."""
  return _rename(name, 1, 0)


def is_transposed(name):
  """Whether HF stores the T5X parameter `name` transposed: every matrix but the embedding.

  torch's nn.Linear keeps [out, in] where T5X keeps kernels [in, out] (`lm_head` [V, D] is
  T5X's `logits_dense` [D, V]), and HF's relative-position table is [buckets, H], T5X's [H,
  buckets]. The token embedding is [V, D] in both.
  """
  return name != 'token_embedder/embedding' and not name.endswith('/scale')


class LazyTensor:
  """One tensor of a safetensors file, in T5X's layout, read only when used.

  `np.asarray(t)` reads all of it and `t[index]` only that slice (one device's shard), both
  straight from the file (memory-mapped). `shape` is known without reading.
  """

  def __init__(self, file, hf_name, shape, transposed):
    self.file, self.hf_name, self.transposed = file, hf_name, transposed
    self.shape = tuple(reversed(shape)) if transposed else tuple(shape)

  def __getitem__(self, index):
    index = index if isinstance(index, tuple) else (index,)
    index += (slice(None),) * (len(self.shape) - len(index))
    with safe_open(self.file, framework='np') as f:
      part = f.get_slice(self.hf_name)[index[::-1] if self.transposed else index]
    return np.array(part.T if self.transposed else part)  # a copy: the file is closed

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[()], dtype)

  def __repr__(self):
    return f'LazyTensor({self.hf_name!r} of {self.file}, shape {self.shape})'


def is_hf_checkpoint(path):
  """A local directory with `config.json` and weights (Hugging Face's layout)?"""
  return (os.path.isfile(os.path.join(path, CONFIG_FILE))
          and any(os.path.isfile(os.path.join(path, name))
                  for name in (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, TORCH_WEIGHTS_FILE)))


def read_config(path):
  """config.json, checked to describe a T5.1.1-family model (T5.1.1, mT5, ByT5).

  NOTE: read here, not with transformers' T5Config, whose defaults are original T5's (ReLU,
  a tied `lm_head`) and which in transformers 5.x sets `tie_word_embeddings=True` whatever
  the file says.
  """
  with open(os.path.join(path, CONFIG_FILE)) as f:
    config = json.load(f)
  expected = {  # key: (T5.1.1's value, HF's default when the key is absent)
      'feed_forward_proj': ('gated-gelu', 'relu'),
      'tie_word_embeddings': (False, True),
      'relative_attention_num_buckets': (32, 32),
      'relative_attention_max_distance': (128, 128),
      'layer_norm_epsilon': (1e-6, 1e-6),
  }
  wrong = [f'{key}={config.get(key, default)!r} (T5.1.1: {value!r})'
           for key, (value, default) in expected.items() if config.get(key, default) != value]
  if config.get('model_type') not in ('t5', 'mt5'):  # ByT5's is 't5'; mT5's architecture too
    wrong.append(f"model_type={config.get('model_type')!r} (T5.1.1: 't5' or 'mt5')")
  if wrong:
    tied = ('; a tied lm_head and ReLU are the original T5 (T5.1.0), which EncT5 does not '
            'build on' if config.get('tie_word_embeddings', True) else '')
    raise HFCheckpointError(f'{path}/{CONFIG_FILE} is not a T5.1.1-family model: '
                            + ', '.join(wrong) + tied)
  return config


def _weight_files(path):
  """{HF tensor name: safetensors file}, from the index of a sharded checkpoint or the file."""
  index = os.path.join(path, WEIGHTS_INDEX_FILE)
  if os.path.isfile(index):
    with open(index) as f:
      return {name: os.path.join(path, file) for name, file in json.load(f)['weight_map'].items()}
  file = os.path.join(path, WEIGHTS_FILE)
  if not os.path.isfile(file):
    raise HFCheckpointError(f'{path} has only {TORCH_WEIGHTS_FILE}, which needs torch to read; '
                            f'convert it to {WEIGHTS_FILE} (save_pretrained writes safetensors)')
  with safe_open(file, framework='np') as f:
    return {name: file for name in f.keys()}


def read_index(path):
  """{'target': params} under T5X's names, each leaf a LazyTensor: nothing is read but the
  safetensors headers. Every tensor must be in NAME_MAP (or a tied copy of the embedding)."""
  read_config(path)
  files = _weight_files(path)
  shapes = {}
  for file in sorted(set(files.values())):
    with safe_open(file, framework='np') as f:
      shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})
  target = {}
  for name, file in sorted(files.items()):
    if name in TIED_COPIES:
      continue
    ours = t5x_name(name)
    if ours is None:
      raise HFCheckpointError(f'{file}: tensor {name!r} is not part of a T5.1.1 model')
    node = target
    *parents, leaf = ours.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = LazyTensor(file, name, shapes[name], is_transposed(ours))
  return {'target': target}


def vocabulary(path):
  """The vocabulary a Hugging Face checkpoint names: 'byt5' (`vocabularies.load_vocab`'s name
  for ByT5's bytes) for `tokenizer_class: ByT5Tokenizer`, else its SentencePiece model
  `spiece.model` if the directory has one, else None."""
  if read_config(path).get('tokenizer_class') == 'ByT5Tokenizer':
    return 'byt5'
  spiece = os.path.join(path, 'spiece.model')
  return spiece if os.path.isfile(spiece) else None
