"""AdamW parameter groups and the per-stage learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def exclude_from_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, embeddings' gains and ``logit_scale`` get no weight decay.

    Every tensor with fewer than two dimensions is a bias, a norm's gain or
    shift, a BatchNorm parameter or the temperature; matrices and convolution
    kernels are decayed.
    """
    return param.ndim < 2 or "logit_scale" in name


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients (locked towers are left out)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if exclude_from_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def cosine_lr(step: int, *, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup from ``base_lr / warmup`` to ``base_lr``, then cosine decay to 0.

    ``step`` counts optimizer steps from 0 within the stage; ``total`` is the
    stage's length in steps.
    """
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
