"""The Chinese CLIP two-tower model, one class for all five architectures.

State-dict keys are those of the official Chinese-CLIP code (``visual.*``,
``bert.*``, ``text_projection``, ``logit_scale``), so official checkpoints load
directly and ours load into the official code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.configs import ModelConfig
from model.modeling_text import BertModel
from model.modeling_vision import ModifiedResNet, build_vision_tower


class ChineseCLIP(nn.Module):
    """Image and text towers projected into one ``embed_dim`` space.

    ``encode_image``: float images ``[B, 3, N, N]`` (preprocessed, see
    :mod:`runtime.images`) -> ``[B, embed_dim]``. ``encode_text``: token ids
    ``[B, L]`` int64 with 0 as padding (see :mod:`runtime.tokenizer`) ->
    ``[B, embed_dim]``. Both L2-normalize unless ``normalize=False``.
    ``logit_scale`` is the log of the softmax temperature's inverse (ln 100 for
    trained models).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_vision_tower(config.vision, config.embed_dim)
        self.bert = BertModel(config.text)
        self.text_projection = nn.Parameter(
            torch.randn(config.text.hidden_size, config.embed_dim) * config.text.hidden_size**-0.5
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def init_weights(self) -> None:
        """The official initialisation (used when training from scratch and in tests)."""
        self.bert.init_weights()
        nn.init.normal_(self.text_projection, std=self.config.text.hidden_size**-0.5)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            for name, param in self.visual.named_parameters():
                # Zero-init the last BatchNorm of each residual branch.
                if name.startswith("layer") and name.endswith("bn3.weight"):
                    nn.init.zeros_(param)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    def set_grad_checkpointing(self, image: bool | None = None, text: bool | None = None) -> None:
        """Switch activation checkpointing per tower (``None`` leaves a tower as it is)."""
        if image is not None:
            self.visual.set_grad_checkpointing(image)
        if text is not None:
            self.bert.set_grad_checkpointing(text)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """images: [B, 3, N, N] float -> features [B, embed_dim]."""
        features: torch.Tensor = self.visual(images)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """input_ids: [B, L] int64, 0 = padding -> features [B, embed_dim].

        The feature is the last hidden state at ``[CLS]`` times ``text_projection``.
        """
        hidden = self.bert(input_ids, attention_mask=input_ids != 0)
        features = hidden[:, 0, :].to(self.text_projection.dtype) @ self.text_projection
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized image features, text features and ``exp(logit_scale)``."""
        return self.encode_image(images), self.encode_text(input_ids), self.logit_scale.exp()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: ModelConfig, *, init: bool = True) -> ChineseCLIP:
    """A model with freshly initialised weights (``init=False``: PyTorch defaults only)."""
    model = ChineseCLIP(config)
    if init:
        model.init_weights()
    return model
