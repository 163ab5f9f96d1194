"""What int8 and fp16 queries cost against a 1M-item index built with the fp32 bundle.

Run from the repository root::

    .venv/bin/python bench/cross_precision.py [--items 1000000] [--work runs/bench-cross]

The production split this measures: a catalog embedded once with one bundle of a
checkpoint (fp32 here; fp16 or TensorRT on a GPU in production), queries answered by
CPU replicas running the int8 bundle of the same checkpoint. Everything is real: the
model is the tiny CIFAR-10 recipe's trained checkpoint (``bench/train_cifar10.py``
trains it into ``runs/bench-cifar10-tiny``; this script trains it when it is missing,
about 11 minutes), exported here to fp32, fp16 and int8 bundles. The catalog is the
50,000 CIFAR-10 training photos, each in ``items / 50,000`` seeded variants (shifted by
up to 4 px with reflect padding, flipped at random, brightness x0.8-1.2), embedded by
the fp32 bundle and indexed by ``cnclip index build --embeddings`` (the automatic choice
for the size, recall tuned at build). The queries are text, as shoppers send them: the
ten class names in the twelve photo prompts (in domain) and 1,000 COCO-CN captions (out
of domain), embedded by each bundle and measured by ``cnclip index eval --bundle B
--reference fp32`` (:func:`index.recall.cross_precision`).

The table goes to ``bench/results/cross-precision.md``. ``--reuse`` keeps the bundles,
embeddings and index of an earlier run in ``--work``.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inputs import DATA  # noqa: E402
from bench.machine import describe  # noqa: E402
from runtime.images import PreprocessConfig  # noqa: E402
from runtime.templates import PROMPT_TEMPLATES, fill  # noqa: E402

RECIPE = "trainer/recipes/cifar10-tiny.yaml"
TRAIN_RUN = "runs/bench-cifar10-tiny"
PRECISIONS = ("fp32", "fp16", "int8")
BATCH = 4096
RESULTS = ROOT / "bench" / "results" / "cross-precision.md"


def checkpoint(run: Path) -> Path:
    """The recipe's final checkpoint, trained first when missing."""
    path = run / "checkpoints" / "stage2.pt"
    if not path.is_file():
        print(f"training the CIFAR-10 recipe into {run} (about 11 minutes) ...", flush=True)
        command = [sys.executable, "-m", "cnclip", "train", "--config", RECIPE]
        subprocess.run([*command, f"run_dir={run.relative_to(ROOT)}"], cwd=ROOT, check=True)
    return path


def export(ckpt: Path, work: Path, reuse: bool) -> dict[str, Path]:
    from export.bundle import export_bundle
    from model.checkpoints import load_checkpoint

    model = load_checkpoint(ckpt).model
    out = {}
    for precision in PRECISIONS:
        out[precision] = work / precision
        if not (reuse and (out[precision] / "manifest.json").is_file()):
            export_bundle(model, out[precision], precision=precision, overwrite=True)
    return out


def cifar_train() -> npt.NDArray[np.uint8]:
    """The 50,000 training photos as uint8 ``[n, 32, 32, 3]``, in archive order."""
    photos = []
    with tarfile.open(DATA / "cifar10" / "train.tar.gz") as archive:
        for member in tqdm(archive, desc="reading CIFAR-10", unit=" files", disable=None):
            if member.isfile() and member.name.endswith(".jpg"):
                data = archive.extractfile(member)
                assert data is not None
                photos.append(np.asarray(Image.open(io.BytesIO(data.read())).convert("RGB")))
    return np.stack(photos)


def variants(
    photos: npt.NDArray[np.uint8], copy: int, config: PreprocessConfig
) -> npt.NDArray[np.float32]:
    """Variant ``copy`` of every photo, normalized as the bundle's preprocessing does
    (the photos are already the model's 32 x 32, so no resize)."""
    rng = np.random.default_rng(copy)
    n = len(photos)
    padded = np.pad(photos, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    dx, dy = rng.integers(0, 9, size=n), rng.integers(0, 9, size=n)
    rows = dy[:, None] + np.arange(32)[None, :]
    cols = dx[:, None] + np.arange(32)[None, :]
    shifted = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    shifted[flip] = shifted[flip, :, ::-1]
    scaled = shifted.astype(np.float32) / 255.0 * rng.uniform(0.8, 1.2, size=(n, 1, 1, 1))
    pixels = (np.clip(scaled, 0, 1) - np.array(config.mean)) / np.array(config.std)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)


