"""Line breaks put back into a text that arrives without them, before it is tagged (`tag.restore_lines`).

The tagger reads line structure well (a title ends where its line ends) and text without it worse:
the SEDICI orchestrator and some PDF tools send a header as one run of words. After training, a
linear probe on the trained model's last hidden states learns, from copies of the training texts
with their whitespace collapsed, which tokens started a line of the page. At extraction, a text that
has lost its line breaks (`lacks_lines`) is read once to find them, gets a line break where the probe
says one was, and is then tagged as any other text. The probe is a few kilobytes
(`line_restorer.safetensors`); its threshold is the one with the best F1 on a fifth of the training
documents held out from its fit.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from metatune.objectives.tag.lines import classification_head

RESTORER_FILE = "line_restorer.safetensors"
# characters per line on average above which a text is taken to have lost its line breaks (a printed
# line is under 200; a header sent as one run of words is thousands)
LONG_LINES = 400
HELD_OUT = 5  # every fifth training document is held out of the fit and chooses the threshold
MAX_VALUES = 120_000_000  # hidden-state values kept for the fit (480 MB in float32), documents sampled beyond
THRESHOLDS = [t / 20 for t in range(1, 20)]


def lacks_lines(text: str) -> bool:
    """Whether a text has lost its line breaks: none at all, or lines averaging over LONG_LINES characters."""
    lines = [line for line in text.split("\n") if line.strip()]
    return bool(lines) and (len(lines) == 1 or sum(map(len, lines)) / len(lines) > LONG_LINES)


@contextmanager
def last_hidden_states(model):
    """Collects the input of the model's token-classification head (its last hidden states) for each
    forward pass inside the block, in the list it yields."""
    kept: list[torch.Tensor] = []
    hook = classification_head(model).register_forward_pre_hook(lambda module, args: kept.append(args[0]))
    try:
        yield kept
    finally:
        hook.remove()


class LineRestorer:
    """The probe: a line starts at a token when sigmoid(w . standardised hidden state + b) > threshold."""

    def __init__(self, weight, bias, mean, std, threshold: float):
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std
        self.threshold = float(threshold)

    def probabilities(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per position (rows of `hidden`): the probability that a line of the page started there."""
        return torch.sigmoid(((hidden.float() - self.mean) / self.std) @ self.weight + self.bias)

    def restore(self, text: str, offsets: list[tuple[int, int]], probabilities: torch.Tensor) -> str:
        """`text` with a line break where each token whose probability passes the threshold starts: the
        whitespace before it made one, or one put in before a token glued to the one before it (PDF
        tools glue a line's last word to the next line's first)."""
        chars = list(text)
        for (start, _), p in zip(offsets, probabilities.tolist()):
            if p > self.threshold and start > 0:
                if chars[start - 1].isspace():
                    chars[start - 1] = "\n"
                else:
                    chars[start] = "\n" + chars[start]
        return "".join(chars)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: Path, threshold: float) -> LineRestorer:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["weight"], t["bias"], t["mean"], t["std"], threshold)


def fit(hidden: list[torch.Tensor], targets: list[torch.Tensor], seed: int = 0) -> tuple[LineRestorer, dict]:
    """The probe fitted on per-document hidden states (positions x width) and line targets (1 where a
    line started, 0 where none did), logistic regression with L-BFGS; the threshold with the best F1
    on every HELD_OUT-th document. Returns it and what metatune.json records of the fit."""
    held = [i % HELD_OUT == 0 for i in range(len(hidden))]
    if all(held) or not any(held):
        raise ValueError(f"fitting the line restorer needs at least {HELD_OUT + 1} documents")
    x_fit = torch.cat([h for h, out in zip(hidden, held) if not out]).float()
    y_fit = torch.cat([y for y, out in zip(targets, held) if not out]).float()
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit = (x_fit - mean) / std
    torch.manual_seed(seed)
    weight = torch.zeros(x_fit.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x_fit @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_fit) + 1e-4 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    restorer = LineRestorer(weight.detach(), bias.detach(), mean, std, 0.5)
    p = restorer.probabilities(torch.cat([h for h, out in zip(hidden, held) if out]))
    y = torch.cat([y for y, out in zip(targets, held) if out]).bool()
    best = {"f1": -1.0}
    for threshold in THRESHOLDS:
        predicted = p > threshold
        hits = int((predicted & y).sum())
        precision, recall = hits / max(1, int(predicted.sum())), hits / max(1, int(y.sum()))
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        if f1 > best["f1"]:
            best = {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1}
    restorer.threshold = best["threshold"]
    return restorer, {
        "threshold": best["threshold"],
        "held_out": {k: round(best[k], 3) for k in ("precision", "recall", "f1")},
        "documents": len(hidden),
        "positions": int(y_fit.numel() + y.numel()),
        "line_starts_share": round(float((y_fit.sum() + y.sum()) / (y_fit.numel() + y.numel())), 4),
    }


def fit_on_model(model, features: list[dict], bf16: bool, seed: int) -> tuple[LineRestorer, dict]:
    """The probe for a trained tagger: `features` are encoded collapsed copies of the training texts
    whose `lines` hold their line targets (-1 where none); each is read alone, in bf16 autocast when
    the run trained so. Documents are sampled (seeded) while their hidden states fit in MAX_VALUES."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    width = classification_head(model).in_features
    order = random.Random(seed).sample(range(len(features)), len(features))
    hidden, targets, kept = [], [], 0
    was_training = model.training
    model.eval()
    try:
        for i in order:
            lines = torch.tensor(features[i]["lines"])
            known = lines.ge(0)
            if kept + int(known.sum()) * width > MAX_VALUES:
                break
            with (
                torch.no_grad(),
                last_hidden_states(model) as states,
                torch.autocast(device.type, torch.bfloat16, enabled=bf16),
            ):
                model(input_ids=torch.tensor([features[i]["input_ids"]], device=device))
            hidden.append(states[0][0, known.to(states[0].device)].float().cpu())
            targets.append(lines[known])
            kept += hidden[-1].numel()
    finally:
        model.train(was_training)
    restorer, stats = fit(hidden, targets, seed)
    return restorer, stats | {"seconds": round(time.perf_counter() - start, 1)}
