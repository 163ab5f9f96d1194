"""One optimizer step over a global contrastive batch.

The global batch of a step is ``world_size x accum_freq`` micro-batches. With
``accum_freq > 1`` the step follows the official ``accum_freq`` scheme (and
open_clip's): a first pass without gradients computes every micro-batch's
features, which serve as negatives; then each micro-batch is run again with
gradients and the loss over the *whole* batch is back-propagated into it. The
random state is replayed for the second pass, so dropout and patch dropout
draw the same masks and the gradient equals the full-batch gradient.

Gradient bookkeeping (checked by the tests against one process on the full
batch):

* every rank computes the full global loss ``L`` with only its own live
  features carrying a gradient (:func:`trainer.loss.gather_features`), and
  back-propagates ``world_size x L``; DDP's average then yields ``dL/dtheta``;
* ``logit_scale`` appears in every pass on every rank, so its gradient path is
  scaled by ``1 / (world_size x accum_freq)`` to count exactly once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.modeling import ChineseCLIP
from model.modeling_vision import frozen_batchnorm_stats
from trainer.loss import contrastive_loss, gather_features, retrieval_accuracy


@dataclass
class MicroBatch:
    """``images`` [b, 3, N, N] float, ``input_ids`` [b, L] int64, ``groups`` [b] int64 or None."""

    images: torch.Tensor
    input_ids: torch.Tensor
    groups: torch.Tensor | None = None

    def to(self, device: torch.device) -> MicroBatch:
        groups = None if self.groups is None else self.groups.to(device, non_blocking=True)
        return MicroBatch(
            self.images.to(device, non_blocking=True),
            self.input_ids.to(device, non_blocking=True),
            groups,
        )


@dataclass
class StepResult:
    loss: float
    acc_i2t: float
    acc_t2i: float
    grad_norm: float
    skipped: bool  # fp16 overflow: the scaler skipped the update


class TrainForward(nn.Module):
    """What DDP wraps: image (optional) and text features plus ``exp(logit_scale)``.

    Routing every gradient-carrying forward through one module lets DDP see
    each use of the parameters it synchronises.
    """

    def __init__(self, model: ChineseCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor | None, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        image_features = None if images is None else self.model.encode_image(images)
        return image_features, self.model.encode_text(input_ids), self.model.logit_scale.exp()


@dataclass
class StepOptions:
    lock_image: bool = False
    world_size: int = 1
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    multi_positive: bool = False


@contextlib.contextmanager
def _rng_replay(state: tuple[torch.Tensor, list[torch.Tensor]] | None) -> Iterator[None]:
    """Run the block with a saved CPU/CUDA random state (None: the current one)."""
    if state is None:
        yield
        return
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    yield


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _gather_groups(groups: list[torch.Tensor | None]) -> torch.Tensor | None:
    if any(g is None for g in groups):
        return None
    return torch.cat([gather_features(g) for g in groups if g is not None])


def train_step(
    wrapped: nn.Module,
    model: ChineseCLIP,
    micro_batches: list[MicroBatch],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    options: StepOptions,
) -> StepResult:
    """Forward, backward and update for one global batch; returns the global loss.

    ``wrapped`` is ``TrainForward(model)``, possibly inside DDP. Every rank
    passes the same number of equally sized micro-batches.
    """
    device = micro_batches[0].images.device
    accum = len(micro_batches)
    scale_share = 1.0 / (options.world_size * accum)
    optimizer.zero_grad(set_to_none=True)

    # Pass 1, without gradients: a locked image tower's features, and with
    # accumulation every micro-batch's features (the negatives of pass 2).
    cached_img: list[torch.Tensor] = []
    cached_txt: list[torch.Tensor] = []
    rng_states: list[tuple[torch.Tensor, list[torch.Tensor]] | None] = []
    with torch.no_grad(), _autocast(device, options.amp_dtype):
        for batch in micro_batches:
            if options.lock_image:  # the caller keeps the locked tower in eval mode
                cached_img.append(gather_features(model.encode_image(batch.images).float()))
            if accum == 1:
                rng_states.append(None)
                continue
            rng_states.append(_rng_state())  # replayed in pass 2: same dropout masks
            with frozen_batchnorm_stats(model.visual):  # BN statistics move in pass 2 only
                if not options.lock_image:
                    cached_img.append(gather_features(model.encode_image(batch.images).float()))
                cached_txt.append(gather_features(model.encode_text(batch.input_ids).float()))
    groups = _gather_groups([b.groups for b in micro_batches])

    # Pass 2: each micro-batch with gradients, against the whole batch.
    total_loss = 0.0
    last_img: torch.Tensor | None = None
    last_txt: torch.Tensor | None = None
    for j, batch in enumerate(micro_batches):
        sync = j == accum - 1
        no_sync = getattr(wrapped, "no_sync", None)
        sync_ctx = contextlib.nullcontext() if sync or no_sync is None else no_sync()
        with sync_ctx:  # DDP reduces gradients after the last micro-batch only
            with _rng_replay(rng_states[j]), _autocast(device, options.amp_dtype):
                images = None if options.lock_image else batch.images
                live_img, live_txt, scale = wrapped(images, batch.input_ids)
            # The loss in fp32, outside autocast.
            img_block = cached_img[j] if live_img is None else gather_features(live_img.float())
            txt_block = gather_features(live_txt.float())
            all_img = torch.cat([*cached_img[:j], img_block, *cached_img[j + 1 :]])
            all_txt = torch.cat([*cached_txt[:j], txt_block, *cached_txt[j + 1 :]])
            scale = scale.float()
            scale = scale.detach() + (scale - scale.detach()) * scale_share
            loss = contrastive_loss(
                all_img, all_txt, scale, groups if options.multi_positive else None
            )
            scaled = loss * options.world_size
            if scaler is not None:
                scaled = scaler.scale(scaled)
            scaled.backward()  # type: ignore[no-untyped-call]
        total_loss = float(loss.detach())
        last_img, last_txt = all_img.detach(), all_txt.detach()

    params = [p for p in model.parameters() if p.requires_grad]
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = options.grad_clip if options.grad_clip is not None else math.inf
    grad_norm = float(nn.utils.clip_grad_norm_(params, max_norm))  # inf: measure only
    skipped = False
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        optimizer.step()
    with torch.no_grad():  # the official clamp: a temperature of at least 1/100
        model.logit_scale.clamp_(0, math.log(100))
    assert last_img is not None and last_txt is not None
    acc_i2t, acc_t2i = retrieval_accuracy(
        last_img, last_txt, groups if options.multi_positive else None
    )
    return StepResult(total_loss, acc_i2t, acc_t2i, grad_norm, skipped)
