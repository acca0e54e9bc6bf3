"""The tag objective's optional first stage (config `tag.adaptation_epochs`): masked next-token
prediction (MNTP), the way LLM2Vec teaches a decoder to read both ways.

A decoder was pretrained to read forward; a bidirectional tagger (models.read_both_ways) suddenly
sees the tokens after each one. Before the tagging head is trained, the backbone learns to use them
on the training texts themselves: a share of each text's tokens is replaced by a mask token, and the
hidden state of the position just before each masked token predicts it through the model's output
embeddings (tied to its input embeddings), as the pretrained head did. Only the backbone learns; the
tagging head is trained afterwards from its initial weights.
"""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from metatune.encoding import IGNORE_INDEX
from metatune.errors import MetatuneError

MASKED_SHARE = 0.2  # LLM2Vec's share for Llama-style models
WARMUP_SHARE = 0.05
MAX_GRAD_NORM = 1.0
GROUP = 50  # micro-batches sorted by length together (transformers' LengthGroupedSampler's mega-batch)


def check_adaptable(model, name: str) -> None:
    """A clear error for a model MNTP cannot be run on here: it needs the output layer that is tied
    to the input embeddings (the token-classification model has no language-model head of its own)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        raise MetatuneError(
            f"tag.adaptation_epochs needs a model whose output layer is its input embeddings "
            f"(tie_word_embeddings); '{name}' has a separate one"
        )


def mask_token(tokenizer) -> int:
    """The token that stands for a hidden one: the tokenizer's mask token, else its padding token
    (never a token of the text itself, since training inputs carry no padding)."""
    token = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
    if token is None:
        raise MetatuneError("tag.adaptation_epochs needs a tokenizer with a mask or padding token")
    return token


def masked_example(ids: list[int], mask_id: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one text: MASKED_SHARE of its positions after the first are replaced by
    `mask_id`; the target of the position before each of them is the token it hid (else ignored)."""
    inputs, targets = list(ids), [IGNORE_INDEX] * len(ids)
    if len(ids) > 1:
        for p in rng.sample(range(1, len(ids)), max(1, round(MASKED_SHARE * (len(ids) - 1)))):
            inputs[p], targets[p - 1] = mask_id, ids[p]
    return torch.tensor([inputs]), torch.tensor([targets])


def padded(
    examples: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One micro-batch of masked examples, padded on the right as the tagger's batches are (the
    targets of padding ignored): (inputs, targets, attention mask or None when nothing is padded)."""
    width = max(i.shape[1] for i, _ in examples)
    inputs = torch.full((len(examples), width), pad_id)
    targets = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (i, t) in enumerate(examples):
        inputs[row, : i.shape[1]], targets[row, : t.shape[1]], mask[row, : i.shape[1]] = i[0], t[0], 1
    return inputs, targets, None if bool(mask.all()) else mask


def mntp_loss(
    model, inputs: torch.Tensor, targets: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """The summed cross-entropy of the masked tokens and their number."""
    hidden = model.base_model(input_ids=inputs, attention_mask=attention_mask).last_hidden_state
    picked = targets.ne(IGNORE_INDEX)
    logits = hidden[picked] @ model.get_input_embeddings().weight.T
    return torch.nn.functional.cross_entropy(logits.float(), targets[picked], reduction="sum"), int(picked.sum())


def epoch_order(count: int, epochs: float, rng: random.Random) -> list[int]:
    """The texts' indices for `epochs` passes (a fraction takes the start of one more shuffled pass)."""
    order: list[int] = []
    for _ in range(math.ceil(epochs)):
        order += rng.sample(range(count), count)
    return order[: round(epochs * count)]


def grouped_by_length(order: list[int], lengths: list[int], per_forward: int) -> list[int]:
    """`order` with each run of GROUP micro-batches sorted longest first, as the Trainer's
    length-grouped sampler does for the tagger: padded micro-batches of similar lengths."""
    group = GROUP * per_forward
    return [i for s in range(0, len(order), group) for i in sorted(order[s : s + group], key=lambda i: -lengths[i])]


def adapt(
    model,
    tokenizer,
    texts: list[list[int]],
    epochs: float,
    learning_rate: float,
    batch_size: int,
    bf16: bool,
    seed: int,
    device: torch.device | str = "cpu",
    per_forward: int = 1,
    group_by_length: bool = True,
) -> list[float]:
    """Trains `model`'s backbone with MNTP over `texts` (token ids, as the tagger reads them) for
    `epochs`, `batch_size` texts per optimizer step in forward passes of `per_forward` texts (padded
    and, with `group_by_length`, grouped by length when more than one, as the tagger trains); returns each step's mean loss
    per masked token."""
    rng = random.Random(seed)
    mask_id = mask_token(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else mask_id
    order = epoch_order(len(texts), epochs, rng)
    if per_forward > 1 and group_by_length:
        order = grouped_by_length(order, [len(t) for t in texts], per_forward)
    steps = math.ceil(len(order) / batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_SHARE * steps), steps)
    device_type = torch.device(device).type
    model.to(device).train()
    losses = []
    for step in tqdm(range(steps), desc="Adapting to read both ways (MNTP)"):
        examples = [masked_example(texts[i], mask_id, rng) for i in order[step * batch_size : (step + 1) * batch_size]]
        total = sum(int(t.ne(IGNORE_INDEX).sum()) for _, t in examples)
        summed = 0.0
        for start in range(0, len(examples), per_forward):
            inputs, targets, mask = padded(examples[start : start + per_forward], pad_id)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = mntp_loss(
                    model, inputs.to(device), targets.to(device), mask if mask is None else mask.to(device)
                )
            (loss / total).backward()
            summed += loss.item()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(summed / total)
    return losses
