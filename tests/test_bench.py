"""`metatune bench` end to end on a tiny model, and the training levers it measures.

No timing is asserted: speed figures vary with the machine and its load. The tests check that every
figure is produced and consistent, and that the faster training path computes the same loss.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from metatune import attention, bench
from metatune.bench import BenchSettings, Turns, original_features, run_bench, write_results
from metatune.config import load_config
from metatune.encoding import collator, target_positions
from metatune.objectives.generate.objective import target_logits_supported, target_only_loss
from metatune.training.common import micro_batches

from conftest import SAMPLE

FEATURES = [  # a causal example is prompt + target, the prompt masked out of the loss
    {"input_ids": list(range(5, 25)), "attention_mask": [1] * 20, "labels": [-100] * 12 + list(range(17, 25))},
    {"input_ids": list(range(30, 44)), "attention_mask": [1] * 14, "labels": [-100] * 5 + list(range(35, 44))},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and far faster than on two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)


def test_target_positions_mark_the_tokens_before_each_target():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 7, 8]])
    assert target_positions(labels).tolist() == [
        [False, True, True, False, False],
        [True, True, True, True, False],
    ]


def test_target_only_logits_give_the_models_own_loss_and_gradients(llama):
    model, tokenizer = llama
    assert target_logits_supported(model, seq2seq=False)
    batch = collator(tokenizer, target_logits=True)(FEATURES)
    keep = batch.pop("logits_to_keep")

    model.zero_grad()
    reference = model(**batch)  # full logits, the model's own shifted cross-entropy
    reference.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    labels = batch.pop("labels")
    outputs = model(**batch, logits_to_keep=keep)
    assert outputs.logits.shape == (8 + 9, len(tokenizer))  # one row per target token, none for the prompt
    loss = target_only_loss(outputs, labels)
    loss.backward()
    assert loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_target_only_loss_divides_by_the_items_of_the_whole_accumulated_batch(llama):
    model, tokenizer = llama
    batch = collator(tokenizer, target_logits=True)(FEATURES)
    labels = batch.pop("labels")
    with torch.no_grad():
        outputs = model(**batch)
    mean = target_only_loss(outputs, labels)
    assert target_only_loss(outputs, labels, num_items_in_batch=34).item() == pytest.approx(mean.item() * 17 / 34)


def test_seq2seq_models_keep_their_full_logits(tiny_t5):
    from transformers import AutoModelForSeq2SeqLM

    assert not target_logits_supported(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5), seq2seq=True)


def test_padding_free_splits_batches_of_causal_models_into_single_examples():
    config = load_config(
        sets=[
            "training.per_device_train_batch_size=4",
            "training.gradient_accumulation_steps=2",
            "training.padding_free=true",
        ]
    )
    assert micro_batches(config, seq2seq=False) == (1, 8)
    assert micro_batches(config, seq2seq=True) == (4, 2)  # seq2seq losses are per-batch means
    config.training.padding_free = False
    assert micro_batches(config, seq2seq=False) == (4, 2)
    config.training.padding_free = "auto"
    if not torch.cuda.is_available():
        assert micro_batches(config, seq2seq=False) == (1, 8)  # a causal model's lone example skips a triangle
        assert micro_batches(config, seq2seq=False, causal=False) == (4, 2)  # read both ways: nothing to skip


def test_a_bidirectional_tag_run_says_it_does_not_attend_causally(tiny_llama):
    from transformers import AutoModelForTokenClassification

    from metatune.models import read_both_ways
    from metatune.training.common import attends_causally

    model = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=3)
    assert attends_causally(model)
    read_both_ways(model)
    assert not attends_causally(model)


@pytest.mark.parametrize("objective", ["generate", "tag"])  # tag: read both ways, padding masked
def test_padding_free_training_takes_the_same_step_as_padded_batches(tiny_llama, tmp_path, objective):
    from transformers import TrainerCallback

    from metatune.objectives import prepare
    from metatune.training.hf_trainer import build_trainer, training_arguments

    grads, losses = {}, {}
    for free in (True, False):
        config = load_config(
            sets=[
                f"model.name={tiny_llama}",
                f"data.path={SAMPLE}",
                f"training.output_dir={tmp_path / str(free)}",
                "data.max_input_tokens=256",
                "data.include_fields=[title, creator, date, language]",
                "training.per_device_train_batch_size=4",
                "training.max_steps=1",
                "training.group_by_length=false",
                "training.eval_each_epoch=false",
                "training.max_grad_norm=0",
                f"training.padding_free={free}",
                f"training.objective={objective}",
                "training.bf16=false",  # equal up to float32 rounding
            ]
        )
        prepared = prepare(config, need_validation=False)
        for module in prepared.model.modules():  # a token-classification head drops 10% of its inputs
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        args = bench.quiet_arguments(training_arguments(prepared, tmp_path / str(free)))
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == ((1, 4) if free else (4, 1))
        grads[free] = {}

        class KeepGradients(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                grads[free].update({n: p.grad.clone() for n, p in model.named_parameters()})

        trainer = build_trainer(prepared, args, callbacks=[KeepGradients()])
        losses[free] = trainer.train().training_loss
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert grads[True].keys() == grads[False].keys()
    for name, value in grads[False].items():  # the gradients the optimizer steps on, summed over micro-batches
        torch.testing.assert_close(grads[True][name], value, rtol=1e-4, atol=1e-7, msg=name)


def test_original_features_pad_prompt_and_target_to_fixed_lengths():
    causal = original_features(FEATURES[0], pad_id=0, seq2seq=False)
    assert {k: len(v) for k, v in causal.items()} == {"input_ids": 2560, "attention_mask": 2560, "labels": 2560}
    assert causal["input_ids"][:12] == list(range(5, 17)) and causal["input_ids"][12:2048] == [0] * 2036
    assert causal["input_ids"][2048:2056] == list(range(17, 25))  # the target starts after the padded prompt
    assert [x for x in causal["labels"] if x != -100] == list(range(17, 25))
    assert sum(causal["attention_mask"]) == 20

    seq2seq = original_features({"input_ids": [4, 5, 6], "attention_mask": [1] * 3, "labels": [7, 8]}, 0, True)
    assert len(seq2seq["input_ids"]) == 2048 and len(seq2seq["labels"]) == 512
    assert seq2seq["labels"][:3] == [7, 8, -100]


def test_turns_alternate_and_skip_a_participant_that_left():
    turns, seen = Turns(["a", "b"]), []

    def player(name, rounds):
        for _ in range(rounds):
            turns.wait(name)
            seen.append(name)
            turns.done(name)
        turns.leave(name)

    threads = [threading.Thread(target=player, args=("a", 2)), threading.Thread(target=player, args=("b", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert seen == ["a", "b", "a", "b", "b", "b"]


def test_without_the_shared_data_the_sample_is_used_and_said(monkeypatch, tmp_path):
    from metatune.bench import settings  # default_data reads GROBID there

    monkeypatch.setattr(settings, "GROBID", tmp_path / "absent.json")
    path, note = bench.default_data()
    assert path == str(bench.SAMPLE) and "absent" in note and "sample" in note


def test_bench_produces_every_figure(tiny_llama, tmp_path):
    settings = BenchSettings(
        output=tmp_path / "results",
        model=str(tiny_llama),
        data=str(SAMPLE),
        steps=2,
        extract_docs=3,
        extract_batch_size=2,
        max_new_tokens=4,
        matmul_size=128,
    )
    json_path, md_path = write_results(run_bench(settings), settings.output)
    result = json.loads(json_path.read_text(encoding="utf-8"))

    training = result["training"]
    original, metatune = training["original"], training["metatune"]
    for side in (original, metatune):
        assert len(side["steps"]) == 2 and all(s["seconds"] > 0 for s in side["steps"])
        assert side["epoch_seconds"] > 0 and side["target_tokens_per_second"] > 0
        assert 0 < side["mfu"] and side["model_flops_per_second"] > 0
    examples = result["examples"]
    assert original["epoch"]["positions"] == 2560 * examples["original_train"]  # every example padded to 2048 + 512
    assert original["steps"][0]["positions"] == 2 * 2560
    # the original writes every abstract whole; metatune's side, as `make quality-generate` trains, anchors them
    assert "generate.anchor_min_words=20" in examples["sets"] and examples["original_train"] == examples["train"] == 24
    assert examples["original_mean_target_tokens"] > examples["mean_target_tokens"]
    assert original["epoch"]["targets"] > metatune["epoch"]["targets"]
    assert metatune["epoch"]["positions"] < original["epoch"]["positions"]
    assert metatune["setup"]["target_only_logits"] and metatune["setup"]["group_by_length"]
    assert training["speedup_per_epoch"] == pytest.approx(
        original["epoch_seconds"] / metatune["epoch_seconds"], rel=0.01
    )
    peak = training["peak_flops_per_second"]
    assert peak["float32_best"] > 0 and peak["bfloat16"] > 0 and peak["samples"] >= 2

    extraction = result["extraction"]
    assert extraction["documents"] == 3
    assert extraction["plain_docs_per_second"] > 0 and extraction["batched_docs_per_second"] > 0
    assert 0 <= extraction["identical_predictions"] <= 3 and extraction["peak_rss_mb"] > 0
    assert extraction["generated_tokens"] > 0  # the generate extractor's own statistics

    assert set(result["other_runs"]) == {"tag"}  # every objective but the race's (generate)
    tag = result["other_runs"]["tag"]
    assert tag["training"]["steps_timed"] == 2 and 0 < tag["training"]["mfu"]
    assert tag["training"]["tokens_per_step_mean"] > 0
    tag_extraction = tag["extraction"]
    assert tag_extraction["objective"] == "tag" and tag_extraction["dtype"] in ("float32", "bfloat16")
    assert tag_extraction["identical_predictions"] == 3  # one forward pass: batched or alone, the same labels
    limit = tag_extraction["forward_limit_seconds_per_document"]
    assert limit > 0
    assert tag_extraction["batched_x_limit"] == pytest.approx(
        1 / tag_extraction["batched_docs_per_second"] / limit, rel=0.01
    )

    memory = result["memory"]
    for key in ("train_original", "train_full", "train_lora"):
        assert memory[key]["peak_rss_mb"] >= memory[key]["rss_after_load_mb"] > 0
    assert memory["train_original"]["longest_sequence"] == 2560

    assert "data_note" not in result and result["machine"]["logical_cpus"] >= 1
    table = md_path.read_text(encoding="utf-8")
    for row in (
        "| useful target tokens / s |",
        "| seconds per epoch |",
        "| MFU",
        "| documents / s |",
        "metatune LoRA",
        "extraction, batched",
        "model: the base model, untrained.",
        "## The tag run",
        "| one forward pass at the ",
        "metatune (`generate.anchor_min_words=20`, `generate.prompt_example=false`)",
    ):
        assert row in table
    assert sorted(p.name for p in settings.output.iterdir()) == sorted([json_path.name, md_path.name])


def test_bench_refuses_a_step_count_below_one(tmp_path):
    from metatune.errors import MetatuneError

    with pytest.raises(MetatuneError, match="--steps"):
        run_bench(BenchSettings(output=tmp_path / "out", steps=0))
    with pytest.raises(MetatuneError, match="--extract-run .*no metatune.json"):
        run_bench(BenchSettings(output=tmp_path / "out", extract_run=tmp_path))
    assert not (tmp_path / "out").exists()


def test_a_model_read_both_ways_trains_one_example_at_a_time_where_padded_batches_would_not_fit(
    tiny_llama, tmp_path, monkeypatch, capsys
):
    from metatune.objectives import prepare
    from metatune.training import common
    from metatune.training.hf_trainer import training_arguments

    config = load_config(
        sets=[
            f"model.name={tiny_llama}",
            f"data.path={SAMPLE}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.objective=tag",
            "training.per_device_train_batch_size=4",
            "training.eval_each_epoch=false",
        ]
    )
    prepared = prepare(config, need_validation=False)
    lengths = [len(x["input_ids"]) for x in prepared.train]
    needed = common.padded_training_bytes(prepared.model, lengths, 4)
    state = 18 * sum(p.numel() for p in prepared.model.parameters())
    assert needed > state  # the longest batch's activations come on top of the training state
    # a batch twice as long needs more memory
    assert common.padded_training_bytes(prepared.model, [2 * n for n in lengths], 4) > needed
    # matmul attention keeps each layer's bf16 attention probabilities too: heads x tokens x longest
    prepared.model.set_attn_implementation(attention.NAME)
    c, longest = prepared.model.config, sorted(lengths)[-4:]
    scores = 2 * c.num_hidden_layers * c.num_attention_heads * 4 * longest[-1] ** 2
    assert common.padded_training_bytes(prepared.model, lengths, 4) == needed + scores
    prepared.model.set_attn_implementation("sdpa")
    if torch.cuda.is_available():
        pytest.skip("GPUs keep padded batches")
    monkeypatch.setattr(common, "available_memory", lambda: 100 * needed)
    args = training_arguments(prepared, tmp_path / "plenty")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 1)
    assert "one example per micro-batch" not in capsys.readouterr().out
    monkeypatch.setattr(common, "available_memory", lambda: needed // 2)
    args = training_arguments(prepared, tmp_path / "scarce")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)
    assert "Training one example per micro-batch: padded batches would need" in capsys.readouterr().out
    config.training.per_device_train_batch_size = 1  # one example per batch anyway: nothing to say
    training_arguments(prepared, tmp_path / "single")
    assert "one example per micro-batch" not in capsys.readouterr().out
    config.training.per_device_train_batch_size = 4
    config.training.padding_free = False  # the user's choice wins
    args = training_arguments(prepared, tmp_path / "forced")
    assert args.per_device_train_batch_size == 4


def test_step_figures_count_the_backward_pass_of_trained_parameters_only():
    from metatune.bench.other_runs import step_figures

    times, tokens = [9.0, 2.0, 2.0], [100, 100, 100]  # the first step is warm-up and left out
    full = step_figures(times, tokens, parameters=1000, peak=1e6)
    assert full["steps_timed"] == 2 and full["model_flops_per_second"] == 6 * 1000 * 200 / 4.0
    half = step_figures(times, tokens, parameters=1000, peak=1e6, trainable=500)
    assert half["model_flops_per_second"] == (2 * 1000 + 4 * 500) * 200 / 4.0
    assert half["mfu"] == round(half["model_flops_per_second"] / 1e6, 4)


def test_the_layer_shapes_benchmark_times_the_seven_linear_layers_against_the_peak(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "shapes.json"
    script = [
        sys.executable,
        str(REPO / "benchmarks" / "layer_shapes.py"),
        "--tokens",
        "32",
        "--read-tokens",
        "16",
        "--reps",
        "1",
    ]
    done = subprocess.run([*script, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    layers = figures["gflops_per_second_per_layer"]
    assert list(layers) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert all(rate[how] > 0 for rate in layers.values() for how in ("autocast", "bf16", "forward"))
    for how, share in figures["share_of_peak"].items():
        assert share == pytest.approx(figures["all_seven"][how] / figures["bf16_peak_gflops_per_second"], abs=1e-3)
