"""Processes and sharding for `specdec distill`: one process, DDP (gloo on CPU, nccl on CUDA) or FSDP.

A single process is world 1, rank 0, and every helper here is then a no-op or the plain call, so the
trainer has one code path. Under torchrun (WORLD_SIZE > 1) the process group is initialised here.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed
from torch.nn.parallel import DistributedDataParallel as DDP

from ..engine.devices import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    initialised_here: bool = False
    fsdp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(x)
        return x

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def raise_together(self, error: Exception | None) -> None:
        """Raise, on every rank, the error that a step run by rank 0 alone raised (the other ranks would
        otherwise wait for rank 0 at the next collective until the launcher kills them)."""
        if self.world > 1:
            box = [None if error is None else str(error)]
            torch.distributed.broadcast_object_list(box, src=0)
            if error is None and box[0] is not None:
                raise ValueError(box[0])
        if error is not None:
            raise error

    def close(self) -> None:
        if self.initialised_here:
            torch.distributed.destroy_process_group()


def init_dist(device: torch.device, fsdp: bool) -> Dist:
    """The process group under torchrun (WORLD_SIZE > 1), else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if fsdp:
            raise ValueError("--fsdp shards across processes: run under torchrun --nproc_per_node N (on CUDA)")
        return Dist()
    if fsdp and device.type != "cuda":
        raise ValueError("--fsdp needs CUDA devices (PyTorch's FSDP does not run on CPU); on CPU drop --fsdp "
                         "and train with DDP")
    td = torch.distributed
    here = not td.is_initialized()
    if here:
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), here, fsdp)


def pick_device(name: str) -> torch.device:
    """--device resolved (one-line error for a bad or absent device); under torchrun each process on CUDA
    takes the GPU of its local rank."""
    device = resolve_device(name)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def wrap(draft, dist: Dist, device: torch.device):
    """The draft as trained: itself (one process), DDP, or FSDP."""
    if dist.world <= 1:
        return draft
    if dist.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        return FSDP(draft, device_id=device, use_orig_params=True)
    return DDP(draft, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model):
    return getattr(model, "module", model)


def full_params(model, dist: Dist):
    """Evaluation, sampling and saving of an FSDP model need its full parameters on every rank."""
    if dist.fsdp and hasattr(model, "summon_full_params"):
        return model.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()


def grad_sync(model, dist: Dist, last_micro: bool):
    """DDP all-reduces gradients on every backward unless told not to: only the last micro-batch of a
    step needs it (FSDP and a single process always sync)."""
    if last_micro or dist.world == 1 or dist.fsdp:
        return contextlib.nullcontext()
    return model.no_sync()


def clip_grad_norm(model, dist: Dist, max_norm: float) -> None:
    if max_norm <= 0:
        return
    if dist.fsdp:
        model.clip_grad_norm_(max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def model_state(model, dist: Dist) -> dict:
    """The draft's full state dict on CPU (under FSDP: gathered on rank 0 only)."""
    if dist.fsdp:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
            return model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def optim_state(model, optimizer, dist: Dist) -> dict:
    if dist.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        return FSDP.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def load_optim_state(model, optimizer, state: dict, dist: Dist) -> None:
    if dist.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        state = FSDP.optim_state_dict_to_load(model, optimizer, state)
    optimizer.load_state_dict(state)
