"""The architecture as docs/architecture.md states it: import rules, and a layout that
agrees with the tree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = sorted(
    p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"
)


def test_the_import_rules_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _first_column(markdown: str, heading: str) -> set[str]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([\w.-]+)/`", line.split("|")[1]))
    return names


def test_the_architecture_and_the_readme_list_every_package() -> None:
    assert {"runtime", "sources", "model", "trainer", "index", "service"} <= set(PACKAGES)
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    documented = _first_column(doc, "## Packages")
    assert set(PACKAGES) <= documented, set(PACKAGES) - documented
    assert documented <= {p.name for p in ROOT.iterdir() if p.is_dir()}, "a package that is gone"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = _first_column(readme, "## Layout")
    assert set(PACKAGES) <= listed, set(PACKAGES) - listed
    assert listed <= {p.name for p in ROOT.iterdir() if p.is_dir()}, "the README lists a ghost"
