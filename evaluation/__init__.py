"""Evaluation: the paper's retrieval and zero-shot tables on any checkpoint or bundle.

- :mod:`evaluation.retrieval`: R@1/5/10 and mean recall, text to image and image to
  text, on official-format data (``{split}_imgs.tsv`` or LMDB, ``{split}_texts.jsonl``),
  plus the official prediction files;
- :mod:`evaluation.zeroshot`: top-1/top-5 accuracy and mean per-class recall on an
  ImageFolder set with Chinese class names (prompt ensembling), confusion matrix;
- :mod:`evaluation.compare`: the same evaluation over several models side by side
  (a checkpoint and its fp32/fp16/int8 bundles), reported as JSON and Markdown.

Bundles need no torch; a checkpoint loads through :mod:`trainer` (torch) when given.
"""

from __future__ import annotations

from evaluation.compare import ModelSpec, RunOptions, run_retrieval, run_zeroshot
from evaluation.models import EvalModel, open_model
from evaluation.retrieval import evaluate_retrieval, load_retrieval_data, write_predictions
from evaluation.zeroshot import evaluate_zeroshot, load_zeroshot_data

__all__ = [
    "EvalModel",
    "ModelSpec",
    "RunOptions",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "load_retrieval_data",
    "load_zeroshot_data",
    "open_model",
    "run_retrieval",
    "run_zeroshot",
    "write_predictions",
]
