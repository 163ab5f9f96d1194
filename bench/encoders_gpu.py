"""Encoder speed on a GPU: transformers fp16 eager against our bundle's GPU backends.

Run from the repository root on a machine with an NVIDIA GPU::

    .venv/bin/python bench/encoders_gpu.py                  # ViT-B-16, batches 1..256
    .venv/bin/python bench/encoders_gpu.py --device cpu --batches 1,2  # a smoke run on the CPU

ViT-B-16 geometry with seeded random weights. The baseline is transformers'
``ChineseCLIPModel`` in fp16 (``.half()``) in eager mode. Ours: the bundle written by
``cnclip export --precision fp16 --torch`` on each GPU backend that this machine
has (torch-cuda always; onnxruntime-cuda, onnxruntime-tensorrt and tensorrt where
installed; a backend that is missing is listed as such). Every engine is timed
end to end from host arrays to host arrays, like the service calls it.

Prints images/s at batch 1..256, short texts/s by batch and the batch-1 latency of
a short query and of an image; with a GPU, writes ``bench/results/encoders-gpu.md``.
"""

from __future__ import annotations

import argparse
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
from model.modeling import ChineseCLIP, build_model  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from runtime.errors import CnClipError  # noqa: E402
from runtime.sessions import BackendOptions  # noqa: E402
from tests.hf_reference import to_hf_model  # noqa: E402

GPU_BACKENDS = ("torch-cuda", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
Engine = tuple[Callable[[list[str]], object], Callable[[np.ndarray], object]]


def _baseline(model: ChineseCLIP, device: torch.device) -> Engine:
    from transformers import BertTokenizerFast

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    hf = to_hf_model(model).eval().to(device, dtype)
    tok = BertTokenizerFast(  # type: ignore[no-untyped-call]
        vocab_file=str(ROOT / "runtime" / "assets" / "vocab.txt")
    )

    def texts(batch: list[str]) -> np.ndarray:
        enc = tok(batch, padding=True, truncation=True, max_length=52, return_tensors="pt")
        with torch.inference_mode():
            hidden = hf.text_model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
            )[0]
            feats = hf.text_projection(hidden[:, 0, :]).float()
        return (feats / feats.norm(dim=-1, keepdim=True)).cpu().numpy()

    def images(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(device, dtype)
            feats = hf.get_image_features(pixel_values=batch).float()
        return (feats / feats.norm(dim=-1, keepdim=True)).cpu().numpy()

    return texts, images


def _ours(bundle_dir: Path, device: torch.device) -> dict[str, Engine | str]:
    backends = GPU_BACKENDS if device.type == "cuda" else ("torch-cpu",)
    out: dict[str, Engine | str] = {}
    for backend in backends:
        options = BackendOptions(backend=backend, device=device.index or 0)
        try:
            bundle = load_bundle(bundle_dir, options=options)
        except CnClipError as exc:  # not installed here: reported, not fatal
            out[f"bundle {backend}"] = str(exc)
            continue
        out[f"bundle {backend}"] = (bundle.encode_texts, bundle.encode_pixels)
    return out


def _measure(
    engine: Engine, queries: list[str], pixels: np.ndarray, batches: list[int]
) -> dict[str, float]:
    texts_fn, images_fn = engine
    row = {
        "query_ms": statistics.median(timed(partial(texts_fn, [q]), 1) for q in queries[:100])
        * 1000,
        "image_ms": timed(partial(images_fn, pixels[:1]), 20) * 1000,
    }
    for size in batches:
        chunk = (queries * (size // len(queries) + 1))[:size]
        row[f"t{size}"] = size / timed(partial(texts_fn, chunk), 5)
        row[f"i{size}"] = size / timed(partial(images_fn, pixels[:size]), 5)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --device cpu for a smoke run", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    model = build_model(get_config(args.arch)).eval()
    work = Path(tempfile.mkdtemp(prefix="cnclip-gpu-bench-"))
    start = time.perf_counter()
    export_bundle(model, work / "fp16", precision="fp16", verify_data=DATA, torch_programs=True)
    print(f"exported the fp16 bundle in {time.perf_counter() - start:.0f} s", flush=True)
    engines: dict[str, Engine | str] = {
        "transformers fp16 eager (baseline)": _baseline(model, device)
    }
    engines.update(_ours(work / "fp16", device))
    queries = short_queries()
    pixels = photo_pixels(max(batches), model.config.vision.image_size)
    rows: dict[str, dict[str, float]] = {}
    for name, engine in engines.items():
        if isinstance(engine, str):
            print(f"{name}: skipped ({engine})", flush=True)
            continue
        rows[name] = _measure(engine, queries, pixels, batches)
        print(name, {k: round(v, 2) for k, v in rows[name].items()}, flush=True)
    table = _table(args, device, batches, rows, engines)
    print(table)
    if device.type == "cuda":
        (ROOT / "bench" / "results" / "encoders-gpu.md").write_text(table, encoding="utf-8")
    return 0


def _table(
    args: argparse.Namespace,
    device: torch.device,
    batches: list[int],
    rows: dict[str, dict[str, float]],
    engines: dict[str, Engine | str],
) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    lines = [
        f"# Encoder speed on {gpu}: transformers fp16 eager vs our bundle ({args.arch})",
        "",
        f"- command: `.venv/bin/python bench/encoders_gpu.py --device {args.device} "
        f"--arch {args.arch} --batches {args.batches}`",
        f"- machine: {describe()}, {gpu}, torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}",
        "",
        "| engine | short query (batch 1) | image (batch 1) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {n} | {r['query_ms']:.2f} ms | {r['image_ms']:.2f} ms |" for n, r in rows.items()]
    for kind, label in (("i", "images/s"), ("t", "short texts/s")):
        lines += ["", f"| {label} by batch | " + " | ".join(map(str, batches)) + " |"]
        lines.append("| --- " + "| ---: " * len(batches) + "|")
        for name, row in rows.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{row[f'{kind}{b}']:.0f}" for b in batches) + " |"
            )
    missing = [f"- {n}: {e}" for n, e in engines.items() if isinstance(e, str)]
    if missing:
        lines += ["", "Not measured (not installed on this machine):", *missing]
    lines += [
        "",
        "Every figure is end to end, host arrays in and out (tokenization included for "
        "texts); the official T4 TensorRT batch-1 figures to beat are 3.58 ms per image "
        "and 1.54 ms per text.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