def embed_catalog(bundle_dir: Path, items: int, work: Path, reuse: bool) -> tuple[Path, Path]:
    from runtime.bundle import load_bundle

    vectors_path, ids_path = work / "catalog.npy", work / "ids.txt"
    if reuse and vectors_path.is_file() and ids_path.is_file():
        return vectors_path, ids_path
    bundle = load_bundle(bundle_dir)
    photos = cifar_train()
    copies = max(1, items // len(photos))
    out = np.lib.format.open_memmap(
        vectors_path, mode="w+", dtype=np.float32, shape=(copies * len(photos), bundle.embed_dim)
    )
    bar = tqdm(total=len(out), desc="embedding (fp32)", unit=" images", disable=None)
    for copy in range(copies):
        pixels = variants(photos, copy, bundle.preprocess_config)
        for start in range(0, len(pixels), BATCH):
            row = copy * len(photos) + start
            chunk = bundle.encode_pixels(pixels[start : start + BATCH])
            out[row : row + len(chunk)] = chunk
            bar.update(len(chunk))
    bar.close()
    out.flush()
    ids = (f"cifar-{i % len(photos)}-v{i // len(photos)}" for i in range(len(out)))
    ids_path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return vectors_path, ids_path


def queries() -> dict[str, list[str]]:
    names = [
        line.split("\t")[1].strip()
        for line in (DATA / "cifar10" / "labels_zh.tsv").read_text("utf-8").splitlines()
        if "\t" in line
    ]
    captions = (DATA / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()
    return {
        "class prompts (in domain)": [fill(t, n) for n in names for t in PROMPT_TEMPLATES],
        "COCO-CN captions (out of domain)": [c.split("\t", 1)[-1] for c in captions[:1000]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--work", default="runs/bench-cross")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ckpt = checkpoint(ROOT / TRAIN_RUN)
    bundles = export(ckpt, work, args.reuse)
    vectors, ids = embed_catalog(bundles["fp32"], args.items, work, args.reuse)

    from cnclip.cli import main as cnclip
    from index.recall import cross_precision
    from index.versions import IndexManifest, resolve
    from runtime.bundle import load_bundle

    root = work / "index"
    if not (args.reuse and (root / "CURRENT").is_file()):
        build = ["index", "build", "--bundle", str(bundles["fp32"]), "--embeddings", str(vectors)]
        if cnclip([*build, "--ids", str(ids), "--out", str(root)]) != 0:
            return 1
    manifest = IndexManifest.read(resolve(root))
    loaded = {p: load_bundle(bundles[p]) for p in PRECISIONS}
    rows: list[dict[str, Any]] = []
    for source, texts in queries().items():
        for precision in PRECISIONS:
            report = cross_precision(root, loaded[precision], reference=loaded["fp32"], texts=texts)
            rows.append({**report, "source": source, "bundle_precision": precision})
            print(json.dumps(rows[-1], ensure_ascii=False)[:400], flush=True)
    lines = [
        "# int8 and fp16 queries against an index built with the fp32 bundle "
        f"({manifest.count:,} items)",
        "",
        f"- command: `.venv/bin/python bench/cross_precision.py --items {args.items}"
        f"{' --reuse' if args.reuse else ''}`",
        f"- machine: {describe()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- model: the tiny CIFAR-10 recipe's `{ckpt.relative_to(ROOT)}` "
        f"(embedding size {manifest.dim}), bundles exported here",
        f"- index: `{manifest.factory}`, tuned setting {dict(manifest.search)}, "
        f"R@10 at build {manifest.chosen.get('R@10', 1.0):.3f}",
        f"- whole run: {(time.perf_counter() - started) / 60:.1f} min"
        + (" (bundles, embeddings and index reused from an earlier run)" if args.reuse else ""),
        "",
        "10-recall@10 (R@1 in brackets) of each bundle's text queries; truth is exact search "
        "of the fp32 bundle's queries over the stored fp32 vectors.",
        "",
        "| queries | bundle | query cosine to fp32 (min / mean) | index vs exact, own queries "
        "| exact, own vs fp32 queries | what users get: index vs ideal |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:

        def cell(key: str, row: dict[str, Any] = row) -> str:
            got = row[key]
            return f"{got['10-recall@10']:.3f} ({got['R@1']:.3f})"

        cos = row["query_cosine"]
        lines.append(
            f"| {row['source']}, {row['queries']} | {row['bundle_precision']} | {cos['min']:.5f} / "
            f"{cos['mean']:.5f} | {cell('ann')} | {cell('precision')} | {cell('total')} |"
        )
    lines += [
        "",
        "Columns: *index vs exact, own queries* is the ANN index's recall for that bundle's "
        "queries; *exact, own vs fp32 queries* is what the bundle's precision alone changes; "
        "*what users get* compares the index's answers to that bundle's queries with exact "
        "search of the fp32 queries.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
