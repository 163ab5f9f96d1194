"""Text-to-image and image-to-text retrieval on official-format data (MUGE, Flickr30K-CN, COCO-CN).

>>> from evaluation import open_model, load_retrieval_data, evaluate_retrieval
>>> data = load_retrieval_data("datasets/MUGE", "valid")
>>> run = evaluate_retrieval(open_model("bundles/vit-b-16-fp16"), data)
>>> run.metrics["t2i"]["r1"], run.metrics["mean_recall"]

A split ``S`` of a dataset directory is read from ``S_texts.jsonl`` (``{"text_id",
"text", "image_ids"}`` per line) and its images from ``S_imgs.tsv`` (``image_id<TAB>
urlsafe base64``) or from the official LMDB (``lmdb/S/imgs``). What the official
scripts do is done here too:

- images are ranked in LMDB key order (the byte order of their ids), which decides ties;
- texts are lower-cased and curly quotes made straight before tokenizing;
- every text of the annotation is a query of text-to-image retrieval; image-to-text uses
  the inverted annotation (an image's relevant texts are those that list it);
- R@1/5/10 count a query as a hit when any relevant id is in its top k; each
  direction's mean recall is the mean of its three, and ``mean_recall`` the mean over the
  directions evaluated (the paper's MR).

Where the official scripts would stop, this counts and reports instead: a text whose
images are all missing from the image file (or cannot be decoded) is a miss; such images
are left out of image-to-text retrieval. ``counts`` says how many of each.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.encode import IMAGE_BATCH, TEXT_BATCH, embed_images, embed_texts
from evaluation.metrics import invert, recall_at_k, top_k
from evaluation.models import EvalModel
from runtime.errors import CnClipError, DataError

log = logging.getLogger(__name__)

Id = int | str
DIRECTIONS = ("t2i", "i2t")
TOP_K = 10  # what the prediction files hold, as the official scripts expect


@dataclass
class RetrievalData:
    """One split: the candidate images and the annotated texts.

    ``image_ids`` are strings in ranking order; ``read(i)`` returns the encoded bytes of
    image ``i``. ``relevant[t]`` lists text ``t``'s image ids that exist in the image
    file. ``skipped`` counts what the readers left out.
    """

    name: str
    image_ids: list[str]
    read: Callable[[int], bytes]
    text_ids: list[Id]
    texts: list[str]
    relevant: list[list[str]]
    skipped: dict[str, int] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def official_eval_text(text: str) -> str:
    """The official evaluation's text cleanup: lower case, curly double quotes made straight."""
    return text.lower().replace("“", '"').replace("”", '"')


def _lmdb_dir(data_dir: Path, split: str) -> Path | None:
    for candidate in (data_dir / "lmdb" / split, data_dir / split, data_dir):
        if (candidate / "imgs").is_dir() and (candidate / "pairs").is_dir():
            return candidate
    return None


