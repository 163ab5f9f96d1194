"""Symmetric InfoNCE over the global batch, with a learned temperature.

Every rank assembles the features of the whole global batch: its own live
features (which keep their gradient) in its own slot, and everybody else's as
plain tensors from an all-gather. Each rank then computes the full ``N x N``
loss. Rank ``r`` therefore gets exactly ``dL/df_r`` for its own features;
the trainer multiplies the loss by the world size so that DDP's gradient
*average* becomes the exact gradient of the global loss (see ``trainer.step``),
which the two-process test checks against one process on the same batch.

``multi_positive``: when several pairs of the batch share a class (captions
made from class names, duplicated captions), plain InfoNCE pushes them apart
as negatives. With group ids, every pair of the same group counts as a
positive and the target of a row is uniform over its positives (as in UniCL,
Yang et al. 2022). Without group ids it is the plain CLIP loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """All ranks' ``[n, d]`` features concatenated in rank order: ``[world * n, d]``.

    This rank's rows are the live tensor (gradient kept); the others carry none.
    Every rank must pass the same ``n``. Without an initialised process group
    the input is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[dist.get_rank()] = features
    return torch.cat(gathered, dim=0)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the image-to-text and text-to-image cross-entropies.

    Args:
        image_features: ``[N, d]`` L2-normalized, row ``i`` pairs with text row ``i``.
        text_features: ``[N, d]`` L2-normalized.
        logit_scale: the *exponentiated* scale (``exp(model.logit_scale)``), a scalar.
        groups: optional ``[N]`` int64 group ids; equal ids are positives of each other.
    """
    logits = logit_scale * image_features.float() @ text_features.float().t()
    if groups is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    positives = (groups[:, None] == groups[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    # The positive relation is symmetric, so the column targets are the same matrix.
    return (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.t(), targets)) / 2


def retrieval_accuracy(
    image_features: torch.Tensor, text_features: torch.Tensor, groups: torch.Tensor | None = None
) -> tuple[float, float]:
    """In-batch top-1 accuracy (image->text, text->image), a cheap training signal.

    With ``groups`` a prediction counts when it lands in the same group.
    """
    with torch.no_grad():
        sims = image_features.float() @ text_features.float().t()
        i2t, t2i = sims.argmax(dim=1), sims.argmax(dim=0)
        if groups is None:
            target = torch.arange(sims.shape[0], device=sims.device)
            return (i2t == target).float().mean().item(), (t2i == target).float().mean().item()
        return (
            (groups[i2t] == groups).float().mean().item(),
            (groups[t2i] == groups).float().mean().item(),
        )
