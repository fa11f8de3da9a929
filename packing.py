"""Packing: several GLUE examples share one fixed-shape input row (EncT5 paper §3, §4.1).

A packed row carries `inputs`, `inputs_segment_ids` (1, 2, ... per example, 0 = padding),
`inputs_positions` (restarting at 0 per example) and `targets`: slot j holds the label of
segment j+1 and 0, the padding class, where the row has fewer examples.
"""
import jax.numpy as jnp


def self_attention_mask(segment_ids):
  """Tokens attend only to tokens of their own example: [B, L] -> [B, 1, L, L] bool.

  NOTE: as T5X `make_attention_mask(inputs > 0, inputs > 0) & make_attention_mask(
  segment_ids, segment_ids, jnp.equal)`: padding (segment 0) neither attends nor is attended.
  """
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, L, L]
  real = (segment_ids[:, :, None] > 0) & (segment_ids[:, None, :] > 0)
  return (same_segment & real)[:, None, :, :]


def pooling_mask(segment_ids, num_slots):
  """Query slot j attends only to the tokens of segment j+1: [B, L] -> [B, 1, T, L] bool."""
  slot_segment = jnp.arange(1, num_slots + 1, dtype=segment_ids.dtype)  # [T]
  return (slot_segment[None, :, None] == segment_ids[:, None, :])[:, None, :, :]