def load_retrieval_data(data_dir: str | os.PathLike[str], split: str) -> RetrievalData:
    """Read split ``split`` of an official-format dataset directory.

    Images come from ``{split}_imgs.tsv`` when it exists, else from the LMDB
    (``lmdb/{split}``, ``{split}`` or the directory itself, holding ``imgs/`` and
    ``pairs/``). Texts come from ``{split}_texts.jsonl`` when it exists, else from the
    LMDB's pairs.

    Raises:
        DataError: nothing readable for the split, with what was looked for.
    """
    from sources.official import LmdbSource, OfficialSource, split_files

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (give the dataset folder, e.g. datasets/MUGE)")
    tsv, jsonl = root / f"{split}_imgs.tsv", root / f"{split}_texts.jsonl"
    lmdb = _lmdb_dir(root, split)
    if tsv.is_file():
        split_files(root, split)  # both files or a clear error
        source = OfficialSource(root, split)
        entries = source.texts()
        ids = source.image_ids()
        skipped = dict(source.skipped)
        read_id: Callable[[str], bytes] = source.image
        close = source.close
    elif lmdb is not None:
        lmdb_source = LmdbSource(lmdb)
        ids = lmdb_source.image_ids()
        entries = _jsonl_texts(jsonl, set(ids)) if jsonl.is_file() else lmdb_source.texts()
        skipped = {}
        read_id = lmdb_source.image
        close = lmdb_source.close
    else:
        raise DataError(
            f"{root}: no images for split {split!r}: expected {tsv.name} (with {jsonl.name}) "
            f"or an LMDB directory lmdb/{split}/ holding imgs/ and pairs/"
        )
    # The official evaluation reads images from the LMDB, whose keys are sorted bytewise.
    ordered = sorted(ids, key=lambda i: i.encode("utf-8"))
    text_ids: list[Id] = []
    texts: list[str] = []
    relevant: list[list[str]] = []
    seen: dict[Id, int] = {}
    for text_id, text, image_ids in entries:
        if text_id in seen:  # the official reference keeps the last line of an id
            skipped["duplicate_text_ids"] = skipped.get("duplicate_text_ids", 0) + 1
            texts[seen[text_id]], relevant[seen[text_id]] = text, list(image_ids)
            continue
        seen[text_id] = len(text_ids)
        text_ids.append(text_id)
        texts.append(text)
        relevant.append(list(image_ids))
    if not ordered:
        raise DataError(f"{root}: split {split!r} holds no images")
    if not texts:
        raise DataError(f"{root}: split {split!r} holds no texts")
    return RetrievalData(
        name=f"{root.name}/{split}",
        image_ids=ordered,
        read=lambda i: read_id(ordered[i]),
        text_ids=text_ids,
        texts=texts,
        relevant=relevant,
        skipped=skipped,
        close=close,
    )


def _jsonl_texts(path: Path, present: set[str]) -> list[tuple[Id, str, list[str]]]:
    """Texts of an official jsonl with their image ids that exist in ``present``."""
    out: list[tuple[Id, str, list[str]]] = []
    malformed = missing = 0
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text_id, text, image_ids = obj["text_id"], obj["text"], obj["image_ids"]
        except (ValueError, KeyError, TypeError):
            malformed += 1
            continue
        if not isinstance(text, str) or not isinstance(image_ids, list):
            malformed += 1
            continue
        kept = [str(i) for i in image_ids if str(i) in present]
        missing += len(image_ids) - len(kept)
        out.append((text_id, text, kept))
    if malformed:
        log.warning("%s: skipped %d malformed lines", path, malformed)
    if missing:
        log.warning("%s: %d annotated image ids are not among the images", path, missing)
    return out


# ---------------------------------------------------------------- evaluation


@dataclass
class RetrievalRun:
    """Metrics (percent), counts, the top-10 predictions of each direction, and timings."""

    metrics: dict[str, Any]
    counts: dict[str, int]
    t2i: dict[Id, list[str]]
    i2t: dict[str, list[Id]]
    seconds: dict[str, float]
    failed_images: list[tuple[str, str]] = field(default_factory=list)


def _check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(directions))
    unknown = [d for d in chosen if d not in DIRECTIONS]
    if not chosen or unknown:
        raise CnClipError(f"directions must be among t2i and i2t, not {list(directions)}")
    return chosen


