"""Training with the weights themselves in bf16 and a float32 master copy (`training.bf16: weights`).

bf16 autocast keeps a model's weights in float32 and casts them to bf16 for every matrix product of
every pass, and their gradients come back in float32. With `training.bf16: weights` the model is
bf16 throughout: its passes read and write half the bytes and cast nothing. The optimizer keeps the
float32 copy that the updates are added to, because an update of lr 2e-4 is smaller than bf16's
resolution (2^-8 of the weight) and added to bf16 weights it would mostly round away.
"""

from __future__ import annotations

import torch


class Float32MasterAdamW(torch.optim.AdamW):
    """AdamW over float32 copies of a bf16 model's parameters: each step reads the parameters' bf16
    gradients, updates the copies and writes them back rounded to bf16. The param groups (learning
    rate, weight decay) are the copies', so schedulers and checkpoints see an ordinary AdamW."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        copies = []
        for group in groups:
            masters = [p.detach().to(torch.float32, copy=True) for p in group["params"]]
            self.pairs += zip(group["params"], masters)
            copies.append({**group, "params": masters})
        super().__init__(copies, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Float32MasterAdamW takes no closure")
        for param, master in self.pairs:
            master.grad = None if param.grad is None else param.grad.to(torch.float32)
        super().step()
        for param, master in self.pairs:
            param.copy_(master)
            master.grad = None

    def zero_grad(self, set_to_none: bool = True):
        for param, _ in self.pairs:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
        super().zero_grad(set_to_none)

    def load_state_dict(self, state_dict):
        """A checkpoint's optimizer state; the checkpoint's weights, restored into the model before it
        (by the Trainer and by accelerate alike), become the master copy."""
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for param, master in self.pairs:
                master.copy_(param)

    @torch.no_grad()
    def into_float32(self, model: torch.nn.Module) -> torch.nn.Module:
        """The trained model in float32 with the master copy's weights rather than their bf16 rounding,
        unless other weights were loaded since the last step (the best checkpoint of early stopping)."""
        current = [torch.equal(param, master.to(param.dtype)) for param, master in self.pairs]
        model.float()  # converts each parameter's data in place: the pairs still name them
        for (param, master), same in zip(self.pairs, current):
            if same:
                param.copy_(master)
        return model


def master_optimizer(optimizer) -> Float32MasterAdamW | None:
    """The Float32MasterAdamW inside an optimizer accelerate may have wrapped, if that is what it is."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, Float32MasterAdamW) else None
