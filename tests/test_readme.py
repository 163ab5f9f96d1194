"""The README's runnable example (no weights at hand) runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import ROOT


def test_readme_random_checkpoint_example_runs(data_dir: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if "random-vit-b-16.pt" in b]
    script = block.replace(".venv/bin/", str(Path(sys.executable).parent) + "/").replace(
        "../shared/data", str(data_dir)
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 x 512 float32 embeddings of images (ViT-B-16) to photo.npy" in result.stderr
    vector = np.load(tmp_path / "photo.npy")
    assert vector.shape == (1, 512)
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-6)
