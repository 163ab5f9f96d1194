"""One evaluation over one or several models, side by side: what ``cnclip eval`` runs.

>>> from evaluation.compare import ModelSpec, run_retrieval
>>> report = run_retrieval(
...     [ModelSpec("clip_cn_vit-b-16.pt"), ModelSpec("bundles/fp16"), ModelSpec("bundles/int8")],
...     "datasets/MUGE", "valid", out_dir="eval/muge-valid",
... )

The data is read once; the models are loaded one at a time (and released before the
next), each evaluated the same way. Every model gets a folder under ``out_dir`` named
after its label (prediction files, confusion matrix); ``out_dir`` gets the report as
``retrieval-{split}.json`` / ``.md`` or ``zeroshot.json`` / ``.md``.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.encode import IMAGE_BATCH, TEXT_BATCH
from evaluation.models import open_model
from evaluation.plot import render_confusion
from evaluation.report import environment, write_report
from evaluation.retrieval import (
    DIRECTIONS,
    evaluate_retrieval,
    load_retrieval_data,
    write_predictions,
)
from evaluation.zeroshot import evaluate_zeroshot, load_zeroshot_data
from runtime.errors import CnClipError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a bundle directory or a checkpoint, and how to run it."""

    path: str
    label: str | None = None
    arch: str | None = None
    backend_options: Any = None  # runtime.sessions.BackendOptions, for bundles
    device: str = "cpu"  # for checkpoints


@dataclass(frozen=True)
class RunOptions:
    text_batch: int = TEXT_BATCH
    image_batch: int = IMAGE_BATCH
    workers: int | None = None
    progress: bool | None = None
    command: str = ""


def slug(label: str) -> str:
    """A folder name for a label: letters, digits, ``.``, ``_`` and ``-``."""
    cleaned = re.sub(r"[^0-9A-Za-z._-]+", "-", label).strip("-.")
    return cleaned or "model"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _models(specs: Sequence[ModelSpec]) -> Any:
    """Open the models one at a time, each released before the next is loaded."""
    if not specs:
        raise CnClipError("give at least one model to evaluate")
    for spec in specs:
        if not Path(spec.path).exists():
            raise CnClipError(f"{spec.path}: no such model (a bundle directory or a checkpoint)")
    labels: list[str] = []
    for spec in specs:
        model = open_model(
            spec.path,
            label=spec.label,
            arch=spec.arch,
            backend_options=spec.backend_options,
            device=spec.device,
        )
        labels.append(model.info.label)
        label = _unique(labels)[-1]
        yield model, label
        del model
        gc.collect()


def _header(task: str, dataset: str, options: RunOptions) -> dict[str, Any]:
    return {"task": task, "dataset": dataset, "command": options.command, **environment()}


def run_retrieval(
    specs: Sequence[ModelSpec],
    data_dir: str | os.PathLike[str],
    split: str,
    *,
    out_dir: str | os.PathLike[str],
    directions: Sequence[str] = DIRECTIONS,
    index: str | os.PathLike[str] | None = None,
    nprobe: int | None = None,
    options: RunOptions | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of every model on one split; writes predictions and the report."""
    options = options or RunOptions()
    out = Path(out_dir)
    data = load_retrieval_data(data_dir, split)
    catalog = None
    if index is not None:
        import index as index_package

        catalog = index_package.load(Path(index))
        _check_bundles_against(catalog, specs)  # before any model is evaluated
    report = _header("retrieval", Path(data_dir).name, options)
    report.update(split=split, directions=list(dict.fromkeys(directions)), models=[])
    if index is not None:
        report["index"] = str(index)
    try:
        for model, label in _models(specs):
            _check_checkpoint_against(catalog, model)
            run = evaluate_retrieval(
                model,
                data,
                directions=directions,
                index=catalog,
                nprobe=nprobe,
                text_batch=options.text_batch,
                image_batch=options.image_batch,
                workers=options.workers,
                progress=options.progress,
            )
            folder = out / slug(label)
            files = write_predictions(run, folder, split)
            info = {**model.info.as_dict(), "label": label}
            report["models"].append(
                {
                    "model": info,
                    "metrics": run.metrics,
                    "counts": run.counts,
                    "seconds": run.seconds,
                    "files": [str(f) for f in files],
                    "unreadable_images": [{"id": i, "error": e} for i, e in run.failed_images],
                }
            )
    finally:
        data.close()
    write_report(report, out, f"retrieval-{split}")
    return report


def _check_bundles_against(catalog: Any, specs: Sequence[ModelSpec]) -> None:
    """Refuse bundles of another model than the index's, before spending time on any."""
    from runtime.bundle_manifest import bundle_ref, is_bundle
    from runtime.identity import check_serves

    for spec in specs:
        if is_bundle(spec.path):
            note = check_serves(catalog.model, bundle_ref(spec.path), "the index (--index)")
            if note:
                log.info(note)


def _check_checkpoint_against(catalog: Any, model: Any) -> None:
    """A checkpoint against the index, by its model id, before it is evaluated (bundles
    were checked before any model was). An index written before model ids cannot be
    checked against a checkpoint: warned about."""
    if catalog is None or model.info.kind != "checkpoint":
        return
    from runtime.identity import check_serves

    if catalog.model.model_id is None:
        log.warning(
            "%s: a checkpoint, and the index predates model ids; cannot check that it was "
            "built with the same weights",
            model.info.label,
        )
        return
    check_serves(catalog.model, model.identity, "the index (--index)")


def run_zeroshot(
    specs: Sequence[ModelSpec],
    data: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    templates: Sequence[str],
    templates_from: str = "",
    confused_pairs: int = 10,
    options: RunOptions | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of every model; writes a confusion PNG per model and the report."""
    options = options or RunOptions()
    out = Path(out_dir)
    dataset = load_zeroshot_data(data, labels)
    report = _header("zeroshot", dataset.name, options)
    report.update(
        classes=len(dataset.class_names),
        class_names=dataset.class_names,
        templates=len(templates),
        templates_from=templates_from,
        template_list=list(templates),
        models=[],
    )
    for model, label in _models(specs):
        run = evaluate_zeroshot(
            model,
            dataset,
            templates,
            text_batch=options.text_batch,
            image_batch=options.image_batch,
            workers=options.workers,
            progress=options.progress,
            confused_pairs=confused_pairs,
        )
        folder = out / slug(label)
        png = render_confusion(
            run.confusion, dataset.class_names, folder / "confusion.png", folders=dataset.classes
        )
        info = {**model.info.as_dict(), "label": label}
        report["models"].append(
            {
                "model": info,
                "metrics": run.metrics,
                "per_class": [
                    {"class": name, "recall": value}
                    for name, value in zip(dataset.class_names, run.per_class, strict=True)
                ],
                "most_confused": run.confused_rows(dataset.class_names),
                "confusion_matrix": run.confusion.tolist(),
                "counts": run.counts,
                "seconds": run.seconds,
                "files": [str(png)],
                "unreadable_images": [{"id": i, "error": e} for i, e in run.failed_images],
            }
        )
    write_report(report, out, "zeroshot")
    return report
