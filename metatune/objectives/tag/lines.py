"""Where the page's lines started, learned from copies of the training texts without line breaks
(`tag.line_starts`): an auxiliary task of training only.

A collapsed copy (`tag.augment_collapsed`) keeps every word of its original but no line break, and
without them a running head runs into the title. The original still says where each line began,
so each token of a copy gets a target (does a line of the page start in it?) that a second, one-unit
head on the last hidden state learns beside the field labels. Every line of every copy carries the
signal, against one title boundary per document. The head is dropped when the run is saved:
extraction and the saved model are unchanged.

Targets travel in the batch's `labels` (TagCollator packs them, `split_labels` unpacks them in the
loss), since the Trainer passes every other key of a batch to the model.
"""

from __future__ import annotations

import torch

from metatune.encoding import IGNORE_INDEX

LINE_STARTS = "_line_starts"  # a training copy's key: where its original's lines start in its text


def line_starts(original: str, copy: str) -> list[int]:
    """Character offsets in `copy` where a line of `original` starts: each line's words, in order, where
    they next occur (a copy has the same words with other whitespace, margin texts between lines, or
    a line end glued to the next line's first word)."""
    starts, at = [], 0
    for line in original.split("\n"):
        words = " ".join(line.split())
        if not words:
            continue
        found = copy.find(words, at)
        if found >= 0:
            starts.append(found)
            at = found + len(words)
    return starts


def line_targets(offsets: list[tuple[int, int]], starts: list[int]) -> list[int]:
    """Per token (character offsets, trimmed of leading whitespace): 1 where a line starts in it, else 0."""
    targets, remaining, i = [], sorted(starts), 0
    for start, end in offsets:
        while i < len(remaining) and remaining[i] < start:
            i += 1
        targets.append(int(i < len(remaining) and start <= remaining[i] < end))
    return targets


def pack_labels(labels: torch.Tensor, targets: torch.Tensor, label_count: int) -> torch.Tensor:
    """`labels` with each labelled position's line target (-1 none, 0, 1) folded in: label + n x (1 + target)."""
    known = labels.ne(IGNORE_INDEX) & targets.ge(0)
    return torch.where(known, labels + label_count * (1 + targets), labels)


def split_labels(labels: torch.Tensor, label_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The field labels and the line targets (-1 where there is none) of packed labels."""
    known = labels.ge(label_count)
    targets = torch.where(known, labels // label_count - 1, -1)
    return torch.where(known, labels % label_count, labels), targets


def classification_head(model) -> torch.nn.Linear:
    """The token-classification head of a transformers model (`score` or `classifier`)."""
    heads = [
        m for m in model.children() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels
    ]
    if len(heads) != 1:
        raise ValueError(f"no single token-classification head in {type(model).__name__}")
    return heads[0]


class LineHead:
    """The training-only head: one unit on the input of the classification head, trained with the
    binary cross-entropy of the line targets, weighted by `weight` and divided as the field loss is
    (by the labelled tokens of the accumulated batch). `attach` makes it a module of the model, so
    that the optimiser and the checkpoints hold it; `detach` removes it before the run is saved."""

    def __init__(self, weight: float, label_count: int):
        self.weight = weight
        self.label_count = label_count
        self.losses: list[float] = []  # mean binary cross-entropy per target, per forward pass
        self.module: torch.nn.Linear | None = None
        self._hidden: torch.Tensor | None = None
        self._hook = None

    def attach(self, model) -> None:
        head = classification_head(model)
        self.module = model.line_head = torch.nn.Linear(head.in_features, 1)
        self._hook = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:
        self._hidden = args[0]

    def loss(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(field labels, each row's summed weighted line loss) for the packed `labels` of the forward
        pass that just ran."""
        labels, targets = split_labels(labels, self.label_count)
        hidden, self._hidden = self._hidden, None
        known = targets.ge(0)
        rows = torch.zeros(labels.shape[0], device=labels.device)
        if hidden is None or self.module is None or not bool(known.any()):
            return labels, rows
        logits = self.module(hidden).squeeze(-1).float()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets.clamp(min=0).float(), reduction="none"
        )
        losses = losses * known
        self.losses.append(float(losses.detach().sum()) / int(known.sum()))
        return labels, self.weight * losses.sum(1)

    def detach(self, model) -> dict:
        """Removes the head from `model`; returns what metatune.json records of it."""
        if self._hook is not None:
            self._hook.remove()
        if hasattr(model, "line_head"):
            del model.line_head
        self.module = None
        tenth = max(1, len(self.losses) // 10)
        first, last = self.losses[:tenth], self.losses[-tenth:]
        return {
            "weight": self.weight,
            "forward_passes": len(self.losses),
            "loss_first_tenth": round(sum(first) / max(1, len(first)), 4),
            "loss_last_tenth": round(sum(last) / max(1, len(last)), 4),
        }
