"""Encoder speed on this CPU: transformers' ChineseCLIPModel (eager) against our bundles.

Run from the repository root::

    .venv/bin/python bench/encoders.py

ViT-B-16 geometry with seeded random weights (speed does not depend on the values).
The baseline is what a user would pick: transformers' ``ChineseCLIPModel`` in PyTorch
eager mode with the same weights, its fast BERT tokenizer, ``torch.no_grad``. Ours: the
fp32 and int8 bundles written by ``cnclip export`` (verified against PyTorch before
they are written), run by ONNX Runtime on the CPU through ``runtime.bundle``.

Texts are real short queries (the Chinese queries of ../shared/data/coco-photos and
COCO-CN captions cut to at most 16 characters); images are the real COCO photos,
preprocessed once (preprocessing is the same code for all three and is not timed).
Everything runs in this one process with 2 threads per library; the table is printed
and written to ``bench/results/encoders.md``.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inputs import DATA, photo_pixels, short_queries, timed  # noqa: E402
from bench.machine import describe  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from model.configs import get_config  # noqa: E402
from model.modeling import build_model  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from tests.hf_reference import to_hf_model  # noqa: E402

THREADS = 2


TEXT_BATCHES = (1, 8, 64)
IMAGE_BATCHES = (1, 4, 16)


def _measure(
    texts_fn: Callable[[list[str]], object],
    images_fn: Callable[[np.ndarray], object],
    queries: list[str],
    pixels: np.ndarray,
) -> dict[str, float]:
    """Query p50 (ms), texts/s and images/s by batch size."""
    latencies = [timed(partial(texts_fn, [query]), 1) for query in queries[:60]]
    out = {"p50": statistics.median(latencies) * 1000}
    for size in TEXT_BATCHES:
        out[f"t{size}"] = size / timed(partial(texts_fn, queries[:size]), 3)
    for size in IMAGE_BATCHES:
        out[f"i{size}"] = size / timed(partial(images_fn, pixels[:size]), 3)
    return out


def main() -> int:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model(get_config("ViT-B-16")).eval()
    hf = to_hf_model(model).eval()
    from transformers import BertTokenizerFast

    hf_tok = BertTokenizerFast(  # type: ignore[no-untyped-call]
        vocab_file=str(ROOT / "runtime" / "assets" / "vocab.txt")
    )
    work = Path(tempfile.mkdtemp(prefix="cnclip-bench-"))
    bundles = {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        export_bundle(model, work / precision, precision=precision, verify_data=DATA)
        print(f"exported {precision} in {time.perf_counter() - start:.0f} s", flush=True)
        bundles[precision] = load_bundle(work / precision, threads=THREADS)

    def hf_texts(texts: list[str]) -> np.ndarray:
        enc = hf_tok(texts, padding=True, truncation=True, max_length=52, return_tensors="pt")
        with torch.no_grad():
            hidden = hf.text_model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )[0]
            feats = hf.text_projection(hidden[:, 0, :])
        return (feats / feats.norm(dim=-1, keepdim=True)).numpy()

    def hf_images(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            feats = hf.get_image_features(pixel_values=torch.from_numpy(pixels))
        return (feats / feats.norm(dim=-1, keepdim=True)).numpy()

    engines: dict[str, tuple[Callable[[list[str]], object], Callable[[np.ndarray], object]]] = {
        "transformers eager (baseline)": (hf_texts, hf_images),
        "bundle fp32 (ONNX Runtime)": (bundles["fp32"].encode_texts, bundles["fp32"].encode_pixels),
        "bundle int8 (ONNX Runtime)": (bundles["int8"].encode_texts, bundles["int8"].encode_pixels),
    }
    queries = short_queries()
    pixels = photo_pixels(max(IMAGE_BATCHES))

    rows = []
    for name, (texts_fn, images_fn) in engines.items():
        rows.append((name, _measure(texts_fn, images_fn, queries, pixels)))
        print(rows[-1], flush=True)

    base = rows[0][1]
    columns = ["p50"] + [f"t{b}" for b in TEXT_BATCHES] + [f"i{b}" for b in IMAGE_BATCHES]
    lines = [
        "# Encoder speed: transformers eager vs our ONNX bundles (ViT-B-16, CPU)",
        "",
        "- command: `.venv/bin/python bench/encoders.py`",
        f"- machine: {describe()}, {THREADS} threads per library, torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}",
        "",
        "| engine | short query p50 "
        + "".join(f"| texts/s @{b} " for b in TEXT_BATCHES)
        + "".join(f"| images/s @{b} " for b in IMAGE_BATCHES)
        + "|",
        "| --- " + "| ---: " * len(columns) + "|",
    ]
    for name, row in rows:
        cells = [f"{row['p50']:.2f} ms ({base['p50'] / row['p50']:.1f}x)"]
        cells += [f"{row[c]:.1f} ({row[c] / base[c]:.2f}x)" for c in columns[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Query latency includes tokenization (each engine's own tokenizer) and is the "
        "median over 60 real queries of 4-16 characters; @N is the batch size; ratios are "
        "against the baseline.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "results" / "encoders.md").write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
