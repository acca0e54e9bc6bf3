"""The original module's approach, reproduced: its fixed shapes and how it built its inputs."""

from __future__ import annotations

ORIGINAL_INPUT, ORIGINAL_TARGET, ORIGINAL_BATCH = 2048, 512, 2  # the original module's fixed shapes


def split_causal(example: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a metatune causal example: the prompt is the part masked out of the loss."""
    n = next((i for i, label in enumerate(example["labels"]) if label != -100), len(example["labels"]))
    return example["input_ids"][:n], example["input_ids"][n:]


def original_features(example: dict, pad_id: int, seq2seq: bool) -> dict:
    """One example as the original module built it: prompt padded to 2048, target padded to 512."""
    if seq2seq:
        prompt, target = example["input_ids"], example["labels"]
    else:
        prompt, target = split_causal(example)
    p_pad, t_pad = ORIGINAL_INPUT - len(prompt), ORIGINAL_TARGET - len(target)
    input_ids = prompt + [pad_id] * p_pad
    mask = [1] * len(prompt) + [0] * p_pad
    labels = target + [-100] * t_pad
    if seq2seq:
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return {
        "input_ids": input_ids + target + [pad_id] * t_pad,
        "attention_mask": mask + [1] * len(target) + [0] * t_pad,
        "labels": [-100] * ORIGINAL_INPUT + labels,
    }


def original_examples(data, tokenizer, seq2seq: bool) -> list[dict]:
    """The training examples the original module trained on, encoded by metatune: every value written
    whole, after the instruction with its example JSON (whatever metatune's side sets for anchors and
    the instruction), targets of at most ORIGINAL_TARGET tokens. `data`: config.DataSettings."""
    from metatune.data import load_for_training
    from metatune.encoding import PromptEncoder
    from metatune.formatting import InputFormat

    data = data.model_copy(update={"max_target_tokens": ORIGINAL_TARGET})
    registry, dataset = load_for_training(data, need_validation=False)
    encoder = PromptEncoder.for_training(data, InputFormat.from_settings(data), registry, tokenizer, seq2seq)
    return encoder.encode_records(dataset.split("training"))[0]