def evaluate_retrieval(
    model: EvalModel,
    data: RetrievalData,
    *,
    directions: Sequence[str] = DIRECTIONS,
    index: Any = None,
    nprobe: int | None = None,
    text_batch: int = TEXT_BATCH,
    image_batch: int = IMAGE_BATCH,
    workers: int | None = None,
    progress: bool | None = None,
) -> RetrievalRun:
    """Embed the split with ``model`` and score the chosen directions.

    ``index``: a loaded :class:`index.search.CatalogIndex` whose item ids are the image
    ids; text-to-image then searches it instead of the exact inner products.
    """
    directions = _check_directions(directions)
    if index is not None and "t2i" not in directions:
        raise CnClipError("an index serves text-to-image retrieval; evaluate t2i with it")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    need_images = index is None or "i2t" in directions
    images = None
    if need_images:
        images = embed_images(
            model,
            len(data.image_ids),
            data.read,
            lambda i: data.image_ids[i],
            batch_size=image_batch,
            workers=workers,
            progress=progress,
            desc=f"{model.info.label}: images",
        )
        seconds["embed_images"] = time.perf_counter() - started
    started = time.perf_counter()
    texts = embed_texts(
        model,
        [official_eval_text(t) for t in data.texts],
        batch_size=text_batch,
        progress=progress,
        desc=f"{model.info.label}: texts",
    )
    seconds["embed_texts"] = time.perf_counter() - started

    started = time.perf_counter()
    kept_ids = [data.image_ids[i] for i in images.kept] if images is not None else []
    usable = set(kept_ids) if images is not None else set(data.image_ids)
    reference = {tid: rel for tid, rel in zip(data.text_ids, data.relevant, strict=True)}
    metrics: dict[str, Any] = {}
    t2i: dict[Id, list[str]] = {}
    i2t: dict[str, list[Id]] = {}
    if "t2i" in directions:
        if index is not None:
            found = index.search(texts.vectors, k=TOP_K, nprobe=nprobe).ids
            t2i = {tid: list(ids) for tid, ids in zip(data.text_ids, found, strict=True)}
        else:
            assert images is not None
            rows, _ = top_k(texts.vectors, images.vectors, TOP_K)
            t2i = {
                tid: [kept_ids[r] for r in ranked]
                for tid, ranked in zip(data.text_ids, rows.tolist(), strict=True)
            }
        metrics["t2i"] = recall_at_k(reference, t2i)
    if "i2t" in directions:
        assert images is not None
        # Images that were annotated but could not be used have no prediction: left out.
        inverted = {img: ts for img, ts in invert(reference).items() if img in usable}
        rows, _ = top_k(images.vectors, texts.vectors, TOP_K)
        i2t = {
            image_id: [data.text_ids[r] for r in ranked]
            for image_id, ranked in zip(kept_ids, rows.tolist(), strict=True)
        }
        metrics["i2t"] = recall_at_k(inverted, i2t)
    metrics["mean_recall"] = float(np.mean([metrics[d]["mean_recall"] for d in directions]))
    seconds["search"] = time.perf_counter() - started

    failed = [] if images is None else [(data.image_ids[i], why) for i, why in images.failed]
    no_image = sum(1 for rel in data.relevant if not set(rel) & usable)
    counts = {
        "images": len(data.image_ids),
        "images_used": len(usable),
        "images_unreadable": len(failed),
        "texts": len(data.texts),
        "texts_without_usable_images": no_image,
        "texts_truncated": len(texts.truncated),
        **{f"skipped_{k}": v for k, v in data.skipped.items() if v},
    }
    if no_image:
        log.warning(
            "%s: %d of %d texts have none of their images among the usable ones; they count "
            "as misses",
            data.name,
            no_image,
            len(data.texts),
        )
    return RetrievalRun(metrics, counts, t2i, i2t, seconds, failed)


# ---------------------------------------------------------------- prediction files


def _official_id(value: Id) -> Id:
    """Ids written as JSON integers when they are decimal numbers, as the official files."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and str(int(value)) == value:
        return int(value)
    return value


def write_predictions(run: RetrievalRun, out_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """``{split}_predictions.jsonl`` (text to image) and ``{split}_predictions_tr.jsonl``
    (image to text), in the official prediction format, written atomically."""
    out = Path(out_dir)
    written: list[Path] = []
    if run.t2i:
        lines = (
            {"text_id": _official_id(t), "image_ids": [_official_id(i) for i in ids]}
            for t, ids in run.t2i.items()
        )
        written.append(write_jsonl(out / f"{split}_predictions.jsonl", lines))
    if run.i2t:
        lines = (
            {"image_id": _official_id(i), "text_ids": [_official_id(t) for t in ids]}
            for i, ids in run.i2t.items()
        )
        written.append(write_jsonl(out / f"{split}_predictions_tr.jsonl", lines))
    return written


def write_jsonl(path: Path, rows: Any) -> Path:
    from evaluation.report import atomic_write

    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
