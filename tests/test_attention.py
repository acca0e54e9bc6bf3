"""metatune.attention: matmul attention is SDPA's math, and is picked only where it is faster."""

import platform
from pathlib import Path

import pytest
import torch

from metatune import attention
from metatune.models import read_both_ways, read_first_layers_forward
from metatune.objectives.tag.labels import TagCollator, TagScheme, tag_loss_for

DOCS = [[1, *range(10, 40)], [1, *range(50, 70)]]
LABELS = [[3, *([1, 2, 0] * 10)], [3, *([0, 1, 2, 2] * 5)]]


def tiny(path, implementation, dtype=torch.float32, reading=None):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)  # the same head on every copy
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=4, dtype=dtype, attn_implementation=implementation
    )
    if reading is not None:  # read both ways, the first `reading` layers forward
        read_both_ways(model)
        read_first_layers_forward(model, reading)
    return model


def loss_and_grads(model, batch):
    model.zero_grad()
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = tag_loss_for(TagScheme(("title",), ("article",)), 32.0)({"logits": logits}, batch["labels"])
    loss.backward()
    return logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("reading", [None, 0, 1], ids=["causal", "both-ways", "first-layer-forward"])
def test_matmul_attention_gives_sdpas_logits_loss_and_gradients(tiny_llama, reading):
    """float32, key/value heads shared (4 query heads, 2 key/value heads), alone (no mask) and in a
    padded batch (a boolean padding mask), causal, both ways and mixed."""
    sdpa = tiny(tiny_llama, "sdpa", reading=reading)
    matmul = tiny(tiny_llama, attention.NAME, reading=reading)
    matmul.load_state_dict(sdpa.state_dict())
    for rows in ([1], [0, 1]):
        batch = TagCollator(0)([{"input_ids": DOCS[r], "labels": LABELS[r]} for r in rows])
        (ls, ss, gs), (lm, sm, gm) = loss_and_grads(sdpa, batch), loss_and_grads(matmul, batch)
        real = batch["labels"] != -100
        assert torch.allclose(ls[real], lm[real], atol=1e-5) and torch.allclose(ss, sm, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gs, gm))


def test_matmul_attention_in_bf16_stays_close_to_sdpa(tiny_llama):
    """bf16 forced, whatever this CPU picks: the same loss to bf16's precision, gradients in bf16."""
    sdpa = tiny(tiny_llama, "sdpa", torch.bfloat16, reading=0)
    matmul = tiny(tiny_llama, attention.NAME, torch.bfloat16, reading=0)
    matmul.load_state_dict(sdpa.state_dict())
    for rows in ([0], [0, 1]):  # alone (no mask) and in a padded batch (the scores masked in place)
        batch = TagCollator(0)([{"input_ids": DOCS[r], "labels": LABELS[r]} for r in rows])
        (ls, ss, _), (lm, sm, gm) = loss_and_grads(sdpa, batch), loss_and_grads(matmul, batch)
        assert lm.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in gm)
        assert torch.allclose(ss.float(), sm.float(), rtol=2e-2)
        real = batch["labels"] != -100
        assert (ls[real].argmax(-1) == lm[real].argmax(-1)).float().mean() > 0.9


