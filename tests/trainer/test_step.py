"""The loss against hand computation; accumulation and DDP against the full batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.trainer.step_cases import single_process_delta
from trainer.loss import contrastive_loss


def _hand_loss(
    img: list[list[float]], txt: list[list[float]], scale: float, groups: list[int]
) -> float:
    """Symmetric InfoNCE written out with plain floats."""
    n = len(img)
    logits = [
        [scale * sum(a * b for a, b in zip(img[i], txt[j], strict=True)) for j in range(n)]
        for i in range(n)
    ]

    def direction(rows: list[list[float]]) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            log_norm = math.log(sum(math.exp(v) for v in row))
            positives = [j for j in range(n) if groups[j] == groups[i]]
            total += -sum(row[j] - log_norm for j in positives) / len(positives)
        return total / n

    columns = [[logits[i][j] for i in range(n)] for j in range(n)]
    return (direction(logits) + direction(columns)) / 2


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


IMG = _unit([[1.0, 0.0, 0.5], [0.2, 1.0, 0.0], [0.0, 0.3, 1.0], [0.6, 0.6, 0.1]])
TXT = _unit([[0.9, 0.1, 0.4], [0.0, 1.0, 0.2], [0.1, 0.1, 1.0], [1.0, 0.0, 0.0]])


def test_loss_matches_hand_computation() -> None:
    got = contrastive_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(10.0))
    assert got.item() == pytest.approx(_hand_loss(IMG, TXT, 10.0, [0, 1, 2, 3]), rel=1e-6)


def test_multi_positive_loss_matches_hand_computation() -> None:
    groups = [0, 1, 0, 2]
    got = contrastive_loss(
        torch.tensor(IMG), torch.tensor(TXT), torch.tensor(7.5), torch.tensor(groups)
    )
    assert got.item() == pytest.approx(_hand_loss(IMG, TXT, 7.5, groups), rel=1e-6)
    # With distinct groups it is exactly the plain loss.
    plain = contrastive_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(7.5))
    distinct = contrastive_loss(
        torch.tensor(IMG), torch.tensor(TXT), torch.tensor(7.5), torch.arange(4)
    )
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    changed = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-6, msg=key)
        changed += bool(a[key].abs().max() > 0)
    assert changed > 10  # the step really moved the weights


@pytest.mark.parametrize(
    ("family", "lock_image", "groups"),
    [("vit", False, False), ("vit", False, True), ("resnet", True, False)],
)
def test_accumulation_gives_the_full_batch_gradient(
    family: str, lock_image: bool, groups: bool
) -> None:
    # ResNet is tested locked only: BatchNorm's batch statistics depend on the split.
    full, full_loss = single_process_delta(family, 1, lock_image, groups)
    accum, accum_loss = single_process_delta(family, 4, lock_image, groups)
    assert accum_loss == pytest.approx(full_loss, rel=1e-5)
    _assert_same(full, accum)


def test_locked_step_leaves_the_image_tower_alone() -> None:
    delta, _ = single_process_delta("resnet", 2, True, False)
    visual = [k for k in delta if k.startswith("visual.")]
    assert visual and all(bool((delta[k] == 0).all()) for k in visual)
    assert any(bool(delta[k].abs().max() > 0) for k in delta if k.startswith("bert."))


@pytest.mark.parametrize(("accum", "lock", "groups"), [(1, "0", "0"), (2, "0", "1"), (1, "1", "0")])
def test_two_process_gloo_matches_one_process(
    tmp_path: Path, accum: int, lock: str, groups: str
) -> None:
    out = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "tests" / "trainer" / "ddp_worker.py"),
        "vit",
        str(accum),
        lock,
        groups,
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    reference, loss = single_process_delta("vit", 1, lock == "1", groups == "1")
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    _assert_same(reference, result["delta"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_step_on_cuda(dtype: torch.dtype) -> None:
    from tests.trainer.step_cases import case_batch, case_model
    from trainer.step import MicroBatch, StepOptions, TrainForward, train_step

    device = torch.device("cuda")
    model = case_model("vit").to(device).train()
    batch = case_batch(groups=True)
    micro = [MicroBatch(batch.images, batch.input_ids, batch.groups).to(device)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    options = StepOptions(amp_dtype=dtype, multi_positive=True, grad_clip=1.0)
    before = model.text_projection.detach().clone()
    result = train_step(TrainForward(model), model, micro, optimizer, scaler, options)
    assert math.isfinite(result.loss) and result.grad_norm > 0
    assert not torch.equal(model.text_projection.detach(), before)
