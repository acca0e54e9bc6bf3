"""Running as one of several processes (`accelerate launch`, `torchrun`): who writes, and whole weights.

Every process trains; only the main one writes the run. Under DeepSpeed ZeRO-3 or FSDP each process
holds a shard of every weight, so the saved model is gathered from all of them first.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, broadcast_object_list

from metatune.config import Config
from metatune.errors import MetatuneError


def process_state() -> PartialState:
    """This process's place in the launch; starts the process group when launched as several."""
    has_device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if not has_device:
        # accelerate (and so the Trainer) runs DDP over gloo on CPUs only when told to use the CPU
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return PartialState(cpu=not has_device)


def on_main(state: PartialState, fn):
    """Runs `fn` on the main process only; a MetatuneError it raises is raised on every process."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except MetatuneError as e:
            error = e
    if state.num_processes > 1:
        box = [error]
        broadcast_object_list(box)
        error = box[0]
    if error:
        raise error  # of its own class: a WriteFault exits with its own status
    return result


def shards_weights(state: PartialState) -> bool:
    """FSDP, or DeepSpeed ZeRO stage 3 (stages 1-2 keep whole weights on every process)."""
    if state.distributed_type == DistributedType.FSDP:
        return True
    return (
        state.distributed_type == DistributedType.DEEPSPEED and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    )


def check_launch(config: Config, state: PartialState) -> None:
    if config.model.lora.enabled and shards_weights(state):
        raise MetatuneError(
            "model.lora.enabled with FSDP or DeepSpeed ZeRO-3 is not supported (the adapter could not be saved); "
            "launch LoRA runs with plain DDP (accelerate launch without a config, or torchrun)"
        )


def whole_model(accelerator: Accelerator, wrapped):
    """The trained model, unwrapped and with whole weights on the main process. Every process must call it."""
    model = accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    if not shards_weights(accelerator.state):
        return model
    state_dict = accelerator.get_state_dict(wrapped)  # gathered from all processes onto the main one
    if not accelerator.is_main_process:
        return model
    dtype = next(iter(state_dict.values())).dtype
    whole = type(model)._from_config(model.config, dtype=dtype)
    whole.load_state_dict(state_dict)
    whole.generation_config = model.generation_config
    return whole


def close_processes() -> None:
    """Ends the process group of a multi-process launch, if one was started.

    Left to interpreter exit, gloo's teardown can race between ranks and abort one of them
    ("terminate called without an active exception") after the run was saved.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
