"""Run under torchrun by tests/trainer/test_step.py: one DDP step on this rank's share.

Usage: torchrun --nproc-per-node 2 tests/trainer/ddp_worker.py FAMILY ACCUM LOCK GROUPS OUT
Rank r takes rows [r*n/2, (r+1)*n/2) of the global batch, split into ACCUM
micro-batches; rank 0 saves the parameter change of an SGD(lr=1) step and the loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.trainer.step_cases import case_batch, case_model, sgd_delta, split
from trainer.step import StepOptions, TrainForward


def main() -> None:
    family, accum, lock, groups, out = sys.argv[1:6]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model = case_model(family)
    model.train()
    if lock == "1":
        model.visual.requires_grad_(False)
        model.visual.eval()
    wrapped = DistributedDataParallel(TrainForward(model))
    mine = split(case_batch(groups == "1"), world, rank)
    micro = [split(mine, int(accum), j) for j in range(int(accum))]
    options = StepOptions(lock_image=lock == "1", world_size=world, multi_positive=groups == "1")
    delta, loss = sgd_delta(model, wrapped, micro, options)
    if rank == 0:
        torch.save({"delta": delta, "loss": loss}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
