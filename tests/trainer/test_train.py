"""The trainer end to end on real data: locking, checkpoints, initialisation, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from model.checkpoints import load_checkpoint, save_checkpoint
from model.modeling import build_model
from tests.conftest import ROOT, official_kwargs, tiny_config
from tests.official import official_clip
from trainer import main


def _write(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return path


def _muge_run(tmp_path: Path, data_dir: Path, init: Path) -> dict[str, Any]:
    muge = str(data_dir / "muge-sample")
    return {
        "run_dir": str(tmp_path / "run"),
        "model": {"config": tiny_config("resnet").to_dict(), "init": str(init)},
        "data": {"kind": "official", "path": muge, "split": "valid", "workers": 0},
        "stages": [
            {"name": "lit", "lock_image": True, "lr": 1e-3, "batch_size": 2, "steps": 3},
            {"name": "both", "lr": 1e-3, "batch_size": 2, "steps": 2, "warmup": 1},
        ],
        "validation": {"data": {"kind": "official", "path": muge, "split": "valid"}},
        "log_every": 1,
        "torch_threads": 1,
    }


def _initial_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = build_model(tiny_config("resnet"))
    # Non-trivial BatchNorm statistics, so "unchanged" means something.
    for module in model.visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    path = save_checkpoint(model, tmp_path / "init.pt")
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_stage_one_locks_the_image_tower_and_stage_two_trains_it(
    tmp_path: Path, data_dir: Path
) -> None:
    init, initial = _initial_checkpoint(tmp_path)
    config = _write(tmp_path / "run.yaml", _muge_run(tmp_path, data_dir, init))
    assert main(["--config", str(config), "-q"]) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    lit = torch.load(ckpts / "lit.pt", weights_only=True)["state_dict"]
    both = torch.load(ckpts / "both.pt", weights_only=True)["state_dict"]
    visual = [k for k in initial if k.startswith("visual.")]
    assert any("running_mean" in k for k in visual) and any("num_batches" in k for k in visual)
    for key in visual:  # parameters and BatchNorm buffers, bit for bit
        assert torch.equal(lit[key], initial[key]), key
    assert not torch.equal(
        lit["bert.embeddings.word_embeddings.weight"],
        initial["bert.embeddings.word_embeddings.weight"],
    )
    assert not torch.equal(lit["text_projection"], initial["text_projection"])
    for key in ("visual.conv1.weight", "visual.attnpool.c_proj.weight", "visual.bn1.running_mean"):
        assert not torch.equal(both[key], initial[key]), key
    assert not torch.equal(both["text_projection"], lit["text_projection"])

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4, 5]
    assert {x["stage"] for x in lines if x["kind"] == "val"} == {"lit", "both"}
    assert all(0 <= x["mean_recall"] <= 100 for x in lines if x["kind"] == "val")
    assert (tmp_path / "run" / "config.yaml").is_file() and (ckpts / "best.pt").is_file()


def test_trainer_checkpoints_load_in_the_official_code_and_ours(
    tmp_path: Path, data_dir: Path
) -> None:
    init, _ = _initial_checkpoint(tmp_path)
    config = _write(tmp_path / "run.yaml", _muge_run(tmp_path, data_dir, init))
    assert main(["--config", str(config), "-q", "stages.both.steps=1"]) == 0
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)["state_dict"]
    official = official_clip().model.CLIP(**official_kwargs("resnet"))
    official.load_state_dict(state, strict=False)  # the official model adds bert.pooler
    ours = load_checkpoint(path).model
    images = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[101, 2769, 4263, 102, 0], [101, 4510, 102, 0, 0]])
    official.eval()
    with torch.no_grad():
        ref_img = official.encode_image(images)
        ref_txt = official.encode_text(ids)
        torch.testing.assert_close(ours.encode_image(images, normalize=False), ref_img)
        torch.testing.assert_close(ours.encode_text(ids, normalize=False), ref_txt)
    missing = set(official.state_dict()) - set(state)
    assert all(k.startswith("bert.pooler.") for k in missing)


# ------------------------------------------------------------------- resume


def _cifar_run(tmp_path: Path, data_dir: Path, name: str) -> list[str]:
    cifar = data_dir / "cifar10"
    tree = {
        "run_dir": str(tmp_path / name),
        "seed": 1,
        "torch_threads": 1,
        "model": {
            "config": {
                "name": "resume-test",
                "embed_dim": 32,
                "vision": {
                    "kind": "vit",
                    "image_size": 32,
                    "width": 64,
                    "layers": 1,
                    "patch_size": 8,
                },
                "text": {"hidden_size": 64, "layers": 1, "heads": 1, "intermediate_size": 128},
            },
            "patch_dropout": 0.25,  # randomness that the resumed run must replay
        },
        "data": {
            "kind": "imagefolder",
            "path": str(cifar / "test.tar.gz"),
            "class_names": str(cifar / "labels_zh.tsv"),
            "workers": 2,
            "augment": {"scale": [0.5, 1.0], "hflip": 0.5},
        },
        "stages": [
            {"name": "lit", "lock_image": True, "lr": 1e-3, "batch_size": 16, "steps": 8},
            {"name": "both", "lr": 1e-3, "batch_size": 16, "steps": 40, "accum_freq": 2},
        ],
        "loss": {"multi_positive": True},
        "log_every": 1,
        "save_every": 10,
    }
    config = _write(tmp_path / f"{name}.yaml", tree)
    return [sys.executable, "-m", "cnclip", "train", "--config", str(config), "-q"]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {x["step"]: x["loss"] for x in map(json.loads, lines) if x["kind"] == "train"}


def test_a_killed_run_resumes_exactly(tmp_path: Path, data_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(
        _cifar_run(tmp_path, data_dir, "whole"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    cmd = _cifar_run(tmp_path, data_dir, "killed")
    # Killed twice: after the stage boundary (resumes from the stage-end checkpoint
    # of step 8), then in the middle of stage two (resumes from step 18).
    for kill_at in (12, 25):
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = (
                _losses(tmp_path / "killed")
                if (tmp_path / "killed" / "metrics.jsonl").is_file()
                else {}
            )
            if max(done, default=0) >= kill_at:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert max(_losses(tmp_path / "killed")) < 48, "the run finished before it was killed"

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = _losses(tmp_path / "whole"), _losses(tmp_path / "killed")
    assert sorted(again) == list(range(1, 49))  # no step lost or logged twice
    assert again == whole  # the resumed curve continues the uninterrupted one exactly
    final = [
        torch.load(tmp_path / r / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
        for r in ("whole", "killed")
    ]
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key


def test_resume_drops_later_and_half_written_metric_lines(tmp_path: Path) -> None:
    from trainer.train import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": s} for s in (1, 2, 3, 4)]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "train", "st'
    path.write_text(text, encoding="utf-8")
    _truncate_metrics(path, 2)
    kept = [json.loads(x)["step"] for x in path.read_text(encoding="utf-8").splitlines()]
    assert kept == [1, 2]
