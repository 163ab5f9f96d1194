"""The whole system offline, in minutes: catalog -> two-stage training -> bundle -> index -> API.

``cnclip demo`` (``make demo``) runs :func:`build_demo` and then serves the result with the
search page at http://127.0.0.1:8000. Everything is written under one work folder::

    data/train.jsonl, data/images/         the drawn training pictures, titled 红色的杯子
                                           (the shop's kinds and four it does not sell)
    catalog/items.jsonl, catalog/images/   the shop: products of six brands with model
                                           codes, several pictures each, sales figures
    catalog/judged.jsonl                   judged queries (cnclip eval search --queries)
    run/                                   cnclip train's run (config, checkpoints)
    bundle/                                the exported fp32 bundle
    index/                                 the shop's index (with its lexical index and
                                           relevance calibration, and a titles index)
    report.json                            timings and the search check

The model knows only these drawings: it learns eight colours and six kinds of thing, and
nothing else. To serve real weights, see the README ("Bring your own weights").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from demo.catalog import (
    BRANDS,
    COLOURS,
    KINDS,
    judged_queries,
    title,
    write_catalog,
    write_judged,
    write_shop,
)
from runtime.files import write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scale:
    """How big the demo is: training pictures per title, the shop's products per title
    and pictures per product, training steps, batch size."""

    train_per_title: int
    shop_products: int
    shop_pictures: int
    lit_steps: int
    both_steps: int
    batch_size: int


SCALES = {
    # About three minutes of training on 2 CPU cores.
    "full": Scale(
        train_per_title=30,
        shop_products=2,
        shop_pictures=3,
        lit_steps=150,
        both_steps=600,
        batch_size=96,
    ),
    # For CI: the same pipeline in about a minute.
    "small": Scale(
        train_per_title=16,
        shop_products=1,
        shop_pictures=3,
        lit_steps=60,
        both_steps=400,
        batch_size=64,
    ),
}


def run_config(work: Path, scale: Scale) -> dict[str, Any]:
    """The training run: a tiny RN-style image tower and a 2-layer text tower, trained in the
    paper's two stages: stage 1 locks the (random) image tower, stage 2 trains both."""
    data = work / "data"
    return {
        "run_dir": str(work / "run"),
        "seed": 0,
        "torch_threads": 1,
        "model": {
            "channels_last": True,
            "config": {
                "name": "demo-tiny",
                "embed_dim": 128,
                "vision": {
                    "kind": "resnet",
                    "image_size": 64,
                    "width": 16,
                    "resnet_layers": [1, 1, 1, 1],
                },
                "text": {
                    "hidden_size": 64,
                    "layers": 2,
                    "heads": 2,
                    "intermediate_size": 256,
                    "hidden_dropout": 0.0,
                    "attention_dropout": 0.0,
                },
            },
        },
        "data": {
            "kind": "catalog",
            "path": str(data / "train.jsonl"),
            "workers": 1,
            "augment": {"scale": [0.8, 1.0], "ratio": [0.9, 1.1], "hflip": 0.5},
        },
        "loss": {"multi_positive": True},  # items with the same title are positives
        "optim": {"betas": [0.9, 0.98], "eps": 1.0e-6},
        "stages": [
            {
                "name": "lit",
                "lock_image": True,
                "lr": 2.0e-3,
                "batch_size": scale.batch_size,
                "steps": scale.lit_steps,
                "warmup": 20,
                "weight_decay": 0.1,
            },
            {
                "name": "both",
                "lock_image": False,
                "lr": 1.0e-3,
                "batch_size": scale.batch_size,
                "steps": scale.both_steps,
                "warmup": 50,
                "weight_decay": 0.1,
            },
        ],
        "validation": {
            "task": "retrieval",
            "every": 0,
            "batch_size": 256,
            "data": {"kind": "catalog", "path": str(work / "catalog" / "items.jsonl")},
        },
        "log_every": 50,
        "save_every": 100_000,
    }


@dataclass
class DemoResult:
    work: Path
    bundle: Path
    index: Path
    media: Path
    report: dict[str, Any]