def test_matmul_attention_is_picked_only_for_bf16_on_a_cpu_where_the_probe_finds_it_faster(tiny_llama, monkeypatch):
    asked = []

    def probe(answer):
        return lambda *shape: asked.append(shape) or answer

    model = tiny(tiny_llama, "sdpa")
    monkeypatch.setattr(attention, "matmul_faster_on_cpu", probe(True))
    assert not attention.use_where_faster(model, bf16=False, device_type="cpu")
    assert not attention.use_where_faster(model, bf16=True, device_type="cuda")
    assert model.config._attn_implementation == "sdpa" and not asked
    monkeypatch.setattr(attention, "matmul_faster_on_cpu", probe(False))
    assert not attention.use_where_faster(model, bf16=True, device_type="cpu")
    assert model.config._attn_implementation == "sdpa"
    config = model.config  # the probe times the model's own heads
    assert (
        asked
        == [(4, 2, config.hidden_size // 4)]
        == [(config.num_attention_heads, config.num_key_value_heads, config.hidden_size // config.num_attention_heads)]
    )
    monkeypatch.setattr(attention, "matmul_faster_on_cpu", probe(True))
    assert attention.use_where_faster(model, bf16=True, device_type="cpu")
    assert model.config._attn_implementation == attention.NAME
    eager = tiny(tiny_llama, "eager")
    assert not attention.use_where_faster(eager, bf16=True, device_type="cpu")
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("slow", ["sdpa", "matmul"])
def test_the_attention_probe_picks_the_kernel_that_runs_faster_here(monkeypatch, slow):
    """Whichever kernel is slowed by half a second a call loses (more than either takes on any CPU, bf16
    emulated on AVX2 included), so the answer follows the timing, not the CPU's name."""
    import time

    def slowed(function):
        def call(*args, **kwargs):
            time.sleep(0.5)
            return function(*args, **kwargs)

        return call

    if slow == "sdpa":
        monkeypatch.setattr(
            torch.nn.functional,
            "scaled_dot_product_attention",
            slowed(torch.nn.functional.scaled_dot_product_attention),
        )
    else:
        monkeypatch.setattr(attention, "matmul_attention", slowed(attention.matmul_attention))
    attention.matmul_faster_on_cpu.cache_clear()
    try:
        assert attention.matmul_faster_on_cpu(4, 2, 16, repeats=1) is (slow == "sdpa")
    finally:
        attention.matmul_faster_on_cpu.cache_clear()  # no slowed answer left for later tests


def test_the_attention_benchmark_times_both_kernels_per_length_and_precision(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "attention.json"
    script = [sys.executable, str(REPO / "benchmarks" / "attention.py"), "--lengths", "8,24", "--repeats", "1"]
    done = subprocess.run([*script, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert [(r["dtype"], r["length"]) for r in rows] == [
        ("bfloat16", 8),
        ("bfloat16", 24),
        ("float32", 8),
        ("float32", 24),
    ]
    for r in rows:
        assert r["forward_backward_ratio"] == pytest.approx(
            r["sdpa_forward_backward_ms"] / r["matmul_forward_backward_ms"]
        )
        assert r["max_abs_difference"] < (1e-5 if r["dtype"] == "float32" else 0.05)  # the same attention


def in_a_fresh_process(code: str, *args) -> list[int]:
    """The integers `code` prints, run in a new interpreter: glibc's state after other tests does not count."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(x) for x in done.stdout.split()]


FAULTS = """
import resource, torch
from metatune import attention

def faults_reallocating():
    counts = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x, y = torch.ones(40_000_000), torch.ones(10_000_000)  # 160 and 40 MB
        del x, y
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sum(counts[1:])  # after the first round

outside = faults_reallocating()
with attention.keep_freed_memory():
    inside = faults_reallocating()
print(outside, inside)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_keeping_freed_memory_spares_the_page_faults_of_large_allocations():
    """Score-matrix-sized blocks allocated and freed again: glibc maps each afresh (and its pages are
    faulted in again) unless keep_freed_memory is active. In a fresh process, so that glibc's state
    after other tests does not matter; glibc still maps the heap's growth in its own way during the
    first rounds (0-18% of the faults over five tries), hence the margin."""
    outside, inside = in_a_fresh_process(FAULTS)
    assert outside > 300_000 and inside < 0.5 * outside, (outside, inside)


TRIM = """
import torch
from metatune import attention
from metatune.faults import resident_memory as resident

model = torch.nn.Identity()
with attention.keep_freed_memory(model=model, need=lambda batch, length: 10**9 * batch * length):
    hole, top = torch.ones(100_000_000), torch.ones(100_000_000)  # 400 MB each
    above = torch.ones(1_000_000)  # keeps the first block inside the heap once it is freed
    del hole, top
    kept = resident()
    model(torch.ones(1, 1))  # 1 GB needed, plenty available: nothing goes back
    plenty = resident()
    model(torch.ones(1000, 1000))  # a TB needed
    short = resident()
print(kept, plenty, short)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_the_kept_heap_goes_back_when_the_machine_runs_short():
    """Two freed 400 MB blocks, one inside the heap and one at its top, stay resident while memory is
    kept; a forward pass that may need more memory than the machine has available gives both back."""
    kept, plenty, short = in_a_fresh_process(TRIM)
    assert plenty > kept - 50e6, (kept, plenty)
    assert short < kept - 700e6, (kept, short)


CALIBRATE = """
import torch
from metatune import attention
from metatune.faults import resident_memory

class Pass(torch.nn.Module):  # takes 400 MB and frees it again, noting what was resident as it began
    seen = []

    def forward(self, ids):
        self.seen.append(resident_memory())
        scores = torch.ones(100_000_000)
        del scores

model = Pass()
with attention.keep_freed_memory(model=model, need=lambda batch, length: 10**12 * batch * length):
    model(torch.ones(1, 1))  # a TB estimated: the heap goes back, and this pass is measured
    model(torch.ones(1, 1))  # took 400 MB of that TB: its 400 MB stay
    model(torch.ones(1000, 1000))  # a million times as much: still more than the machine has
print(*model.seen)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_the_pass_after_a_trim_measures_how_much_of_its_estimate_a_pass_takes():
    """A pass estimated to need a TB forces a trim; it then takes 400 MB from the emptied heap, so the
    rule asks for 1.2 times that share of the estimate from then on: the same pass again keeps its
    400 MB, and a pass estimated a million times larger still gives the heap back."""
    first, same, larger = in_a_fresh_process(CALIBRATE)
    assert same > first + 350e6, (first, same)
    assert larger < same - 350e6, (same, larger)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_memory_a_finished_stage_freed_goes_back_to_the_system():
    from metatune.attention import give_back_freed_memory
    from metatune.faults import resident_memory

    blocks = [torch.ones(25_000) for _ in range(4000)]  # 400 MB in blocks glibc serves from its heap
    top = torch.ones(25_000)  # still in use above them: the heap's top cannot shrink on its own
    taken = resident_memory()
    del blocks
    kept = resident_memory()
    give_back_freed_memory()
    assert kept > taken - 50e6  # freed but still held by the process
    assert resident_memory() < kept - 300e6, (taken, kept, resident_memory())
    del top


READING = """
import resource, sys, torch
from metatune.config import ExtractionSettings
from metatune.objectives.tag.extractor import Tagger

tagger = Tagger.from_run(sys.argv[1], ExtractionSettings(dtype=sys.argv[2]))
faults = []

def reallocate(module, args, output):  # score-matrix-sized blocks taken and freed in every pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x, y = torch.ones(40_000_000), torch.ones(10_000_000)  # 160 and 40 MB
        del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

tagger.model.register_forward_hook(reallocate)
texts = ["Un título de prueba\\nAna Pérez\\n2021"] * 3
counts = []
for keep in (False, True):
    tagger.keep_freed_memory = keep
    faults.clear()
    tagger.extract(texts)
    counts.append(sum(faults[1:]))  # after the first pass of the call
print(*counts, int(tagger.keep_freed_memory))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16 forced: matmul attention on every CPU kind
def test_the_tagger_keeps_freed_memory_while_it_reads_on_a_cpu(dtype):
    """Tagger.extract on a CPU reads with glibc keeping freed memory: large blocks freed in one pass
    are reused by the next instead of being mapped and faulted in again (what a bf16 header's pass
    does ~90k times with glibc's defaults)."""
    run = Path(__file__).resolve().parent / "fixtures" / "tag-run"
    defaults, kept, on_by_default = in_a_fresh_process(READING, run, dtype)
    assert on_by_default == 1
    assert defaults > 300_000 and kept < 0.2 * defaults, (defaults, kept)
