"""Attention as two matrix products and a softmax, for reading documents both ways in bf16 on a CPU.

On AMD processors with AVX-512-BF16, PyTorch's CPU flash-attention kernel (what SDPA runs there) is
slower than the same math written as `softmax(q k^T) v` with the score matrix in memory when the
Tagger reads real documents one at a time in bf16: the 104 GROBID validation headers 10% faster with
this, at the same quality over four seeds (docs/performance.md). On Intel processors with AMX the
flash kernel is the faster one, so a probe decides (`matmul_faster_on_cpu`). In float32, for causal
attention and on GPUs the flash kernel is as fast or faster. In training, one layer's bf16 backward
pass is 1.2-2.5x faster with it in isolation (benchmarks/attention.py) and 8-step benchmarks were
1.5x faster, but two whole runs were not
(2,409-2,462 s against 2,161-2,167 s with SDPA): page faults of the score matrices that glibc maps
afresh in every layer (keep_freed_memory). Training keeps SDPA unless a run asks for this kernel
(the tag objective's `attention_kernel`), with glibc's allocator set to keep freed memory. The math is transformers'
eager attention with the key/value heads shared without copies; unlike eager, the scores stay in
bf16 (the softmax still sums in float32 inside the kernel) and no float32 copy of them is written.
"""

from __future__ import annotations

import ctypes
import platform
import time
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from metatune.faults import available_memory, resident_memory

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
        # in place: no second score matrix (the product's backward pass does not need its output)
        scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, groups, -1, keys), value).view(batch, heads, queries, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, matmul_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks SDPA gets (None without padding)


def use_where_faster(model, bf16: bool, device_type: str) -> bool:
    """Switches a model that reads both ways with SDPA to matmul attention when it runs in bf16 on a
    CPU (the Tagger, reading documents one at a time) and the probe finds matmul attention faster
    there; says whether it did."""
    if not bf16 or device_type != "cpu" or model.config._attn_implementation != "sdpa":
        return False
    config = model.config
    heads = config.num_attention_heads
    key_value_heads = getattr(config, "num_key_value_heads", None) or heads
    shape = (heads, key_value_heads, getattr(config, "head_dim", None) or config.hidden_size // heads)
    if not matmul_faster_on_cpu(*shape):
        return False
    model.set_attn_implementation(NAME)
    return True


PROBE_TOKENS = 512  # a paper header's length (the GROBID headers average ~530 tokens)


@lru_cache(maxsize=8)
def matmul_faster_on_cpu(heads: int, key_value_heads: int, head_dim: int, repeats: int = 5) -> bool:
    """Whether one bidirectional bf16 attention call of this shape over PROBE_TOKENS tokens is faster as
    matmul attention than with SDPA on this CPU (best of `repeats` each, alternating, with freed memory
    kept as the Tagger reads). Which one wins depends on the CPU, not on its flags alone: SDPA's flash
    kernel runs its bf16 products through a library that is fast on some processors and converts to
    float32 on others (docs/performance.md): matmul attention was ~10% faster for the Tagger on AMD
    processors with AVX-512-BF16; with AMX, SDPA was 1.4-1.7x faster in this probe and 1.06-1.11x for
    the Tagger. Measured once per process and shape, in ~30 ms where bf16 is fast."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (
        torch.randn(1, n, PROBE_TOKENS, head_dim, generator=generator, dtype=torch.bfloat16)
        for n in (heads, key_value_heads, key_value_heads)
    )
    module = SimpleNamespace(is_causal=False, training=False)
    ways = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=False, enable_gqa=key_value_heads != heads
        ),
        NAME: lambda: matmul_attention(module, query, key, value, None),
    }
    best = dict.fromkeys(ways, float("inf"))
    with torch.inference_mode(), keep_freed_memory():
        for call in ways.values():  # warm-up: kernel selection, the first allocations
            call()
        for _ in range(repeats):
            for way, call in ways.items():
                start = time.perf_counter()
                call()
                best[way] = min(best[way], time.perf_counter() - start)
    return best[NAME] < best["sdpa"]


# glibc's mallopt parameters, and their defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
MARGIN = 1.2  # over the largest share of its estimated need that a pass was measured to take


@contextmanager
def keep_freed_memory(active: bool = True, model=None, need=None):
    """While active, glibc's allocator serves every allocation from its heap and keeps what is freed
    there (no `mmap` per allocation, no automatic trimming), as `MALLOC_MMAP_MAX_=0` and a large
    `MALLOC_TRIM_THRESHOLD_` would from the start; after, the defaults are restored and the memory kept
    goes back to the system.

    A training step with matmul attention allocates and frees score matrices larger than glibc's mmap
    threshold in every layer; mapped afresh each time, their pages are faulted in again: 20.9M page
    faults in 16 steps, 3.8-4.1M without mmap, and 1.14-1.28x SDPA's speed instead of 1.0x. But the
    kept heap fragments: a batch of a new shape may find no freed block that holds its tensors and
    take all it needs afresh (two whole runs of the GROBID config on a 24 GiB machine grew to 24 GB
    and were killed for memory: docs/performance.md). So given a `model` and its `need`, a hook before each of its
    forward passes gives the kept memory back (`malloc_trim`, which also releases the free blocks
    inside the heap) whenever the machine has less memory available than the pass may take afresh:
    `need(batch, length)` bytes for its input's shape (`input_ids`). The estimate is conservative
    (18.7 GB for the GROBID config's longest batch, which took 12.5), and every trim it forces costs
    the next pass its page faults; so the pass after a trim, which takes its whole working set afresh
    from an emptied heap, measures how much of the estimate a pass really takes, and from then on the
    rule asks for that share of it (the largest seen, with MARGIN to spare). A no-op elsewhere than on glibc."""
    libc = ctypes.CDLL("libc.so.6") if active and platform.libc_ver()[0] == "glibc" else None
    if libc is None:
        yield
        return
    largest = 0.0  # the largest share of its estimate that a pass after a trim took; 0 until one did
    after_trim = None  # (resident memory just after the last trim, what that pass was estimated to need)

    def trim_when_short(module, args, kwargs):
        nonlocal largest, after_trim
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        if after_trim is not None:
            resident, estimate = after_trim
            now = resident_memory()
            if now is not None and resident is not None and now > resident and estimate > 0:
                largest = max(largest, (now - resident) / estimate)
            after_trim = None
        estimate = need(*ids.shape[:2])
        available = available_memory()
        if available is not None and available < (MARGIN * largest or 1.0) * estimate:
            libc.malloc_trim(0)
            after_trim = (resident_memory(), estimate)

    hook = None
    if need is not None:  # on the backbone: the tagger's forward calls it, and so does the adaptation stage
        hook = getattr(model, "base_model", model).register_forward_pre_hook(trim_when_short, with_kwargs=True)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # an int: 2 GiB of free heap top kept
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # what was kept goes back to the system


def give_back_freed_memory() -> None:
    """Returns to the system what glibc's allocator keeps of freed memory (a no-op elsewhere). A stage
    that ends (the tagger's adaptation stage) can leave gigabytes in the heap, which the next one's
    memory check would count as taken."""
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def training_memory(model, device_type: str, need):
    """keep_freed_memory, within the machine's memory, while `model` trains with matmul attention on a
    CPU; `need(batch, length)`: the bytes a training pass over a batch of that shape may take."""
    return keep_freed_memory(model.config._attn_implementation == NAME and device_type == "cpu", model, need)
