"""Shared set-up of the gradient-equivalence tests (imported by the torchrun worker too)."""

from __future__ import annotations

import dataclasses

import torch

from model.configs import ModelConfig, TextConfig, VisionConfig
from model.modeling import ChineseCLIP, build_model
from trainer.step import MicroBatch, StepOptions, TrainForward, train_step

GLOBAL_BATCH = 8


def case_model(family: str, dropout: float = 0.0) -> ChineseCLIP:
    """A tiny seeded model; dropout off so that batch splits cannot change the maths."""
    if family == "vit":
        vision = VisionConfig(kind="vit", image_size=32, width=64, layers=2, patch_size=8)
    else:
        vision = VisionConfig(kind="resnet", image_size=32, width=16, resnet_layers=(1, 1, 1, 1))
    text = TextConfig(
        hidden_size=64,
        layers=2,
        heads=2,
        intermediate_size=128,
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )
    torch.manual_seed(0)
    return build_model(ModelConfig(name=f"case-{family}", embed_dim=32, vision=vision, text=text))


def case_batch(groups: bool = False) -> MicroBatch:
    """The global batch: seeded images, token ids of varying lengths, optional groups."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    ids = torch.randint(106, 8000, (GLOBAL_BATCH, 12), generator=g)
    ids[:, 0] = 101
    for row in range(GLOBAL_BATCH):
        ids[row, 3 + row :] = 0  # different lengths, padded with 0
    group_ids = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2]) if groups else None
    return MicroBatch(images, ids, group_ids)


def split(batch: MicroBatch, parts: int, index: int) -> MicroBatch:
    size = batch.images.shape[0] // parts
    sl = slice(index * size, (index + 1) * size)
    return MicroBatch(
        batch.images[sl], batch.input_ids[sl], None if batch.groups is None else batch.groups[sl]
    )


def sgd_delta(
    model: ChineseCLIP,
    wrapped: torch.nn.Module,
    micro: list[MicroBatch],
    options: StepOptions,
) -> tuple[dict[str, torch.Tensor], float]:
    """One train_step with SGD(lr=1): the parameter change is minus the gradient."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    result = train_step(wrapped, model, micro, optimizer, None, options)
    # The clamp after the step may move logit_scale; it stays far below ln 100 here.
    delta = {k: (v.detach() - before[k]) for k, v in model.named_parameters()}
    return delta, result.loss


def single_process_delta(
    family: str, accum: int, lock_image: bool, groups: bool
) -> tuple[dict[str, torch.Tensor], float]:
    model = case_model(family)
    model.train()
    if lock_image:
        model.visual.requires_grad_(False)
        model.visual.eval()
    batch = case_batch(groups)
    micro = [split(batch, accum, j) for j in range(accum)]
    options = dataclasses.replace(
        StepOptions(), lock_image=lock_image, multi_positive=groups, world_size=1
    )
    return sgd_delta(model, TrainForward(model), micro, options)
