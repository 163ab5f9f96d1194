"""Tokenizer throughput on one CPU core: ours against the official and transformers' ones.

Run from the repository root::

    .venv/bin/python bench/tokenizer.py

Texts: the 4,712 real COCO-CN captions (``$CNCLIP_DATA_DIR/coco-cn-captions.txt``, default
``../shared/data`` next to the repository), whole, and cut to MUGE-like short queries of 4 to
10 characters (seeded). Every tokenizer produces the full official rows,
``[CLS] + pieces[:50] + [SEP]`` zero-padded to 52:

* ours, batch: ``ChineseTokenizer()(texts)`` on batches of 256 texts (numpy int64 rows);
* ours, one at a time: ``ChineseTokenizer()(text)`` per text;
* official: ``cn_clip``'s ``FullTokenizer`` and the rule of ``cn_clip.clip.tokenize``
  (Python lists; the torch tensor is left out);
* transformers: the pure-Python ``BertTokenizer`` (4.x) with the same rule.

Everything runs in this one process, pinned to one CPU (``sched_setaffinity``) with
``TOKENIZERS_PARALLELISM=false``, so no thread pool can use a second core; the table's
CPU/wall column shows the ratio of process CPU time to wall time (1.00 = one busy core).
The table is printed and written to ``bench/results/tokenizer.md``.
"""

from __future__ import annotations

import os

# Before tokenizers is imported: no rayon thread pool.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import datetime
import importlib.metadata
import importlib.util
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from runtime.tokenizer import CONTEXT_LENGTH, ChineseTokenizer, is_fast_text  # noqa: E402

BATCH = 256
REPEATS = 7
SEED = 0


def data_dir() -> Path:
    path = Path(os.environ.get("CNCLIP_DATA_DIR", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"data folder {path} not found: set CNCLIP_DATA_DIR")
    return path


def load_texts() -> tuple[list[str], list[str]]:
    """(short queries, full captions) from the real COCO-CN captions."""
    lines = (data_dir() / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t", 1)[1] for line in lines if line.strip()]
    rng = random.Random(SEED)
    short = []
    for caption in captions:
        size = rng.randint(4, 10)
        start = rng.randint(0, max(0, len(caption) - size))
        short.append(caption[start : start + size])
    return short, captions


def official_module() -> ModuleType:
    """cn_clip's bert_tokenizer.py loaded on its own (its package imports torch/torchvision)."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("cn_clip is not installed: pip install --no-deps cn_clip==1.6.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "clip" / "bert_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("cn_clip_bert_tokenizer", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def official_rule(
    tokenize: Callable[[str], list[int]], cls: int, sep: int
) -> Callable[[Sequence[str]], list[list[int]]]:
    """`cn_clip.clip.tokenize` without torch: [CLS] + ids[:L-2] + [SEP], zero-padded to L."""

    def rows(texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            row = [cls, *tokenize(text)[: CONTEXT_LENGTH - 2], sep]
            out.append(row + [0] * (CONTEXT_LENGTH - len(row)))
        return out

    return rows


def measure(
    runs: dict[tuple[str, str], tuple[Callable[[], object], int]],
) -> dict[tuple[str, str], tuple[float, float]]:
    """(texts per second, CPU/wall ratio) per run: the best of REPEATS timings over its texts.

    The repeats are interleaved (every run once per round), so that load from other
    processes on the machine spreads over all tokenizers instead of hitting one of them.
    """
    for run, _ in runs.values():
        run()  # warm-up: caches, lazy tables
    best = {key: (float("inf"), 0.0) for key in runs}
    for _ in range(REPEATS):
        for key, (run, _) in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if wall < best[key][0]:
                best[key] = (wall, cpu / wall)
    return {key: (runs[key][1] / wall, ratio) for key, (wall, ratio) in best.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    short, captions = load_texts()
    emoji = [f"{text}😀" for text in short]  # the same queries on the exact path
    ours = ChineseTokenizer()
    official = official_module().FullTokenizer(vocab_file=str(ours.vocab_path), do_lower_case=True)
    official_rows = official_rule(
        lambda t: official.convert_tokens_to_ids(official.tokenize(t)), ours.cls_id, ours.sep_id
    )
    import transformers

    bert: Any = transformers.BertTokenizer
    hf = bert(vocab_file=str(ours.vocab_path), do_lower_case=True)
    hf_rows = official_rule(
        lambda t: hf.encode(t, add_special_tokens=False), ours.cls_id, ours.sep_id
    )

    def ours_batch(texts: Sequence[str]) -> Callable[[], object]:
        return lambda: [ours(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]

    def ours_single(texts: Sequence[str]) -> Callable[[], object]:
        return lambda: [ours(text) for text in texts]

    def official_run(texts: Sequence[str]) -> Callable[[], object]:
        return lambda: official_rows(texts)

    def hf_run(texts: Sequence[str]) -> Callable[[], object]:
        return lambda: hf_rows(texts)

    # The figures are only worth having if everyone computes the same rows.
    for texts in (short, captions, emoji):
        expected = np.array(official_rows(texts), dtype=np.int64)
        assert np.array_equal(ours(texts).ids, expected)
        assert np.array_equal(np.array(hf_rows(texts), dtype=np.int64), expected)

    sets = {"short": short, "full": captions, "emoji": emoji}
    makers = {
        "ours, batch of 256": ours_batch,
        "ours, one text per call": ours_single,
        "official cn_clip FullTokenizer": official_run,
        "transformers BertTokenizer (slow)": hf_run,
    }
    results = measure(
        {(name, k): (make(v), len(v)) for name, make in makers.items() for k, v in sets.items()}
    )

    def mean_chars(texts: list[str]) -> float:
        return sum(map(len, texts)) / len(texts)

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    lines = [
        "# Tokenizer throughput, one CPU core",
        "",
        f"- command: `.venv/bin/python bench/{Path(__file__).name}`",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs; "
        f"pinned to CPU {affinity}, TOKENIZERS_PARALLELISM=false",
        f"- Python {platform.python_version()}, tokenizers {version('tokenizers')}, "
        f"transformers {version('transformers')}, cn_clip {version('cn_clip')}, "
        f"numpy {version('numpy')}",
        f"- texts: {len(short)} short queries (COCO-CN captions cut to 4-10 chars, "
        f"mean {mean_chars(short):.1f}; {sum(map(is_fast_text, short))} on the fast path), "
        f"{len(captions)} full captions (mean {mean_chars(captions):.1f} chars; "
        f"{sum(map(is_fast_text, captions))} on the fast path), and the short queries with "
        "an emoji appended (all on the exact path)",
        "- every tokenizer makes the official rows ([CLS] + pieces[:50] + [SEP], padded to 52), "
        "checked equal before timing; best of "
        f"{REPEATS} interleaved runs; CPU/wall = process CPU time / wall time",
        "",
        "| tokenizer | short queries/s | full captions/s | short + emoji/s | CPU/wall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in makers:
        rates = " | ".join(f"{results[name, k][0]:,.0f}" for k in sets)
        ratio = max(results[name, k][1] for k in sets)
        lines.append(f"| {name} | {rates} | {ratio:.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    out = ROOT / "bench" / "results" / "tokenizer.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
