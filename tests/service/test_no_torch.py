"""The serving path runs where importing torch fails: what the serving image installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SERVE_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

app = create_app(Settings(bundle=sys.argv[1], index=sys.argv[2], threads=1))
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
    answer = client.post("/v1/search/text", json={"query": "踢足球的人", "top_k": 3})
    assert answer.status_code == 200, answer.text
    print(len(answer.json()["items"]))
"""


def test_a_search_is_served_in_a_process_without_torch(bundle_dir: Path, index_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TORCH, str(bundle_dir), str(index_root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "3"
