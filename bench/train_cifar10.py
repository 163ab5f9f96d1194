"""The tiny CIFAR-10 recipe end to end: wall time and zero-shot accuracy on this machine.

Run from the repository root::

    .venv/bin/python bench/train_cifar10.py [--run-dir runs/bench-cifar10-tiny] [KEY=VALUE ...]

It runs ``cnclip train --config trainer/recipes/cifar10-tiny.yaml`` (both stages) in a
child process, times it, then reads the run's ``metrics.jsonl``: the zero-shot top-1
accuracy on the 10,000 CIFAR-10 test images (Chinese class names, prompt ensembling
over the recipe's templates) after the first stage and after the stage-2 continuation,
and the training wall time of each stage.

Then it evaluates both stage checkpoints again with ``cnclip eval zeroshot`` (templates
``captions``, the ones the trainer validates with) and exports the final one to fp32,
fp16 and int8 bundles evaluated side by side: the evaluation command must give the
figures the trainer recorded, and the bundles show what each precision costs.

The tables are printed and written to ``bench/results/cifar10-tiny.md``. ``--reuse``
keeps a finished run in ``--run-dir`` and only evaluates again. Extra ``KEY=VALUE``
arguments are passed to the trainer as config overrides (for example
``stages.scratch.epochs=1`` for a quick try; the results file is only written for the
recipe as shipped).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

RECIPE = "trainer/recipes/cifar10-tiny.yaml"
DATA = ROOT.parent / "shared" / "data" / "cifar10"


def _stage_summary(lines: list[dict[str, object]], stage: str) -> dict[str, object]:
    train = [x for x in lines if x["kind"] == "train" and x["stage"] == stage]
    val = [x for x in lines if x["kind"] == "val" and x["stage"] == stage]
    if not train or not val:
        raise SystemExit(f"stage {stage}: no metrics logged (did the run fail?)")
    return {"steps": train[-1]["stage_step"], "end_s": train[-1]["elapsed_s"], "val": val[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run-dir", default="runs/bench-cifar10-tiny")
    parser.add_argument("--reuse", action="store_true", help="evaluate a finished run again")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run_dir = ROOT / args.run_dir
    metrics = run_dir / "metrics.jsonl"
    done = (run_dir / "checkpoints" / "stage2.pt").is_file() and metrics.is_file()
    wall: float | None = None  # a reused run that did not record it
    if args.reuse and done:
        if (run_dir / "wall_s.txt").is_file():
            wall = float((run_dir / "wall_s.txt").read_text())
    else:
        wall = _train(run_dir, args)
        if wall is None:
            return 1
    lines = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines()]
    first = _stage_summary(lines, "scratch")
    second = _stage_summary(lines, "stage2")
    shown = " ".join(["cnclip", "train", "--config", RECIPE, *args.overrides])
    report = _evaluate(run_dir)
    table = "\n".join(
        [*_training_table(shown, wall, first, second), *_evaluation_table(report, first, second)]
    )
    print(table)
    if not args.overrides:
        (ROOT / "bench" / "results" / "cifar10-tiny.md").write_text(table, encoding="utf-8")
    return 0


def _train(run_dir: Path, args: argparse.Namespace) -> float | None:
    """Train the recipe into ``run_dir`` (from scratch); the wall time, None on failure."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [
        sys.executable,
        "-m",
        "cnclip",
        "train",
        "--config",
        RECIPE,
        f"run_dir={args.run_dir}",
        *args.overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        return None
    (run_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def _training_table(
    shown: str, wall: float | None, first: dict[str, Any], second: dict[str, Any]
) -> list[str]:
    first_val, second_val = first["val"], second["val"]
    assert isinstance(first_val, dict) and isinstance(second_val, dict)
    took = "not recorded (a reused run)" if wall is None else f"{wall / 60:.1f} min"
    return [
        "# Tiny CIFAR-10 recipe: zero-shot accuracy after training from scratch",
        "",
        f"- command: `.venv/bin/python bench/train_cifar10.py` (runs `{shown}`)",
        f"- machine: {describe()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- whole command wall time (start-up, data indexing, both stages, validations, "
        f"checkpoints): {took}",
        "",
        "| after stage | steps | training wall time | zero-shot top-1 | top-5 | mean per class |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| scratch (both towers from random weights) | {first['steps']} | "
        f"{float(first['end_s']) / 60:.1f} min | {first_val['top1']:.2f}% | "
        f"{first_val['top5']:.2f}% | {first_val['mean_per_class']:.2f}% |",
        f"| stage2 (continuation, lr 2e-4) | {second['steps']} | "
        f"{(float(second['end_s'])) / 60:.1f} min (cumulative) | {second_val['top1']:.2f}% | "
        f"{second_val['top5']:.2f}% | {second_val['mean_per_class']:.2f}% |",
        "",
        "Zero-shot: the 10,000 CIFAR-10 test images against the ten Chinese class names "
        "(../shared/data/cifar10/labels_zh.tsv), each embedded with every caption template "
        "of the recipe, normalized, averaged and renormalized; top-1 of the cosine. The "
        "training wall time counts the training steps and the validations in between.",
        "",
    ]


def _evaluate(run_dir: Path) -> dict[str, Any]:
    """``cnclip eval zeroshot`` on both stage checkpoints and the final one's bundles."""
    checkpoints = run_dir / "checkpoints"
    out = run_dir / "eval"
    command = [sys.executable, "-m", "cnclip", "eval", "zeroshot"]
    command += [
        "--model",
        str(checkpoints / "stage2.pt"),
        "--model",
        str(checkpoints / "scratch.pt"),
    ]
    command += ["--export", "fp32,fp16,int8", "--data", str(DATA / "test.tar.gz")]
    command += ["--labels", str(DATA / "labels_zh.tsv"), "--templates", "captions"]
    # The validation's batch size: the same batches give bit-identical embeddings.
    command += ["--batch-size", "500", "--text-batch-size", "500", "--out", str(out), "-q"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    report: dict[str, Any] = json.loads((out / "zeroshot.json").read_text(encoding="utf-8"))
    report["wall_s"] = time.perf_counter() - start
    shown = " ".join(["cnclip", *command[3:]])
    report["shown"] = shown.replace(f"{ROOT}/", "").replace(str(ROOT.parent), "..")
    return report


def _evaluation_table(
    report: dict[str, Any], first: dict[str, Any], second: dict[str, Any]
) -> list[str]:
    rows = {m["model"]["label"]: m for m in report["models"]}
    recorded = {"stage2.pt": second["val"], "scratch.pt": first["val"]}
    out = [
        "## The same checkpoints through `cnclip eval zeroshot`",
        "",
        f"- command: `{report['shown']}` ({report['wall_s'] / 60:.1f} min for all five models)",
        "",
        "| checkpoint | top-1 recorded by the trainer | top-1 by cnclip eval "
        "| top-5 (trainer / eval) | mean per class (trainer / eval) | same |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, val in recorded.items():
        assert isinstance(val, dict)
        got = rows[name]["metrics"]
        same = all(abs(got[k] - val[k]) < 1e-9 for k in ("top1", "top5", "mean_per_class"))
        out.append(
            f"| {name} | {val['top1']:.2f}% | {got['top1']:.2f}% | {val['top5']:.2f}% / "
            f"{got['top5']:.2f}% | {val['mean_per_class']:.2f}% / {got['mean_per_class']:.2f}% "
            f"| {'yes' if same else '**no**'} |"
        )
    out += [
        "",
        "## stage2.pt and its bundles (precision loss)",
        "",
        "| model | backend | top-1 | top-5 | mean per class | top-1 vs the checkpoint |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    reference = rows["stage2.pt"]["metrics"]["top1"]
    for label, row in rows.items():
        if label == "scratch.pt":
            continue
        m = row["metrics"]
        delta = "—" if label == "stage2.pt" else f"{m['top1'] - reference:+.2f}"
        out.append(
            f"| {label} | {row['model']['backend']} | {m['top1']:.2f}% | {m['top5']:.2f}% | "
            f"{m['mean_per_class']:.2f}% | {delta} |"
        )
    confused = rows["stage2.pt"]["most_confused"][:5]
    out += [
        "",
        "Most confused pairs of stage2.pt: "
        + "; ".join(f"{p['true']} as {p['predicted']} {p['share']:.1f}%" for p in confused)
        + ".",
        "",
    ]
    return out


if __name__ == "__main__":
    sys.exit(main())
