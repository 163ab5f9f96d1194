"""transformers' ChineseCLIPModel as a reference, filled with our weights.

The weight mapping is that of transformers' own conversion script,
``models/chinese_clip/convert_chinese_clip_original_pytorch_to_hf.py``: the text
model's parameters are ``bert.<name>``; ``text_projection`` and ``visual.proj``
are transposed into linear weights; the vision layers take ``ln_1``/``ln_2``,
``mlp.c_fc``/``mlp.c_proj`` and ``attn.out_proj`` as they are, and the packed
``attn.in_proj_*`` split in three (q, k, v); ``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre`` and ``ln_post`` map one to one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from model.modeling import ChineseCLIP


def to_hf_model(model: ChineseCLIP) -> Any:
    """transformers' ChineseCLIPModel holding ``model``'s weights, converted as its script does."""

    cfg = model.config
    hf_config = ChineseCLIPConfig(
        text_config={
            "vocab_size": cfg.text.vocab_size,
            "hidden_size": cfg.text.hidden_size,
            "num_hidden_layers": cfg.text.layers,
            "num_attention_heads": cfg.text.heads,
            "intermediate_size": cfg.text.intermediate_size,
        },
        vision_config={
            "hidden_size": cfg.vision.width,
            "intermediate_size": cfg.vision.width * 4,
            "num_hidden_layers": cfg.vision.layers,
            "num_attention_heads": cfg.vision.heads,
            "image_size": cfg.vision.image_size,
            "patch_size": cfg.vision.patch_size,
            "projection_dim": cfg.embed_dim,
        },
        projection_dim=cfg.embed_dim,
    )
    hf = ChineseCLIPModel(hf_config)
    # The mapping of transformers' convert_chinese_clip_original_pytorch_to_hf.py.
    sd = model.state_dict()
    with torch.no_grad():
        for name, param in hf.text_model.named_parameters():
            param.copy_(sd[f"bert.{name}"])
        hf.text_projection.weight.copy_(sd["text_projection"].T)
        hf.visual_projection.weight.copy_(sd["visual.proj"].T)
        vm = hf.vision_model
        vm.pre_layrnorm.weight.copy_(sd["visual.ln_pre.weight"])
        vm.pre_layrnorm.bias.copy_(sd["visual.ln_pre.bias"])
        vm.post_layernorm.weight.copy_(sd["visual.ln_post.weight"])
        vm.post_layernorm.bias.copy_(sd["visual.ln_post.bias"])
        vm.embeddings.patch_embedding.weight.copy_(sd["visual.conv1.weight"])
        vm.embeddings.class_embedding.copy_(sd["visual.class_embedding"])
        vm.embeddings.position_embedding.weight.copy_(sd["visual.positional_embedding"])
        for i, layer in enumerate(vm.encoder.layers):
            p = f"visual.transformer.resblocks.{i}."
            for hf_part, part in (
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
                ("self_attn.out_proj", "attn.out_proj"),
            ):
                module = layer.get_submodule(hf_part)
                module.weight.copy_(sd[f"{p}{part}.weight"])
                module.bias.copy_(sd[f"{p}{part}.bias"])
            for kind in ("weight", "bias"):
                q, k, v = sd[f"{p}attn.in_proj_{kind}"].chunk(3)
                getattr(layer.self_attn.q_proj, kind).copy_(q)
                getattr(layer.self_attn.k_proj, kind).copy_(k)
                getattr(layer.self_attn.v_proj, kind).copy_(v)
        hf.logit_scale.copy_(sd["logit_scale"])
    return hf.eval()


def save_as_hf(model: ChineseCLIP, directory: Path) -> Path:
    """A ChineseCLIPModel directory written by transformers' own ``save_pretrained``."""
    to_hf_model(model).save_pretrained(directory)
    return directory
