"""Results as JSON and as a Markdown table, one row per model, written atomically.

With several models (a checkpoint and its bundles, say) the first is the reference and
every other row shows its difference from it in percentage points, so the loss of a
lower precision is a measured number.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.files import write_atomically


def atomic_write(path: Path, text: str) -> Path:
    """``text`` as UTF-8, written atomically (:func:`runtime.files.write_atomically`)."""
    return write_atomically(path, text.encode("utf-8"))


def environment() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _delta(value: float, reference: float) -> str:
    return f"{value - reference:+.2f}"


RETRIEVAL_COLUMNS = ("r1", "r5", "r10", "mean_recall")


def _model_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    cells: Callable[[Mapping[str, Any]], list[str]],
    score: Callable[[Mapping[str, Any]], float],
    score_name: str,
) -> str:
    """A row per model: label, precision, backend, ``cells(metrics)`` and, with several
    models, the difference of ``score`` from the first model's."""
    head = ["model", "precision", "backend", *columns]
    multi = len(rows) > 1
    if multi:
        head.append(f"{score_name} vs {rows[0]['model']['label']}")
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    for row in rows:
        info, metrics = row["model"], row["metrics"]
        line = [str(info["label"]), str(info["precision"]), str(info["backend"]), *cells(metrics)]
        if multi:
            first = row is rows[0]
            line.append("—" if first else _delta(score(metrics), score(rows[0]["metrics"])))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def retrieval_table(rows: Sequence[Mapping[str, Any]], directions: Sequence[str]) -> str:
    """Markdown: a row per model, R@1/5/10 and mean recall per direction, then MR."""
    columns: list[str] = []
    for d in directions:
        name = {"t2i": "text→image", "i2t": "image→text"}[d]
        columns += [f"{name} R@1", "R@5", "R@10", "mean"]
    columns.append("MR")

    def cells(metrics: Mapping[str, Any]) -> list[str]:
        out = [_fmt(metrics[d][c]) for d in directions for c in RETRIEVAL_COLUMNS]
        return [*out, _fmt(metrics["mean_recall"])]

    return _model_table(rows, columns, cells, lambda m: float(m["mean_recall"]), "MR")


def zeroshot_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: a row per model, top-1/top-5 accuracy and mean per-class recall."""

    def cells(metrics: Mapping[str, Any]) -> list[str]:
        return [_fmt(metrics[k]) for k in ("top1", "top5", "mean_per_class")]

    columns = ["top-1", "top-5", "mean per class"]
    return _model_table(rows, columns, cells, lambda m: float(m["top1"]), "top-1")


def confused_table(pairs: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| true class | predicted as | images | share of the class |",
        "| --- | --- | ---: | ---: |",
    ]
    for p in pairs:
        lines.append(f"| {p['true']} | {p['predicted']} | {p['count']} | {p['share']:.1f}% |")
    return "\n".join(lines)


def _counts_line(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items())


def markdown(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown: what was run, the table, and per-model details."""
    task = report["task"]
    title = (
        f"Retrieval on {report['dataset']} ({report['split']})"
        if task == "retrieval"
        else f"Zero-shot classification on {report['dataset']}"
    )
    out = [
        f"# {title}",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {report['machine']}",
        f"- date: {report['date']}",
    ]
    if task == "zeroshot":
        out.append(
            f"- {report['classes']} classes, {report['templates']} templates "
            f"(`{report['templates_from']}`); logits = 100 x cosine"
        )
    out.append("")
    rows = report["models"]
    if task == "retrieval":
        out.append(retrieval_table(rows, report["directions"]))
        out += [
            "",
            "Recall in percent; mean = mean of R@1, R@5 and R@10; MR = mean over the "
            "directions (the paper's mean recall).",
        ]
    else:
        out.append(zeroshot_table(rows))
        out += ["", "Accuracy in percent; mean per class = mean of the per-class recalls."]
    for row in rows:
        label = row["model"]["label"]
        out += ["", f"## {label}", "", f"- model: `{row['model']['path']}`"]
        out.append(f"- counts: {_counts_line(row['counts'])}")
        seconds = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in row["seconds"].items())
        out.append(f"- time: {seconds}")
        for name in row.get("files", []):
            out.append(f"- wrote `{name}`")
        if task == "zeroshot" and row.get("most_confused"):
            out += ["", "Most confused pairs:", "", confused_table(row["most_confused"])]
    return "\n".join(out) + "\n"


def write_report(report: Mapping[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``{stem}.json`` and ``{stem}.md`` in ``out_dir``."""
    as_json = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    return (
        atomic_write(out_dir / f"{stem}.json", as_json),
        atomic_write(out_dir / f"{stem}.md", markdown(report)),
    )