def _step(name: str, report: dict[str, Any], say: Callable[[str], None]) -> Callable[[], None]:
    started = time.perf_counter()
    say(f"demo: {name} ...")

    def done() -> None:
        report["seconds"][name] = round(time.perf_counter() - started, 1)
        say(f"demo: {name}: {report['seconds'][name]:.1f} s")

    return done


def build_demo(
    work: str | os.PathLike[str],
    scale: str = "full",
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Draw the catalogs, train, export, index and check the search; returns the paths."""
    import numpy as np

    from export.bundle import export_bundle
    from index.build import Corpus, build_version, catalog_corpus
    from index.embed import embed_texts
    from model.checkpoints import load_checkpoint
    from runtime.bundle import load_bundle
    from trainer import main as train_main

    chosen = SCALES[scale]
    root = Path(work)
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"scale": scale, **asdict(chosen), "seconds": {}}
    data = root / "data"
    (root / "report.json").unlink(missing_ok=True)  # not built until the end

    done = _step("drawing the catalogs", report, say)
    write_catalog(data, chosen.train_per_title, seed=1, name="train")
    shop_dir = root / "catalog"
    shop = write_shop(shop_dir, chosen.shop_products, chosen.shop_pictures, seed=2)
    write_judged(shop_dir / "judged.jsonl", judged_queries(shop.items, seed=3))
    done()

    done = _step("training (stage 1 locks the image tower, stage 2 trains both)", report, say)
    run_dir = root / "run"
    for stale in (run_dir, root / "embeddings", root / "index"):  # from an earlier build
        if stale.exists():
            shutil.rmtree(stale)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(root, chosen), allow_unicode=True), "utf-8")
    status = train_main(["--config", str(config), *([] if progress else ["-q"])])
    if status:
        raise RuntimeError(f"training failed (exit {status}); see {run_dir}")
    done()

    done = _step("exporting the model bundle", report, say)
    bundle_dir = root / "bundle"
    model = load_checkpoint(run_dir / "checkpoints" / "both.pt").model
    export_bundle(model, bundle_dir, precision="fp32", overwrite=True)
    done()

    done = _step("indexing the shop", report, say)
    bundle = load_bundle(bundle_dir, threads=2)
    corpus, _ = catalog_corpus(bundle, shop.jsonl, root / "embeddings", progress=progress)
    titles = [title(c, k) for c in COLOURS for k in KINDS]
    text_corpus = Corpus(
        embed_texts(bundle, titles, progress=False), titles, [{"title": t} for t in titles]
    )
    index_root = root / "index"
    version = build_version(
        index_root,
        corpus,
        model=bundle.identity,
        texts=text_corpus,
        factory="Flat",
        progress=False,
        lexicon=list(BRANDS),
    )
    done()

    # The check the README promises: each title's best hit has its colour and kind.
    import index as index_package

    found = index_package.load(version).search(bundle.encode_texts(titles), k=1)
    assert corpus.items is not None
    shown = {
        i: title(item["colour"], item["kind"])
        for i, item in zip(corpus.ids, corpus.items, strict=True)
    }
    hits = [shown[ids[0]] == t for t, ids in zip(titles, found.ids, strict=True)]
    report["search"] = {
        "titles": len(titles),
        "items": len(corpus.ids),
        "rank1_matching": int(sum(hits)),
        "rank1_share": float(np.mean(hits)),
        "misses": [t for t, hit in zip(titles, hits, strict=True) if not hit],
    }
    say(
        f"demo: {sum(hits)} of {len(titles)} titles find an item of their colour and kind "
        f"first ({100 * float(np.mean(hits)):.0f}%)"
    )
    # Written last and whole: --reuse trusts it.
    text = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    write_atomically(root / "report.json", text.encode("utf-8"))
    return DemoResult(root, bundle_dir, index_root, shop_dir, report)


def demo_settings(result: DemoResult, host: str, port: int) -> Any:
    """Service settings for the demo: the search page on, the pictures under /media."""
    from service.settings import Settings

    return Settings(
        bundle=result.bundle,
        index=result.index,
        host=host,
        port=port,
        ui={"enabled": True, "media_dir": result.media, "group_by": "spu", "boost_field": "sales"},
    )
