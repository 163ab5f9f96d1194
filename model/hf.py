"""Hugging Face formats: a ``ChineseCLIPModel`` directory in the official key layout, and a
Chinese BERT/RoBERTa as the text tower's weights.

The whole-model mapping is the inverse of transformers'
``convert_chinese_clip_original_pytorch_to_hf.py``; :func:`model.checkpoints.load_checkpoint`
uses it for ``huggingface`` checkpoints, :func:`model.init.build_initial_model` for
``init_text``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from model.checkpoints import StateDict, torch_load
from model.configs import ModelConfig, TextConfig, VisionConfig, find_architecture, get_config
from runtime.errors import CheckpointError, ConfigError


def hf_config(directory: Path) -> ModelConfig:
    """The model config of a ``ChineseCLIPModel`` directory's ``config.json``."""
    config_path = directory / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        text, vision = raw["text_config"], raw["vision_config"]
        hidden = int(vision["hidden_size"])
        heads = int(vision["num_attention_heads"])
        if int(vision.get("intermediate_size", 4 * hidden)) % hidden:
            raise ValueError("vision intermediate_size is not a multiple of hidden_size")
        if vision.get("hidden_act", "quick_gelu") != "quick_gelu":
            raise ValueError(f"vision hidden_act {vision['hidden_act']!r} is not quick_gelu")
        if text.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"text hidden_act {text['hidden_act']!r} is not gelu")
        config = ModelConfig(
            name="custom",
            embed_dim=int(raw.get("projection_dim", 512)),
            vision=VisionConfig(
                kind="vit",
                image_size=int(vision.get("image_size", 224)),
                width=hidden,
                layers=int(vision["num_hidden_layers"]),
                patch_size=int(vision["patch_size"]),
                head_width=hidden // heads,
                mlp_ratio=int(vision.get("intermediate_size", 4 * hidden)) // hidden,
            ),
            text=TextConfig(
                hidden_size=int(text["hidden_size"]),
                layers=int(text["num_hidden_layers"]),
                heads=int(text["num_attention_heads"]),
                intermediate_size=int(text["intermediate_size"]),
                vocab_size=int(text.get("vocab_size", 21128)),
                max_position_embeddings=int(text.get("max_position_embeddings", 512)),
                type_vocab_size=int(text.get("type_vocab_size", 2)),
                layer_norm_eps=float(text.get("layer_norm_eps", 1e-12)),
            ),
        )
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory}: no config.json in this directory") from exc
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(
            f"{config_path}: not a Chinese CLIP (ChineseCLIPModel) config ({exc})"
        ) from exc
    known = find_architecture(config)
    return get_config(known) if known else config


def hf_to_official(hf: Mapping[str, torch.Tensor]) -> StateDict:
    """Map ``ChineseCLIPModel`` weights to the official layout.

    The inverse of transformers' conversion script: ``text_model.*`` is
    ``bert.*``; the projections are transposed linears; the vision encoder's
    separate q/k/v projections are packed into ``in_proj_*``.
    """
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    vision_names = {
        "vision_model.pre_layrnorm.": "visual.ln_pre.",
        "vision_model.post_layernorm.": "visual.ln_post.",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    }
    layer_parts = {
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
        "self_attn.out_proj.": "attn.out_proj.",
    }
    layer_re = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)")
    for key, value in hf.items():
        if key.endswith(("position_ids", "token_type_ids")) or key.startswith("text_model.pooler."):
            continue
        if key.startswith("text_model."):
            out["bert." + key[len("text_model.") :]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.T.contiguous()
        elif key == "logit_scale":
            out["logit_scale"] = value
        elif m := layer_re.match(key):
            index, rest = m.group(1), m.group(2)
            prefix = f"visual.transformer.resblocks.{index}."
            if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                letter = rest[len("self_attn.")]  # q, k or v
                qkv.setdefault(f"{prefix}|{rest.rsplit('.', 1)[1]}", {})[letter] = value
                continue
            for hf_part, part in layer_parts.items():
                if rest.startswith(hf_part):
                    out[prefix + part + rest[len(hf_part) :]] = value
                    break
            else:
                out[key] = value  # left for check_state_dict to report
        else:
            for hf_name, name in vision_names.items():
                if key.startswith(hf_name):
                    out[name + key[len(hf_name) :]] = value
                    break
            else:
                out[key] = value
    for slot, parts in qkv.items():
        prefix, kind = slot.split("|")
        if set(parts) != {"q", "k", "v"}:
            continue  # incomplete: check_state_dict reports the missing in_proj weight
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def load_hf_weights(directory: Path) -> StateDict:
    """The weights of a Hugging Face directory: ``model.safetensors`` or ``pytorch_model.bin``."""
    safetensors_path = directory / "model.safetensors"
    bin_path = directory / "pytorch_model.bin"
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            weights: StateDict = load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{safetensors_path}: not a readable safetensors file ({exc})"
            ) from exc
        return weights
    if bin_path.is_file():
        loaded = torch_load(bin_path)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{bin_path}: not a state dict")
        return loaded
    raise CheckpointError(
        f"{directory}: no model.safetensors or pytorch_model.bin beside config.json"
    )


def hf_text_weights(path: Path) -> tuple[StateDict, dict[str, object]]:
    """A Hugging Face BERT/RoBERTa (directory or weights file) as ``BertModel`` keys."""
    directory = path if path.is_dir() else path.parent
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{directory}: no config.json (a Hugging Face BERT directory)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not readable JSON ({exc})") from exc
    raw = load_hf_weights(directory)
    state: StateDict = {}
    for key, value in raw.items():
        for prefix in ("bert.", "roberta.", "text_model."):
            key = key.removeprefix(prefix)
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        state[key] = value
    return state, hf_config
