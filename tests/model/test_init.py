"""Starting weights of a model: towers from an image checkpoint and a Hugging Face BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoints import save_checkpoint
from model.init import build_initial_model
from model.modeling import build_model
from runtime.errors import CheckpointError
from tests.conftest import tiny_config


def test_towers_initialise_from_an_image_checkpoint_and_a_hf_bert(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config("vit")
    torch.manual_seed(5)
    source = build_model(cfg)
    image_ckpt = save_checkpoint(source, tmp_path / "image.pt")
    bert_cfg = transformers.BertConfig(
        vocab_size=cfg.text.vocab_size,
        hidden_size=cfg.text.hidden_size,
        num_hidden_layers=cfg.text.layers,
        num_attention_heads=cfg.text.heads,
        intermediate_size=cfg.text.intermediate_size,
    )
    bert = transformers.BertModel(bert_cfg)  # with a pooler, which must be dropped
    bert.save_pretrained(tmp_path / "roberta")
    model, report = build_initial_model(
        cfg, init_image=str(image_ckpt), init_text=str(tmp_path / "roberta")
    )
    theirs = bert.state_dict()
    assert torch.equal(
        model.bert.encoder.layer[1].output.dense.weight,
        theirs["encoder.layer.1.output.dense.weight"],
    )
    assert torch.equal(model.visual.proj, source.visual.proj)
    assert not torch.equal(model.text_projection, source.text_projection)  # fresh
    assert any(k.startswith("pooler.") for k in report.ignored)
    assert not report.missing and not report.unexpected

    # A BERT with fewer layers leaves weights missing: refused unless allowed.
    small = transformers.BertModel(
        bert_cfg.__class__(**{**bert_cfg.to_dict(), "num_hidden_layers": 1})
    )
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        build_initial_model(cfg, init_text=str(tmp_path / "small"))
