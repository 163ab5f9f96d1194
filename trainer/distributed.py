"""torchrun integration: one process per device, gloo on CPU and NCCL on GPU.

``torchrun --nproc-per-node N [--nnodes M ...] -m cnclip train --config run.yaml``
sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from runtime.devices import parse_device
from runtime.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; ``cuda``: this rank's
    GPU; ``cuda:N``, ``cpu`` as given (:func:`runtime.devices.parse_device`)."""
    device = parse_device(requested, allow_auto=True)
    if device.kind == "auto":
        device = parse_device("cuda" if torch.cuda.is_available() else "cpu")
    if device.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but this torch build sees no GPU")
    if device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cuda", device.index)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (a no-op for a single process)."""
    world = _env_int("WORLD_SIZE", 1)
    info = DistInfo(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum plain numbers over ranks (metrics, counters); unchanged for one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]
