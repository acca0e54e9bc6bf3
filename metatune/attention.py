"""Attention as two matrix products and a softmax, for models that read both ways in bf16 on a CPU.

PyTorch's CPU flash-attention kernel (what SDPA runs there) is slow backwards in bf16: one layer of
SmolLM2-135M over a 530-token document, forward and backward, takes 1.8x as long as the same math
written as `softmax(q k^T) v` with the score matrix in memory (benchmarks/attention.py; 1.2-2.5x
from 256 to 1,536 tokens on AVX-512-BF16), and reading the GROBID validation headers one at a time
in bf16 was 10% slower with it (docs/performance.md). In float32, for causal attention and on GPUs
the flash kernel is as fast or faster, so this is chosen only for bf16 on a CPU reading both ways
(`use_where_faster`). The math is transformers' eager attention with the key/value heads shared
without copies; unlike eager, the scores stay in bf16 under autocast (the softmax still sums in
float32 inside the kernel) and no float32 copy of them is written.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "metatune_matmul"


def matmul_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None, **kwargs):
    """transformers' attention interface: query (batch, heads, queries, dim), key and value (batch,
    key/value heads, keys, dim), a boolean mask (True: attend) or None → (batch, queries, heads, dim)."""
    batch, heads, queries, dim = query.shape
    groups, keys = key.shape[1], key.shape[2]
    scale = dim**-0.5 if scaling is None else scaling
    # the query heads that share a key/value head side by side: one product per key/value head
    scores = torch.matmul((query * scale).reshape(batch, groups, -1, dim), key.transpose(2, 3))
    scores = scores.view(batch, heads, queries, keys)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if attention_mask is None and is_causal and queries > 1:
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=scores.device).tril(keys - queries)
    if attention_mask is not None:  # the most negative finite value: a row with nothing to see is no NaN
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, groups, -1, keys), value).view(batch, heads, queries, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, matmul_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks SDPA gets (None without padding)


def use_where_faster(model, bf16: bool, device_type: str) -> bool:
    """Switches a model that reads both ways with SDPA to matmul attention when it runs in bf16 on a
    CPU (training, or reading documents one at a time); says whether it did."""
    if not bf16 or device_type != "cpu" or model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
