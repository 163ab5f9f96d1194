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
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from runtime.images import PreprocessConfig, load_image, preprocess_batch  # noqa: E402
from tests.hf_reference import to_hf_model  # noqa: E402
from trainer.configs import get_config  # noqa: E402
from trainer.model import build_model  # noqa: E402

THREADS = 2
DATA = Path(os.environ.get("CNCLIP_DATA_DIR", ROOT.parent / "shared" / "data"))


def _queries() -> list[str]:
    photos = DATA / "coco-photos" / "queries.jsonl"
    out = [json.loads(x)["query"] for x in photos.read_text(encoding="utf-8").splitlines()]
    for line in (DATA / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()[:400]:
        caption = line.split("\t", 1)[-1].strip()
        out.append(caption[: 4 + len(out) % 13])  # 4..16 characters
    return out


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _measure(
    texts_fn: Callable[[list[str]], object],
    images_fn: Callable[[np.ndarray], object],
    queries: list[str],
    pixels16: np.ndarray,
) -> tuple[float, float, float, float]:
    """Query p50 (ms), texts/s at batch 64, images/s at batch 1 and at batch 16."""
    latencies = []
    for query in queries[:60]:
        latencies += _timed(lambda query=query: texts_fn([query]), 1)
    t64 = _timed(lambda: texts_fn(queries[:64]), 3)
    i1 = _timed(lambda: images_fn(pixels16[:1]), 5)
    i16 = _timed(lambda: images_fn(pixels16), 3)
    return (
        statistics.median(latencies) * 1000,
        64 / statistics.median(t64),
        1 / statistics.median(i1),
        16 / statistics.median(i16),
    )


def main() -> int:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model(get_config("ViT-B-16")).eval()
    hf = to_hf_model(model).eval()
    from transformers import BertTokenizerFast

    hf_tok = BertTokenizerFast(vocab_file=str(ROOT / "runtime" / "assets" / "vocab.txt"))
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
    queries = _queries()
    photos = sorted((DATA / "coco-photos").glob("*.jpg"))
    pixels = preprocess_batch([load_image(p) for p in photos], PreprocessConfig(image_size=224))
    pixels16 = np.concatenate([pixels, pixels[:2]])  # 16 real photos

    rows = []
    for name, (texts_fn, images_fn) in engines.items():
        rows.append((name, *_measure(texts_fn, images_fn, queries, pixels16)))
        print(rows[-1], flush=True)

    base = rows[0]
    lines = [
        "# Encoder speed: transformers eager vs our ONNX bundles (ViT-B-16, CPU)",
        "",
        "- command: `.venv/bin/python bench/encoders.py`",
        f"- machine: {describe()}, {THREADS} threads per library, torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}",
        "",
        "| engine | short query p50 (batch 1) | texts/s (batch 64) | images/s (batch 1) "
        "| images/s (batch 16) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, p50, tps, i1s, i16s in rows:
        lines.append(
            f"| {name} | {p50:.2f} ms ({base[1] / p50:.1f}x) | {tps:.0f} ({tps / base[2]:.1f}x) "
            f"| {i1s:.1f} ({i1s / base[3]:.2f}x) | {i16s:.1f} ({i16s / base[4]:.2f}x) |"
        )
    lines += [
        "",
        "Query latency includes tokenization (each engine's own tokenizer) and is the "
        "median over 60 real queries of 4-16 characters; ratios are against the baseline.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "results" / "encoders.md").write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
