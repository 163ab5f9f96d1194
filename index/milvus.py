"""Milvus as the index backend, for catalogs beyond one machine (``milvus://HOST:PORT/NAME``).

``NAME`` is an alias. Each build writes a new collection ``NAME_v0001``, ``NAME_v0002``
... and moves the alias to it (``alter_alias``) only once its index is built, loaded and
its recall measured: searches through the alias never see a half-built version, and
the old collection stays (released from memory) until ``cnclip index drop-version``;
``cnclip index switch`` moves the alias back. Item changes (``add`` upserts, ``remove``
deletes) go to the current collection in place: prices and stock change all day, and
need no new version.

A collection holds, per item: ``id`` (the primary key), ``vector``, ``title`` and one
scalar field per catalog attribute whose values all have one type (text, integer,
number, boolean, or a list of one of them as an ARRAY field; attribute names that are
not Milvus identifiers, such as ``颜色``, get a field ``attr_N``). Other attributes go to
the dynamic field and can be filtered on by single values. An optional partition-key
field (a shop id) lets one collection serve many tenants. What cnclip needs to know of a
version (the model, the field map, the index and its measured recall) is the
collection's ``cnclip.manifest`` property (:class:`MilvusManifest`).

Filters (``{"colour": ["红", "蓝"], "tags": "新品"}``) become Milvus boolean expressions
whose values are escaped literals: ``x" or id != "`` matches that text, never changes the
expression. A filtered search returns ``k`` results whenever ``k`` items match: short
answers are searched again wider, and finally exactly over the matching items' vectors.

The index type follows the catalog's size and what the server can build
(:func:`choose_index`); a type the server cannot build fails the build with a message,
never a silent brute-force search (milvus-lite accepts any type until it loads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from index.backend import (
    MAX_K,
    MILVUS_SCHEME,
    Accept,
    IndexUnavailableError,
    RecallReport,
    SearchResult,
    TextSearcher,
    VersionInfo,
    check_queries,
)
from index.evaluate import drop_ids, exact_search, recall_at
from index.relevance import Calibration
from index.versions import IndexVersionError, now
from runtime.errors import CnClipError, ConfigError, DataError
from runtime.files import progress_disabled
from runtime.identity import ModelRef, check_serves

log = logging.getLogger("cnclip.index")

TOKEN_ENV = "CNCLIP_MILVUS_TOKEN"
DEFAULT_PORT = 19530
MANIFEST_PROPERTY = "cnclip.manifest"
REVISION_PROPERTY = "cnclip.revision"
FORMAT = "cnclip-milvus-index"
FORMAT_VERSION = 1
ID, VECTOR, TITLE = "id", "vector", "title"
#: The title's words (index.lexical's segmenter) and their BM25 vector, which Milvus's
#: BM25 function computes from them with its jieba analyzer.
WORDS, WORDS_BM25 = "cnclip_words", "cnclip_words_bm25"
RESERVED = frozenset({ID, VECTOR, TITLE, WORDS, WORDS_BM25, "image", "$meta"})
WORDS_ANALYZER = {"tokenizer": {"type": "jieba", "mode": "exact"}}
MAX_ID_BYTES = 512
VARCHAR_MAX = 65_535
ARRAY_CAPACITY = 4_096
INSERT_BATCH = 1_000
EXACT_SUBSET_MAX = 50_000  # matching sets at most this big are searched exactly when short
EXACT_MAX = 100_000  # as index.factory: up to this many vectors, exact search
HNSW_MAX = 20_000_000  # beyond, an inverted file with PQ codes (memory)
GPU_MIN = 1_000_000
LOAD_TIMEOUT_S = 3_600.0  # loading a released version of millions of vectors takes minutes
EVAL_QUERIES = 1_000
RELEASE_GRACE_S = 3.0
VOCABULARY_MAX = 1_000  # as index.search: distinct values of an attribute queries may name
MIN_ITEMS_KNOWN = 2  # a value already in the vocabulary counts as two items
TEXTS_SUFFIX = "_texts"  # NAME_vNNNN_texts: a version's text corpus (image-to-text)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,190}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

#: What a Milvus cluster builds on its CPU query nodes (2.4 and later), and with GPUs.
CLUSTER_INDEXES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "HNSW_SQ", "DISKANN", "SCANN")
GPU_INDEXES = ("GPU_BRUTE_FORCE", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_CAGRA")
#: What milvus-lite 3.x builds (it accepts other names and fails when it loads them).
LITE_INDEXES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
#: The search knob of each index type, and the values a tuning sweep tries.
KNOBS: dict[str, tuple[str, tuple[int, ...]]] = {
    "IVF_FLAT": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "IVF_SQ8": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "IVF_PQ": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "SCANN": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "GPU_IVF_FLAT": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "GPU_IVF_PQ": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    "HNSW": ("ef", (16, 32, 64, 128, 256, 512, 1024, 2048)),
    "HNSW_SQ": ("ef", (16, 32, 64, 128, 256, 512, 1024, 2048)),
    "DISKANN": ("search_list", (16, 32, 64, 128, 256, 512)),
    "GPU_CAGRA": ("itopk_size", (32, 64, 128, 256, 512, 1024)),
}


class MilvusError(ConfigError):
    """Milvus refused a request (a bad parameter, a missing collection, a full server)."""


# ---------------------------------------------------------------- locations


@dataclass(frozen=True)
class MilvusLocation:
    """``milvus://HOST:PORT/NAME[?db=DB&token=TOKEN]`` (the token may instead come from
    ``CNCLIP_MILVUS_TOKEN``); ``NAME`` is the alias the versions live behind."""

    host: str
    port: int
    name: str
    db: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> MilvusLocation:
        if not text.startswith(MILVUS_SCHEME):
            raise ConfigError(f"{text!r}: a Milvus location is milvus://HOST:PORT/NAME")
        parts = urllib.parse.urlsplit(text)
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ConfigError(f"{text!r}: bad port ({exc})") from exc
        name = parts.path.strip("/")
        if not host or not name:
            raise ConfigError(f"{text!r}: give milvus://HOST:PORT/NAME (NAME: the index's alias)")
        if not _NAME.match(name):
            raise ConfigError(
                f"{text!r}: the name {name!r} must start with a letter or _ and hold only "
                "letters, digits and _ (at most 191 characters): it names Milvus collections"
            )
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"db", "token"})
        if unknown:
            raise ConfigError(f"{text!r}: unknown option {unknown[0]!r} (known: db, token)")
        db = query.get("db", [None])[-1] or None
        token = query.get("token", [None])[-1] or os.environ.get(TOKEN_ENV) or None
        return cls(host, port, name, db, token)

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def collection(self, number: int) -> str:
        return f"{self.name}_v{number:04d}"

    def number_of(self, collection: str) -> int | None:
        """The version number of one of this location's collections, else None."""
        match = re.fullmatch(re.escape(self.name) + r"_v(\d{4,})", collection)
        return None if match is None else int(match.group(1))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = f"?db={self.db}" if self.db else ""
        return f"{MILVUS_SCHEME}{host}:{self.port}/{self.name}{db}"


# ---------------------------------------------------------------- the connection


def _pymilvus() -> Any:
    """pymilvus, imported without what its import does to the environment: it calls
    python-dotenv's ``load_dotenv()``, which copies the first ``.env`` file found above
    pymilvus's own folder (a project's docker-compose settings, when the virtual
    environment lives in the project) into ``os.environ``, where the service's settings
    would read it. What the import added is taken out again.

    Raises:
        ConfigError: pymilvus is not installed.
    """
    if "pymilvus" in sys.modules:
        return sys.modules["pymilvus"]
    before = set(os.environ)
    try:
        import pymilvus
    except ImportError as exc:
        raise ConfigError(
            "the Milvus backend needs pymilvus: pip install 'cnclip[milvus]'"
        ) from exc
    finally:
        for key in set(os.environ) - before:
            del os.environ[key]
    return pymilvus


def _unreachable(exc: BaseException) -> bool:
    """Whether a pymilvus or gRPC error means the server cannot be reached (not a refusal)."""
    import grpc

    _pymilvus()
    from pymilvus.exceptions import MilvusException, MilvusUnavailableException

    if isinstance(exc, MilvusUnavailableException):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, MilvusException):
        text = str(exc).lower()
        return any(
            word in text
            for word in ("fail connecting", "unavailable", "deadline", "connection refused")
        )
    return False


class Connection:
    """A MilvusClient made on first use and every call timed out and translated: an
    unreachable server raises :class:`IndexUnavailableError` (and pymilvus reconnects
    by itself when the server is back); a refusal raises :class:`MilvusError`."""

    def __init__(self, location: MilvusLocation, timeout_s: float = 10.0) -> None:
        self.location = location
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                _pymilvus()
                from pymilvus import MilvusClient

                # pymilvus configures its loggers when imported and then logs a traceback
                # for every failed call; our errors say what happened, once.
                for name in ("pymilvus", "pymilvus.milvus_client"):
                    logging.getLogger(name).setLevel(logging.CRITICAL)
                try:
                    self._client = MilvusClient(
                        uri=self.location.uri,
                        token=self.location.token or "",
                        db_name=self.location.db or "",
                        timeout=self.timeout_s,
                    )
                except Exception as exc:
                    raise self._translate(exc, "connect") from exc
            return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self.client()
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            raise self._translate(exc, method) from exc

    def _translate(self, exc: Exception, what: str) -> CnClipError:
        if _unreachable(exc):
            return IndexUnavailableError(
                f"Milvus at {self.location.uri} cannot be reached ({what}: "
                f"{_message(exc)}); retry when it is back"
            )
        return MilvusError(f"Milvus at {self.location.uri} refused {what}: {_message(exc)}")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                # Closing a dead channel may fail; there is nothing left to do then.
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None


def _gone(exc: BaseException) -> bool:
    """Whether Milvus refused because the collection was released or dropped."""
    text = str(exc).lower()
    return "released" in text or "not exist" in text or "not found" in text or "not loaded" in text


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


@dataclass(frozen=True)
class ServerInfo:
    """What a Milvus server is and which vector indexes it builds."""

    version: str
    lite: bool
    gpus: bool
    indexes: tuple[str, ...]

    def describe(self) -> str:
        kind = "milvus-lite" if self.lite else "Milvus"
        return f"{kind} {self.version}{' with GPUs' if self.gpus else ''}"


def server_info(connection: Connection, gpus: bool | None = None) -> ServerInfo:
    """Ask the server what it is. milvus-lite builds :data:`LITE_INDEXES`; a cluster
    :data:`CLUSTER_INDEXES`, plus :data:`GPU_INDEXES` when it has GPUs: a GPU image
    reports a version ending in ``-gpu``, or say so with ``gpus=True``."""
    version = str(connection.call("get_server_version"))
    lite = "lite" in version.lower()
    has_gpus = (not lite) and (bool(gpus) if gpus is not None else version.endswith("-gpu"))
    indexes = LITE_INDEXES if lite else CLUSTER_INDEXES + (GPU_INDEXES if has_gpus else ())
    return ServerInfo(version, lite, has_gpus, indexes)


# ---------------------------------------------------------------- fields and filters

KINDS = ("str", "int", "float", "bool", "str[]", "int[]", "float[]")


@dataclass(frozen=True)
class FieldSpec:
    """The scalar field that holds one catalog attribute, and the kind of its values."""

    field: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "kind": self.kind}


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return "float" if math.isfinite(value) else None
    if isinstance(value, str):
        return "str"
    return None


def _kind(value: Any) -> str | None:
    """The kind of a value (a list of one scalar kind included), None for any other."""
    if isinstance(value, list):
        kinds = {_scalar_kind(v) for v in value}
        if not value:
            return "[]"
        if None in kinds:
            return None
        if kinds == {"int", "float"}:
            return "float[]"
        return f"{kinds.pop()}[]" if len(kinds) == 1 else None
    return _scalar_kind(value)


def _merge_kinds(kinds: set[str]) -> str | None:
    """One kind for all the values of an attribute, or None (they go to the dynamic field)."""
    if not kinds or None in kinds:
        return None
    if "[]" in kinds:
        lists = {k for k in kinds if k.endswith("[]") and k != "[]"}
        kinds = lists or {"str[]"}
    if kinds == {"int", "float"}:
        return "float"
    if kinds == {"int[]", "float[]"}:
        return "float[]"
    return next(iter(kinds)) if len(kinds) == 1 else None


def plan_fields(
    items: Sequence[Mapping[str, Any]] | None, partition_key: str | None = None
) -> dict[str, FieldSpec]:
    """The typed field of every attribute whose values share one kind (module docs)."""
    seen: dict[str, set[Any]] = {}
    for item in items or ():
        for key, value in item.items():
            if key in RESERVED or value is None:
                continue
            seen.setdefault(str(key), set()).add(_kind(value))
    plan: dict[str, FieldSpec] = {}
    taken = set(RESERVED)
    for number, key in enumerate(sorted(seen)):
        kind = _merge_kinds(seen[key])
        if kind is None:
            continue
        name = key if _FIELD.match(key) and key.lower() not in taken else f"attr_{number}"
        while name in taken:
            name = f"{name}_"
        taken.add(name.lower())
        plan[key] = FieldSpec(name, kind)
    if partition_key is not None:
        spec = plan.get(partition_key)
        if spec is None or spec.kind not in ("str", "int"):
            raise DataError(
                f"the partition key {partition_key!r} must be a text or integer attribute of "
                "every item"
            )
        missing = sum(1 for item in items or () if item.get(partition_key) is None)
        if missing:
            raise DataError(f"{missing} items have no {partition_key!r} (the partition key)")
    return plan


def _fits(value: Any, kind: str) -> bool:
    element = kind.removesuffix("[]")
    if element == "str":
        return isinstance(value, str)
    if element == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if element == "int":
        return isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
    return math.isfinite(value)


def literal(value: Any) -> str:
    """A Milvus expression literal of a filter value; strings are escaped so that no
    value can change the expression around it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"filter value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\t", "\\t")
        )
        return f'"{escaped}"'
    raise DataError(f"filter value {value!r}: give text, a number or a boolean")


def _and_not(
    expression: str | None, fields: Mapping[str, FieldSpec], exclude: Mapping[str, Any]
) -> str | None:
    """``expression`` and none of ``exclude``'s attributes (each key on its own: an item
    is excluded when it matches any key)."""
    if not exclude:
        raise DataError("an exclusion needs at least one attribute")
    clauses = [] if expression is None else [f"({expression})"]
    for key, wanted in exclude.items():
        matched = filter_expression(fields, {key: wanted})
        if matched is not None:  # None: no item can match it, so none is excluded
            clauses.append(f"not ({matched})")
    return " and ".join(clauses) or None


def filter_expression(fields: Mapping[str, FieldSpec], conditions: Mapping[str, Any]) -> str | None:
    """The expression for a filter (every key, any of a key's values; a list attribute
    matches any of its elements), or None when no item can match (a value of another
    type than the attribute's, as on FAISS, where ``"42"`` never matches ``42``)."""
    if not conditions:
        raise DataError("a filter needs at least one attribute")
    clauses = []
    for key, wanted in conditions.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or not all(_scalar_kind(v) is not None for v in values):
            raise DataError(
                f"filter {key!r}: give a value or a list of values (strings, numbers or booleans)"
            )
        spec = fields.get(str(key))
        if spec is None:
            # The dynamic field: single values only, compared one by one.
            target = f"$meta[{literal(str(key))}]"
            clauses.append(" or ".join(f"{target} == {literal(v)}" for v in values))
            continue
        usable = [v for v in values if _fits(v, spec.kind)]
        if not usable:
            return None
        if spec.kind.endswith("[]"):
            element = spec.kind.removesuffix("[]")
            cast = [int(v) if element == "int" else v for v in usable]
            listed = ", ".join(literal(v) for v in cast)
            clauses.append(f"array_contains_any({spec.field}, [{listed}])")
        elif spec.kind == "bool":
            clauses.append(" or ".join(f"{spec.field} == {literal(v)}" for v in usable))
        else:
            cast = [int(v) if spec.kind == "int" else v for v in usable]
            clauses.append(f"{spec.field} in [{', '.join(literal(v) for v in cast)}]")
    return " and ".join(f"({clause})" for clause in clauses)


# ---------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class MilvusManifest:
    """A version's ``cnclip.manifest`` collection property, written at build, read by
    every reader: the model, the field map, the index and its measured recall."""

    model: ModelRef
    dim: int
    count: int
    index_type: str
    build_params: Mapping[str, Any]
    fields: Mapping[str, FieldSpec]
    partition_key: str | None = None
    dynamic_keys: tuple[str, ...] = ()
    choice: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    recall: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    server: str = ""
    texts: str | None = None
    relevance: Mapping[str, Any] = field(default_factory=dict)
    vocabulary: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lexical: bool = False
    lexicon: tuple[str, ...] = ()
    created: str = field(default_factory=now)
    format_version: int = FORMAT_VERSION

    @property
    def chosen(self) -> Mapping[str, Any]:
        return self.recall.get("chosen") or {}

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.fields) | frozenset(self.dynamic_keys)

    def replace(self, **changes: Any) -> MilvusManifest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict(),
            "dim": self.dim,
            "count": self.count,
            "index_type": self.index_type,
            "build_params": dict(self.build_params),
            "fields": {key: spec.to_dict() for key, spec in self.fields.items()},
            "partition_key": self.partition_key,
            "dynamic_keys": list(self.dynamic_keys),
            "choice": dict(self.choice),
            "search": dict(self.search),
            "recall": dict(self.recall),
            "timings": dict(self.timings),
            "server": self.server,
            "texts": self.texts,
            "relevance": dict(self.relevance),
            "vocabulary": {k: list(v) for k, v in self.vocabulary.items()},
            "lexical": self.lexical,
            "lexicon": list(self.lexicon),
            "created": self.created,
        }

    def to_property(self) -> str:
        data = self.to_dict()
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if len(text) > 60_000:  # keep the property small: the sweep's points go first
            data["recall"] = {k: v for k, v in data["recall"].items() if k != "points"}
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return text

    @classmethod
    def from_property(cls, text: str | None, where: str) -> MilvusManifest:
        if not text:
            raise IndexVersionError(
                f"{where}: the collection has no {MANIFEST_PROPERTY} property; it was not "
                "built by cnclip index build (or the build did not finish)"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise IndexVersionError(f"{where}: unreadable {MANIFEST_PROPERTY} ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexVersionError(f"{where}: {MANIFEST_PROPERTY} is not a cnclip manifest")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise IndexVersionError(
                f"{where}: written by a newer cnclip (format {data['format_version']}); "
                "upgrade cnclip"
            )
        try:
            return cls(
                model=ModelRef.from_dict(data["model"]),
                dim=int(data["dim"]),
                count=int(data["count"]),
                index_type=str(data["index_type"]),
                build_params=dict(data.get("build_params") or {}),
                fields={
                    str(key): FieldSpec(str(spec["field"]), str(spec["kind"]))
                    for key, spec in (data.get("fields") or {}).items()
                },
                partition_key=data.get("partition_key"),
                dynamic_keys=tuple(str(k) for k in data.get("dynamic_keys") or ()),
                choice=dict(data.get("choice") or {}),
                search=dict(data.get("search") or {}),
                recall=dict(data.get("recall") or {}),
                timings=dict(data.get("timings") or {}),
                server=str(data.get("server", "")),
                texts=None if data.get("texts") is None else str(data["texts"]),
                relevance=dict(data.get("relevance") or {}),
                vocabulary={
                    str(k): tuple(str(x) for x in v)
                    for k, v in (data.get("vocabulary") or {}).items()
                },
                lexical=bool(data.get("lexical", False)),
                lexicon=tuple(str(w) for w in data.get("lexicon") or ()),
                created=str(data.get("created", "")),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexVersionError(
                f"{where}: the manifest's {exc} is missing or malformed; rebuild the version"
            ) from exc


def _properties(connection: Connection, collection: str) -> dict[str, str]:
    described = connection.call("describe_collection", collection)
    return {str(k): str(v) for k, v in (described.get("properties") or {}).items()}


def read_manifest(connection: Connection, collection: str) -> MilvusManifest:
    where = f"{connection.location.uri}/{collection}"
    return MilvusManifest.from_property(
        _properties(connection, collection).get(MANIFEST_PROPERTY), where
    )


def _write_manifest(connection: Connection, collection: str, manifest: MilvusManifest) -> None:
    connection.call(
        "alter_collection_properties",
        collection,
        properties={MANIFEST_PROPERTY: manifest.to_property(), REVISION_PROPERTY: _token()},
    )


def _token() -> str:
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- choosing the index


@dataclass(frozen=True)
class MilvusIndexChoice:
    """A Milvus index type, its build parameters, and the reasons, for the manifest."""

    index_type: str
    params: Mapping[str, Any]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_type": self.index_type,
            "params": dict(self.params),
            "reasons": list(self.reasons),
        }


def _nlist(count: int) -> int:
    return int(max(1, min(65_536, 4 * math.sqrt(count), max(1, count // 39))))


def _pq_m(dim: int) -> int:
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_params(index_type: str, count: int, dim: int) -> dict[str, Any]:
    """Build parameters for ``index_type`` at ``count`` x ``dim`` (Milvus's names)."""
    if index_type in ("IVF_FLAT", "IVF_SQ8", "GPU_IVF_FLAT", "SCANN"):
        return {"nlist": _nlist(count)}
    if index_type in ("IVF_PQ", "GPU_IVF_PQ"):
        return {"nlist": _nlist(count), "m": _pq_m(dim), "nbits": 8}
    if index_type in ("HNSW", "HNSW_SQ"):
        params: dict[str, Any] = {"M": 32, "efConstruction": 256}
        if index_type == "HNSW_SQ":
            params["sq_type"] = "SQ8"
        return params
    if index_type == "GPU_CAGRA":
        return {"intermediate_graph_degree": 64, "graph_degree": 32}
    return {}


def choose_index(
    count: int,
    dim: int,
    server: ServerInfo,
    index_type: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> MilvusIndexChoice:
    """The index for ``count`` vectors on ``server``: the one asked for (which the server
    must build) or, by size, exact search, HNSW, then IVF_PQ (IVF_SQ8 where the server
    has no IVF_PQ), and GPU_CAGRA from a million vectors on a server with GPUs."""
    if index_type is not None:
        wanted = index_type.upper()
        if wanted not in server.indexes:
            raise ConfigError(
                f"{server.describe()} cannot build a {wanted} index; it builds "
                f"{', '.join(server.indexes)}"
                + (" (milvus-lite has no IVF_PQ, DiskANN or GPU indexes)" if server.lite else "")
            )
        chosen = {**default_params(wanted, count, dim), **(params or {})}
        return MilvusIndexChoice(wanted, chosen, [f"{wanted} as asked ({server.describe()})"])
    if count <= EXACT_MAX:
        return MilvusIndexChoice(
            "FLAT", {}, [f"{count:,} vectors <= {EXACT_MAX:,}: exact search (recall 1)"]
        )
    if server.gpus and count >= GPU_MIN:
        return MilvusIndexChoice(
            "GPU_CAGRA",
            default_params("GPU_CAGRA", count, dim),
            [f"{count:,} vectors and a server with GPUs: a CAGRA graph on the GPUs"],
        )
    if count <= HNSW_MAX:
        bytes_per = 4 * dim + 2 * 32 * 4
        return MilvusIndexChoice(
            "HNSW",
            default_params("HNSW", count, dim),
            [
                f"{count:,} vectors <= {HNSW_MAX:,}: an HNSW graph (M 32), about "
                f"{bytes_per:,} bytes per vector in the query nodes' memory"
            ],
        )
    if "IVF_PQ" in server.indexes:
        chosen = default_params("IVF_PQ", count, dim)
        return MilvusIndexChoice(
            "IVF_PQ",
            chosen,
            [
                f"{count:,} vectors > {HNSW_MAX:,}: an inverted file of {chosen['nlist']:,} "
                f"lists with PQ{chosen['m']} codes, about {chosen['m'] + 8} bytes per vector"
            ],
        )
    return MilvusIndexChoice(
        "IVF_SQ8",
        default_params("IVF_SQ8", count, dim),
        [
            f"{count:,} vectors > {HNSW_MAX:,}: IVF_PQ would be chosen, but "
            f"{server.describe()} cannot build it; IVF_SQ8 ({dim} bytes per vector) instead"
        ],
    )


# ---------------------------------------------------------------- schema and rows


def _schema(
    connection: Connection,
    dim: int,
    fields: Mapping[str, FieldSpec],
    partition_key: str | None,
    lexical: bool = False,
) -> Any:
    _pymilvus()
    from pymilvus import DataType, Function, FunctionType

    schema = connection.client().create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(TITLE, DataType.VARCHAR, max_length=VARCHAR_MAX, nullable=True)
    if lexical:
        schema.add_field(
            WORDS,
            DataType.VARCHAR,
            max_length=VARCHAR_MAX,
            enable_analyzer=True,
            analyzer_params=WORDS_ANALYZER,
        )
        schema.add_field(WORDS_BM25, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="cnclip_words_bm25",
                function_type=FunctionType.BM25,
                input_field_names=[WORDS],
                output_field_names=[WORDS_BM25],
            )
        )
    scalar = {"str": DataType.VARCHAR, "int": DataType.INT64, "float": DataType.DOUBLE}
    scalar["bool"] = DataType.BOOL
    for key, spec in fields.items():
        element = spec.kind.removesuffix("[]")
        options: dict[str, Any] = {}
        if element == "str":
            options["max_length"] = VARCHAR_MAX
        if spec.kind.endswith("[]"):
            schema.add_field(
                spec.field,
                DataType.ARRAY,
                element_type=scalar[element],
                max_capacity=ARRAY_CAPACITY,
                nullable=True,
                **options,
            )
        elif key == partition_key:
            schema.add_field(spec.field, scalar[element], is_partition_key=True, **options)
        else:
            schema.add_field(spec.field, scalar[element], nullable=True, **options)
    return schema


def _row(
    item_id: str,
    vector: npt.NDArray[np.float32],
    record: Mapping[str, Any],
    manifest: MilvusManifest,
) -> dict[str, Any]:
    if len(item_id.encode("utf-8")) > MAX_ID_BYTES:
        raise DataError(f"item id {item_id[:40]!r}... is over {MAX_ID_BYTES} bytes")
    title = record.get(TITLE)
    row: dict[str, Any] = {
        ID: item_id,
        VECTOR: vector.tolist(),
        TITLE: None if title is None else str(title),
    }
    if manifest.lexical:
        row[WORDS] = words_text(str(title), manifest.lexicon) if isinstance(title, str) else ""
    names = {spec.field for spec in manifest.fields.values()}
    for key, spec in manifest.fields.items():
        value = record.get(key)
        if value is not None:
            values = value if isinstance(value, list) else [value]
            if spec.kind.endswith("[]") != isinstance(value, list) or not all(
                _fits(v, spec.kind) for v in values
            ):
                raise DataError(
                    f"item {item_id!r}: attribute {key!r} is {value!r}, but this index holds "
                    f"{spec.kind} values there; build a new version to change its type"
                )
            if spec.kind.removesuffix("[]") == "int":
                value = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif key == manifest.partition_key:
            raise DataError(f"item {item_id!r} has no {key!r} (the partition key)")
        row[spec.field] = value
    # Every known dynamic key is written, null where the item has none, so an upsert
    # replaces what the item had (milvus-lite would keep the old values otherwise).
    row.update(dict.fromkeys(manifest.dynamic_keys))
    for key, value in record.items():
        if key in RESERVED or key in manifest.fields or value is None:
            continue
        if key in names:
            raise DataError(f"item {item_id!r}: attribute {key!r} clashes with a field name")
        row[key] = value
    return row


def words_text(text: str, lexicon: Sequence[str] = ()) -> str:
    """``text``'s words as :mod:`index.lexical` cuts them (codes whole, the lexicon's words
    kept), joined by spaces for Milvus's analyzer; a code in its joined spelling
    (``sb1024``), which the jieba analyzer keeps whole."""
    from index.lexical import Segmenter, joined

    words = dict.fromkeys(joined(token) for token in Segmenter.shared(lexicon)(text))
    return " ".join(w for w in words if w)


def _rows(
    ids: Sequence[str],
    vectors: npt.NDArray[np.float32],
    items: Sequence[Mapping[str, Any]] | None,
    manifest: MilvusManifest,
) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(ids), INSERT_BATCH):
        stop = min(len(ids), start + INSERT_BATCH)
        yield [
            _row(ids[i], vectors[i], items[i] if items is not None else {}, manifest)
            for i in range(start, stop)
        ]


def _dynamic_keys(
    items: Sequence[Mapping[str, Any]] | None, fields: Mapping[str, FieldSpec]
) -> set[str]:
    return {
        str(key)
        for item in items or ()
        for key, value in item.items()
        if key not in RESERVED and key not in fields and value is not None
    }


def _vocabulary(
    items: Sequence[Mapping[str, Any]] | None,
    known: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """The attribute values queries may name (:func:`index.understand.vocabulary_of`'s
    rule) among ``items``, with the ``known`` ones of earlier items kept (a value whose
    last item was deleted stays until the next version)."""
    from index.understand import vocabulary_of

    counts: dict[str, dict[str, int]] = {}
    for key, values in (known or {}).items():
        counts[key] = dict.fromkeys(values, MIN_ITEMS_KNOWN)
    for item in items or ():
        for key, value in item.items():
            if key in RESERVED:
                continue
            for element in value if isinstance(value, list) else [value]:
                if isinstance(element, str):
                    seen = counts.setdefault(str(key), {})
                    seen[element] = seen.get(element, 0) + 1
    return vocabulary_of(counts, VOCABULARY_MAX)


def _record(entity: Mapping[str, Any], manifest: MilvusManifest, item_id: str) -> dict[str, Any]:
    """A search hit's metadata as the catalog gave it: ``{"id", "title", ...}``."""
    by_field = {spec.field: key for key, spec in manifest.fields.items()}
    out: dict[str, Any] = {"id": item_id}
    for name, value in entity.items():
        if name in (ID, VECTOR) or value is None:
            continue
        if name == TITLE:
            out[TITLE] = value
        else:
            out[by_field.get(name, name)] = value
    return out


# ---------------------------------------------------------------- building


def _versions(connection: Connection) -> list[tuple[int, str]]:
    location = connection.location
    found = []
    for name in connection.call("list_collections"):
        number = location.number_of(str(name))
        if number is not None:
            found.append((number, str(name)))
    return sorted(found)


def current_collection(connection: Connection) -> str | None:
    """The collection the alias names, or None when there is no such alias."""
    _pymilvus()
    from pymilvus.exceptions import MilvusException

    try:
        described = connection.client().describe_alias(
            connection.location.name, timeout=connection.timeout_s
        )
    except MilvusException as exc:
        if _unreachable(exc):
            raise connection._translate(exc, "describe_alias") from exc
        return None
    except Exception as exc:
        raise connection._translate(exc, "describe_alias") from exc
    name = described.get("collection_name") if isinstance(described, Mapping) else None
    return str(name) if name else None


def _wait_indexed(connection: Connection, collection: str, what: str, timeout_s: float) -> None:
    """Until the vector index covers every row (Milvus builds it in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = connection.call("describe_index", collection, VECTOR)
        state = str(described.get("state", "Finished"))
        pending = int(described.get("pending_index_rows", 0) or 0)
        if state.lower() == "failed":
            reason = described.get("failed_reason") or described.get("fail_reason") or state
            raise ConfigError(f"Milvus could not build the {what} index: {reason}")
        if state.lower() == "finished" and pending == 0:
            return
        if time.monotonic() > deadline:
            raise IndexUnavailableError(
                f"the {what} index of {collection} is still building after {timeout_s:.0f} s "
                f"({state}, {pending:,} rows pending)"
            )
        time.sleep(0.5)


def _load(
    connection: Connection,
    collection: str,
    index_type: str,
    server: ServerInfo,
    timeout_s: float = LOAD_TIMEOUT_S,
) -> None:
    """Load a collection: where the server builds the index. A type it cannot build
    fails here on milvus-lite (it accepted it at create_index)."""
    try:
        connection.call("load_collection", collection, timeout=timeout_s)
    except MilvusError as exc:
        raise ConfigError(
            f"{server.describe()} cannot build or load the {index_type} index of "
            f"{collection}: {exc}. Choose one it builds ({', '.join(server.indexes)})"
        ) from exc


def _scalar_indexes(
    connection: Connection, collection: str, manifest: MilvusManifest, timeout_s: float
) -> list[str]:
    """INVERTED indexes on the scalar attribute fields (faster filters); the server
    may refuse some types (milvus-lite indexes no ARRAY field), which stay unindexed."""
    done = []
    for spec in manifest.fields.values():
        if spec.kind.endswith("[]"):
            continue
        params = connection.client().prepare_index_params()
        params.add_index(spec.field, index_type="INVERTED", index_name=f"{spec.field}_inverted")
        try:
            connection.call("create_index", collection, params, timeout=timeout_s)
        except MilvusError as exc:
            log.info("no scalar index on %s: %s", spec.field, exc)
            continue
        done.append(spec.field)
    return done


def _search_params(index_type: str, setting: Mapping[str, Any], k: int) -> dict[str, Any]:
    params = {key: int(value) for key, value in setting.items()}
    if index_type.startswith("HNSW") and "ef" in params:
        params["ef"] = max(params["ef"], k)
    return {"metric_type": "IP", "params": params}


def _vector_search(
    connection: Connection,
    collection: str,
    queries: npt.NDArray[np.float32],
    k: int,
    index_type: str,
    setting: Mapping[str, Any],
    expression: str | None = None,
    output_fields: Sequence[str] = (),
) -> list[list[dict[str, Any]]]:
    kwargs: dict[str, Any] = {
        "data": [q.tolist() for q in queries],
        "anns_field": VECTOR,
        "limit": k,
        "search_params": _search_params(index_type, setting, k),
        "output_fields": list(output_fields),
    }
    if expression:
        kwargs["filter"] = expression
    hits = connection.call("search", collection, **kwargs)
    return [[dict(hit) for hit in row] for row in hits]


def measure(
    connection: Connection,
    collection: str,
    index_type: str,
    vectors: npt.NDArray[np.float32],
    ids: Sequence[str],
    *,
    queries: npt.NDArray[np.float32] | None = None,
    target: float = 0.95,
    nlist: int | None = None,
    note: str = "",
    seed: int = 0,
) -> dict[str, Any]:
    """Recall of the collection's index against exact search over ``vectors`` (what it
    stores, as rows of ``ids``), and the smallest search setting reaching ``target``
    R@10. Without ``queries``, 1,000 stored vectors are the queries, each left out of
    its own answers (leave-one-out), as :func:`index.build.measure` does on FAISS."""
    from index.evaluate import _choose, _stop

    exclude = None
    if queries is None:
        rng = np.random.default_rng(seed)
        exclude = np.sort(
            rng.choice(len(vectors), size=min(EVAL_QUERIES, len(vectors)), replace=False)
        )
        queries = np.ascontiguousarray(vectors[exclude], dtype=np.float32)
    extra = 0 if exclude is None else 1
    _, truth = exact_search(vectors, queries, 10 + extra)
    truth = drop_ids(truth, exclude, 10)
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    knob, values = KNOBS.get(index_type, (None, ()))
    if knob == "nprobe" and nlist:
        values = (*(v for v in values if v < nlist), min(nlist, MAX_K))

    def point(setting: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        found = np.full((len(queries), 10 + extra), -1, dtype=np.int64)
        for begin in range(0, len(queries), 100):
            block = queries[begin : begin + 100]
            rows = _vector_search(connection, collection, block, 10 + extra, index_type, setting)
            for offset, hits in enumerate(rows):
                got = [row_of.get(str(hit["id"]), -1) for hit in hits]
                found[begin + offset, : len(got)] = got
        seconds = max(time.perf_counter() - start, 1e-9)
        recalls = recall_at(drop_ids(found, exclude, 10), truth)
        return {**setting, **recalls, "qps": len(queries) / seconds}

    points: list[dict[str, Any]] = []
    if knob is None:
        points.append(point({}))
        chosen, reached = points[0], points[0].get("R@10", 0.0) >= target
    else:
        for value in values:
            points.append(point({knob: value}))
            if _stop([p.get("R@10", 0.0) for p in points], target):
                break
        for p in points:
            p.setdefault("R@10", 0.0)
        chosen, reached = _choose(points, "R@10", target, (knob,))
    return {
        "knob": knob,
        "metric": "R@10",
        "target": target,
        "k": 10,
        "queries": len(queries),
        "points": points,
        "chosen": {**chosen, "reached": reached},
        "reached": reached,
        "held_out": "leave-one-out stored vectors" if exclude is not None else "given",
        "note": note,
    }


def _speed_note(server: ServerInfo) -> str:
    return "milvus-lite's queries/s say nothing of a cluster's speed" if server.lite else ""


def build_collection(
    location: str | MilvusLocation,
    corpus: Any,
    *,
    model: ModelRef | None = None,
    texts: Any | None = None,
    index_type: str | None = None,
    params: Mapping[str, Any] | None = None,
    partition_key: str | None = None,
    target: float = 0.95,
    queries: npt.NDArray[np.float32] | None = None,
    gpus: bool | None = None,
    progress: bool = True,
    make_current: bool = True,
    index_timeout_s: float = 3_600.0,
    seed: int = 0,
    lexicon: Sequence[str] = (),
) -> str:
    """A new version (collection ``NAME_vNNNN``) of ``corpus`` (:class:`index.build.
    Corpus`) behind the alias; returns its name. The alias moves to it only when its
    index is built, loaded and measured (``make_current``); a failed build drops the
    collections it was writing.

    ``texts``: a text corpus (a Corpus whose items' ``title`` is the text) for image-to-
    text search, written beside it as ``NAME_vNNNN_texts`` with an index chosen by its
    size, and switched, released and dropped with it. Items with titles also get their
    words (``lexicon``: words to keep whole) and Milvus's BM25 function over them, for
    :meth:`MilvusIndex.search_words`.

    Raises:
        ConfigError: an index the server cannot build, bad parameters.
        IndexUnavailableError: the server cannot be reached.
        DataError: bad vectors, ids or attributes.
    """
    from index.build import calibrate, check_vectors

    where = MilvusLocation.parse(location) if isinstance(location, str) else location
    vectors = check_vectors(corpus.vectors, corpus.ids)
    count, dim = vectors.shape
    calibration = calibrate(corpus, vectors, seed)
    if queries is not None and (queries.ndim != 2 or queries.shape[1] != dim):
        raise DataError(f"held-out queries must be [n, {dim}], got {list(queries.shape)}")
    text_vectors = None if texts is None else check_vectors(texts.vectors, texts.ids)
    if text_vectors is not None and text_vectors.shape[1] != dim:
        raise DataError("the text corpus and the catalog have different dimensions")
    items = list(corpus.items) if corpus.items is not None else None
    fields = plan_fields(items, partition_key)
    connection = Connection(where, timeout_s=60.0)
    try:
        server = server_info(connection, gpus)
        choice = choose_index(count, dim, server, index_type, params)
        existing = _versions(connection)
        name = where.collection(existing[-1][0] + 1 if existing else 1)
        common: dict[str, Any] = {
            "server": server,
            "target": target,
            "seed": seed,
            "progress": progress,
            "timeout_s": index_timeout_s,
        }
        manifest = MilvusManifest(
            model=model or ModelRef(),
            dim=dim,
            count=count,
            index_type=choice.index_type,
            build_params=dict(choice.params),
            fields=fields,
            partition_key=partition_key,
            dynamic_keys=tuple(sorted(_dynamic_keys(items, fields))),
            choice=choice.to_dict(),
            server=server.describe(),
            relevance=calibration.to_dict(),
            vocabulary=_vocabulary(items),
            lexical=any(isinstance((i or {}).get(TITLE), str) for i in items or ()),
            lexicon=tuple(dict.fromkeys(w.strip() for w in lexicon if w.strip())),
        )
        try:
            manifest = _build_one(
                connection, name, choice, manifest, vectors, corpus.ids, items, queries, **common
            )
            if texts is not None and text_vectors is not None:
                text_items = list(texts.items) if texts.items is not None else None
                text_fields = plan_fields(text_items)
                text_choice = choose_index(len(text_vectors), dim, server, None, None)
                text_manifest = manifest.replace(
                    count=len(text_vectors),
                    index_type=text_choice.index_type,
                    build_params=dict(text_choice.params),
                    fields=text_fields,
                    partition_key=None,
                    dynamic_keys=tuple(sorted(_dynamic_keys(text_items, text_fields))),
                    choice=text_choice.to_dict(),
                    search={},
                    recall={},
                    timings={},
                    lexical=False,
                )
                text_name = f"{name}{TEXTS_SUFFIX}"
                _build_one(
                    connection,
                    text_name,
                    text_choice,
                    text_manifest,
                    text_vectors,
                    texts.ids,
                    text_items,
                    None,
                    **common,
                )
                manifest = manifest.replace(texts=text_name)
                _write_manifest(connection, name, manifest)
        except BaseException:
            _drop_quietly(connection, name)
            _drop_quietly(connection, f"{name}{TEXTS_SUFFIX}")
            raise
        if make_current:
            switch(where, name, connection=connection)
        return name
    finally:
        connection.close()


def _build_one(
    connection: Connection,
    name: str,
    choice: MilvusIndexChoice,
    manifest: MilvusManifest,
    vectors: npt.NDArray[np.float32],
    ids: Sequence[str],
    items: list[dict[str, Any]] | None,
    queries: npt.NDArray[np.float32] | None,
    *,
    server: ServerInfo,
    target: float,
    seed: int,
    progress: bool,
    timeout_s: float,
) -> MilvusManifest:
    """One collection: created, filled, indexed, loaded and measured; its manifest, as
    written into it, returned. The caller drops it when this raises."""
    say = print if progress else (lambda *args, **kwargs: None)
    count, dim = vectors.shape
    say(
        f"index: {choice.index_type} {dict(choice.params)} for {count:,} x {dim} "
        f"in {name} on {server.describe()}",
        file=sys.stderr,
    )
    for reason in choice.reasons:
        say(f"  - {reason}", file=sys.stderr)
    schema = _schema(connection, dim, manifest.fields, manifest.partition_key, manifest.lexical)
    connection.call("create_collection", name, schema=schema)
    _write_manifest(connection, name, manifest.replace(recall={"building": True}))
    timings = _fill(connection, name, vectors, ids, items, manifest, progress)
    start = time.perf_counter()
    index_params = connection.client().prepare_index_params()
    index_params.add_index(
        VECTOR, index_type=choice.index_type, metric_type="IP", params=dict(choice.params)
    )
    if manifest.lexical:
        index_params.add_index(WORDS_BM25, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    # A cluster builds in the background (hence the wait below); milvus-lite builds
    # within the call, which takes minutes for a few hundred thousand.
    connection.call("create_index", name, index_params, timeout=timeout_s)
    scalar = _scalar_indexes(connection, name, manifest, timeout_s)
    _wait_indexed(connection, name, choice.index_type, timeout_s)
    _load(connection, name, choice.index_type, server, timeout_s)
    described = connection.call("describe_index", name, VECTOR)
    if str(described.get("index_type", "")).upper() != choice.index_type:
        raise ConfigError(
            f"{server.describe()} built a {described.get('index_type')} index where "
            f"{choice.index_type} was asked"
        )
    timings["index_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    report = measure(
        connection,
        name,
        choice.index_type,
        vectors,
        ids,
        queries=queries,
        target=target,
        nlist=choice.params.get("nlist"),
        note=_speed_note(server),
        seed=seed,
    )
    timings["tune_s"] = round(time.perf_counter() - start, 2)
    knob = report["knob"]
    search = {knob: report["chosen"][knob]} if knob else {}
    manifest = manifest.replace(
        search=search,
        recall=report,
        timings=timings,
        choice={**choice.to_dict(), "scalar_indexes": scalar},
    )
    _write_manifest(connection, name, manifest)
    chosen = manifest.chosen
    say(
        f"  R@10 {chosen.get('R@10', 0):.3f} with {search or 'exact search'} "
        f"({'reached' if report['reached'] else 'below'} the target {target})",
        file=sys.stderr,
    )
    return manifest


def _fill(
    connection: Connection,
    collection: str,
    vectors: npt.NDArray[np.float32],
    ids: Sequence[str],
    items: Sequence[Mapping[str, Any]] | None,
    manifest: MilvusManifest,
    progress: bool,
) -> dict[str, float]:
    start = time.perf_counter()
    bar = tqdm(
        total=len(ids),
        desc="insert",
        unit="vec",
        disable=progress_disabled(progress),
        file=sys.stderr,
    )
    with bar:
        for rows in _rows(ids, vectors, items, manifest):
            connection.call("insert", collection, rows)
            bar.update(len(rows))
    connection.call("flush", collection)
    return {"insert_s": round(time.perf_counter() - start, 2)}


def _drop_quietly(connection: Connection, collection: str) -> None:
    try:
        if connection.call("has_collection", collection):
            connection.call("drop_collection", collection)
    except CnClipError as exc:
        log.warning("could not drop the unfinished %s: %s", collection, exc)


def switch(
    location: str | MilvusLocation, version: str, *, connection: Connection | None = None
) -> None:
    """Point the alias at ``version`` (a collection name or ``vNNNN``), loading it first;
    the collection it named is released (kept, not in memory) after a grace period for
    searches already on their way."""
    where = MilvusLocation.parse(location) if isinstance(location, str) else location
    own = connection is None
    conn = connection or Connection(where)
    try:
        name = _version_name(conn, version)
        manifest = read_manifest(conn, name)  # refuse a collection cnclip did not finish
        conn.call("load_collection", name, timeout=LOAD_TIMEOUT_S)
        if manifest.texts:
            conn.call("load_collection", manifest.texts, timeout=LOAD_TIMEOUT_S)
        previous = current_collection(conn)
        if previous is None:
            conn.call("create_alias", name, where.name)
        elif previous != name:
            conn.call("alter_alias", name, where.name)
        if previous is not None and previous != name:
            time.sleep(RELEASE_GRACE_S)
            for collection in (previous, f"{previous}{TEXTS_SUFFIX}"):
                if conn.call("has_collection", collection):
                    conn.call("release_collection", collection)
    finally:
        if own:
            conn.close()


def _version_name(connection: Connection, version: str) -> str:
    where = connection.location
    name = where.collection(int(version[1:])) if re.fullmatch(r"v\d{1,}", version) else version
    have = [n for _, n in _versions(connection)]
    if name not in have:
        raise IndexVersionError(
            f"{where}: no version {version!r} (versions: {', '.join(have) or 'none'})"
        )
    return name


def drop_version(location: str | MilvusLocation, version: str) -> None:
    """Drop the collection of ``version`` (never the one the alias names)."""
    where = MilvusLocation.parse(location) if isinstance(location, str) else location
    connection = Connection(where)
    try:
        name = _version_name(connection, version)
        if name == current_collection(connection):
            raise IndexVersionError(
                f"{where}: {name} is the current version; switch to another one first"
            )
        connection.call("drop_collection", name)
        _drop_quietly(connection, f"{name}{TEXTS_SUFFIX}")
    finally:
        connection.close()


# ---------------------------------------------------------------- the backend


class MilvusIndex:
    """A Milvus alias, loaded: the backend protocol of :mod:`index.backend`."""

    writable = True

    def __init__(self, location: str | MilvusLocation, *, timeout_s: float = 10.0) -> None:
        self.where = MilvusLocation.parse(location) if isinstance(location, str) else location
        self.location = str(self.where)
        self.connection = Connection(self.where, timeout_s=timeout_s)
        self._lock = threading.Lock()
        self._accept: Accept | None = None
        self._calibration: tuple[MilvusManifest, Calibration | None] | None = None
        try:
            self._collection, self.manifest, self._revision = self._read_current()
            self._count = self._live_count(self._collection)
            self._texts = self._open_texts(self.manifest)
        except BaseException:
            self.connection.close()
            raise

    def _read_current(self) -> tuple[str, MilvusManifest, str]:
        name = current_collection(self.connection)
        if name is None:
            raise IndexVersionError(
                f"{self.location}: no such index (no alias {self.where.name!r}; build one "
                "with cnclip index build --out " + self.location + ")"
            )
        properties = _properties(self.connection, name)
        manifest = MilvusManifest.from_property(
            properties.get(MANIFEST_PROPERTY), f"{self.location} ({name})"
        )
        return name, manifest, properties.get(REVISION_PROPERTY, "")

    def _live_count(self, collection: str) -> int:
        rows = self.connection.call("query", collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _open_texts(self, manifest: MilvusManifest) -> MilvusTexts | None:
        """The text corpus of the version ``manifest`` describes, when it has one."""
        if not manifest.texts:
            return None
        text_manifest = read_manifest(self.connection, manifest.texts)
        count = self._live_count(manifest.texts)
        return MilvusTexts(self, manifest.texts, text_manifest, count)

    # -- what is served ---------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._collection

    @property
    def state(self) -> str:
        return f"{self._collection}#{self._revision}"

    @property
    def model(self) -> ModelRef:
        return self.manifest.model

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def count(self) -> int:
        return self._count

    @property
    def deleted(self) -> int:
        return 0  # Milvus compacts deletions away by itself

    @property
    def factory(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.manifest.build_params.items()))
        return f"milvus:{self.manifest.index_type}" + (f"({params})" if params else "")

    @property
    def keys(self) -> frozenset[str]:
        return self.manifest.keys

    @property
    def texts(self) -> TextSearcher | None:
        return self._texts

    @property
    def has_lexical(self) -> bool:
        return self.manifest.lexical

    def search_words(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """BM25 over the titles' words by Milvus's BM25 function (the query cut as the
        titles were: :func:`words_text`); filters and exclusions as :meth:`search`.

        Raises:
            DataError: a bad ``k`` or filter, or a version built without titles.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise DataError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        collection, manifest = self._collection, self.manifest
        if not manifest.lexical:
            raise DataError(
                f"{self.location}: this index has no lexical index (its items had no titles "
                "when it was built); search by vector, or build it from a catalog with titles"
            )
        scores = np.full((1, k), np.nan, dtype=np.float32)
        rows = np.full((1, k), -1, dtype=np.int64)
        ids: list[list[str]] = [[]]
        items: list[list[dict[str, Any]]] = [[]]
        expression = None if filter is None else filter_expression(manifest.fields, filter)
        words = words_text(query, manifest.lexicon)
        if (filter is not None and expression is None) or not words:
            return SearchResult(scores, rows, ids, items if with_metadata else None)
        if exclude is not None:
            expression = _and_not(expression, manifest.fields, exclude)
        kwargs: dict[str, Any] = {
            "data": [words],
            "anns_field": WORDS_BM25,
            "limit": k,
            "search_params": {"metric_type": "BM25"},
            "output_fields": self._output_fields(manifest) if with_metadata else [],
        }
        if expression:
            kwargs["filter"] = expression
        hits = self.connection.call("search", collection, **kwargs)
        for j, hit in enumerate(list(hits[0])[:k] if hits else []):
            hit = dict(hit)
            # BM25 is positive; milvus-lite answers it negated (a distance).
            scores[0, j] = abs(float(hit["distance"]))
            item_id = str(hit["id"])
            ids[0].append(item_id)
            if with_metadata:
                items[0].append(_record(hit.get("entity") or {}, manifest, item_id))
        return SearchResult(scores, rows, ids, items if with_metadata else None)

    def _get(
        self, ids: Sequence[str], fields: Sequence[str], collection: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """``{id: row}`` of the ``ids`` the collection (the current one) holds, with
        ``fields``."""
        found: dict[str, dict[str, Any]] = {}
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), 1_000):
            got = self.connection.call(
                "get",
                collection or self._collection,
                ids=wanted[start : start + 1_000],
                output_fields=[ID, *fields],
            )
            found.update((str(row[ID]), dict(row)) for row in got)
        return found

    def fetch_vectors(self, ids: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.full((len(ids), self.dim), np.nan, dtype=np.float32)
        found = self._get(ids, [VECTOR])
        for n, item in enumerate(ids):
            if item in found:
                out[n] = np.asarray(found[item][VECTOR], dtype=np.float32)
        return out

    def fetch_items(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        manifest = self.manifest
        found = self._get(ids, self._output_fields(manifest))
        return [_record(found[i], manifest, i) if i in found else None for i in ids]

    def word_coverage(self, text: str, ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """The share of ``text``'s words each item's title holds, the words weighed
        equally (Milvus does not give its document frequencies)."""
        out = np.zeros(len(ids), dtype=np.float64)
        manifest = self.manifest
        wanted = set(words_text(text, manifest.lexicon).split())
        if not manifest.lexical or not wanted or not ids:
            return out
        found = self._get(ids, [WORDS])
        for n, item in enumerate(ids):
            held = set(str((found.get(item) or {}).get(WORDS) or "").split())
            out[n] = len(wanted & held) / len(wanted)
        return out

    @property
    def vocabulary(self) -> Mapping[str, tuple[str, ...]]:
        return self.manifest.vocabulary

    @property
    def calibration(self) -> Calibration | None:
        """Read from the manifest once per manifest."""
        manifest, cached = self.manifest, self._calibration
        if cached is None or cached[0] is not manifest:
            cached = (manifest, Calibration.from_dict(manifest.relevance))
            self._calibration = cached
        return cached[1]

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """As the protocol says. A search that finds its collection released or dropped
        follows the alias (another process switched it and freed the old version), or
        loads the collection it still names (a server restarted without reloading it,
        as milvus-lite does), and is tried once more."""
        q = check_queries(queries, self.dim, k, nprobe)
        options: dict[str, Any] = {
            "nprobe": nprobe,
            "ef_search": ef_search,
            "filter": filter,
            "exclude": exclude,
        }
        return self._following(
            lambda: (self._collection, self.manifest), q, k, with_metadata, options
        )

    def _following(
        self,
        pick: Callable[[], tuple[str, MilvusManifest]],
        q: npt.NDArray[np.float32],
        k: int,
        with_metadata: bool,
        options: dict[str, Any],
    ) -> SearchResult:
        """A search of the collection ``pick`` names; one that finds it released or
        dropped follows the alias (``pick`` again after a refresh), or loads it again when
        the alias still names it, and is tried once more."""
        collection, manifest = pick()
        try:
            return self._search(collection, manifest, q, k, with_metadata, **options)
        except MilvusError as exc:
            if not _gone(exc):
                raise
            self.refresh(self._accept)
            again, manifest = pick()
            if again == collection:
                log.warning("%s: loading %s again (%s)", self.location, collection, exc)
                self.connection.call("load_collection", collection)
            return self._search(again, manifest, q, k, with_metadata, **options)

    def _search(
        self,
        collection: str,
        manifest: MilvusManifest,
        q: npt.NDArray[np.float32],
        k: int,
        with_metadata: bool,
        *,
        nprobe: int | None,
        ef_search: int | None,
        filter: Mapping[str, Any] | None,
        exclude: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        setting = dict(manifest.search)
        knob = KNOBS.get(manifest.index_type, (None, ()))[0]
        if knob == "nprobe" and nprobe is not None:
            setting = {"nprobe": nprobe}
        if knob == "ef" and ef_search is not None:
            setting = {"ef": ef_search}
        expression = None if filter is None else filter_expression(manifest.fields, filter)
        scores = np.full((len(q), k), np.nan, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        ids: list[list[str]] = [[] for _ in range(len(q))]
        items: list[list[dict[str, Any]]] = [[] for _ in range(len(q))]
        if filter is not None and expression is None:
            return SearchResult(scores, rows, ids, items if with_metadata else None)
        if exclude is not None:
            expression = _and_not(expression, manifest.fields, exclude)
        if len(q) == 0:
            return SearchResult(scores, rows, ids, items if with_metadata else None)
        output = self._output_fields(manifest) if with_metadata else []
        hits = _vector_search(
            self.connection, collection, q, k, manifest.index_type, setting, expression, output
        )
        short = [i for i, row in enumerate(hits) if len(row) < k]
        if short:
            expected = self._matching(collection, expression)
            short = [i for i in short if len(hits[i]) < min(k, expected)]
        if short:
            retried = self._wider(collection, manifest, q[short], k, setting, expression, output)
            for i, row in zip(short, retried, strict=True):
                hits[i] = row
        for i, row in enumerate(hits):
            for j, hit in enumerate(row[:k]):
                scores[i, j] = float(hit["distance"])
                item_id = str(hit["id"])
                ids[i].append(item_id)
                if with_metadata:
                    items[i].append(_record(hit.get("entity") or {}, manifest, item_id))
        return SearchResult(scores, rows, ids, items if with_metadata else None)

    def _output_fields(self, manifest: MilvusManifest) -> list[str]:
        return [TITLE, *(spec.field for spec in manifest.fields.values()), "$meta"]

    def _matching(self, collection: str, expression: str | None) -> int:
        rows = self.connection.call(
            "query", collection, filter=expression or "", output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def _wider(
        self,
        collection: str,
        manifest: MilvusManifest,
        q: npt.NDArray[np.float32],
        k: int,
        setting: Mapping[str, Any],
        expression: str | None,
        output: list[str],
    ) -> list[list[dict[str, Any]]]:
        """Short answers searched with every list (or a much wider beam), then exactly
        over the matching items' vectors when that is still short."""
        knob = KNOBS.get(manifest.index_type, (None, ()))[0]
        wide: dict[str, Any] = dict(setting)
        if knob == "nprobe":
            wide = {"nprobe": min(int(manifest.build_params.get("nlist", MAX_K)), MAX_K)}
        elif knob is not None:
            wide = {knob: max(KNOBS[manifest.index_type][1])}
        hits = _vector_search(
            self.connection, collection, q, k, manifest.index_type, wide, expression, output
        )
        if all(len(row) >= k for row in hits) or expression is None:
            return hits
        matching = self._matching(collection, expression)
        if matching > EXACT_SUBSET_MAX:
            return hits
        found = self.connection.call(
            "query",
            collection,
            filter=expression,
            output_fields=[VECTOR, *output],
            limit=EXACT_SUBSET_MAX,
        )
        if not found:
            return hits
        base = np.asarray([row[VECTOR] for row in found], dtype=np.float32)
        sims = q @ base.T
        out = []
        for row in sims:
            top = np.argsort(-row, kind="stable")[:k]
            out.append(
                [
                    {
                        "id": found[t][ID],
                        "distance": float(row[t]),
                        "entity": {n: v for n, v in found[t].items() if n not in (ID, VECTOR)},
                    }
                    for t in top
                ]
            )
        return out

    # -- changes ----------------------------------------------------------------------

    def add(self, corpus: Any, *, model: ModelRef | None = None, **options: Any) -> str:
        """Upsert ``corpus`` into the current collection (items already there are
        replaced: a new price, a new picture). ``options`` of the FAISS path (target,
        progress, make_current) do not apply: nothing is rebuilt."""
        from index.build import check_vectors

        progress = bool(options.get("progress", False))
        with self._lock:
            collection, manifest, _ = self._read_current()
            if model is not None:
                check_serves(manifest.model, model, f"{self.location} ({collection})")
            vectors = check_vectors(corpus.vectors, corpus.ids)
            if vectors.shape[1] != manifest.dim:
                raise DataError(
                    f"new embeddings have {vectors.shape[1]} dimensions, the index {manifest.dim}"
                )
            items = list(corpus.items) if corpus.items is not None else None
            new_keys = _dynamic_keys(items, manifest.fields) - set(manifest.dynamic_keys)
            if new_keys:
                manifest = manifest.replace(
                    dynamic_keys=tuple(sorted(set(manifest.dynamic_keys) | new_keys))
                )
            vocabulary = _vocabulary(items, manifest.vocabulary)
            if vocabulary != manifest.vocabulary:
                manifest = manifest.replace(vocabulary=vocabulary)
            batches = list(_rows(corpus.ids, vectors, items, manifest))  # all checked first
            bar = tqdm(
                total=len(corpus.ids),
                desc="upsert",
                unit="item",
                disable=progress_disabled(progress),
                file=sys.stderr,
            )
            with bar:
                for rows in batches:
                    self.connection.call("upsert", collection, rows)
                    bar.update(len(rows))
            self._changed(collection, manifest)
        return self.version

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False, **options: Any) -> str:
        """Delete ``ids`` from the current collection.

        Raises:
            DataError: an id that is not in the index (unless ``missing_ok``).
        """
        wanted = list(dict.fromkeys(str(i) for i in ids))
        with self._lock:
            collection, manifest, _ = self._read_current()
            present = set(self._get(wanted, [], collection))
            missing = [i for i in wanted if i not in present]
            if missing and not missing_ok:
                raise DataError(
                    f"{len(missing)} ids are not in the index ({', '.join(missing[:5])})"
                )
            gone = [i for i in wanted if i in present]
            for start in range(0, len(gone), 1_000):
                self.connection.call("delete", collection, ids=gone[start : start + 1_000])
            self._changed(collection, manifest)
        return self.version

    def _changed(self, collection: str, manifest: MilvusManifest) -> None:
        """A new revision, so every replica's search cache moves on (state)."""
        revision = _token()
        properties = {REVISION_PROPERTY: revision}
        if manifest != self.manifest:
            properties[MANIFEST_PROPERTY] = manifest.to_property()
        self.connection.call("alter_collection_properties", collection, properties=properties)
        self._collection, self.manifest, self._revision = collection, manifest, revision
        self._count = self._live_count(collection)

    def versions(self) -> list[VersionInfo]:
        current = current_collection(self.connection)
        out = []
        for _, name in _versions(self.connection):
            try:
                manifest = read_manifest(self.connection, name)
            except IndexVersionError:
                continue
            live = manifest.count
            if name == current:
                live = self._live_count(name)
            out.append(
                VersionInfo(
                    name=name,
                    current=name == current,
                    count=live,
                    deleted=0,
                    factory=f"{manifest.index_type} {dict(manifest.build_params)}",
                    model=manifest.model,
                    search=dict(manifest.search),
                    chosen=dict(manifest.chosen),
                    created=manifest.created,
                )
            )
        return out

    def stored(self, collection: str | None = None) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Every stored id and vector of the collection (for recall measurements)."""
        name = collection or self._collection
        ids: list[str] = []
        vectors: list[list[float]] = []
        iterator = self.connection.call(
            "query_iterator", name, batch_size=2_000, filter="", output_fields=[ID, VECTOR]
        )
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    break
                for row in batch:
                    ids.append(str(row[ID]))
                    vectors.append(row[VECTOR])
        finally:
            iterator.close()
        return ids, np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)

    def sample_titles(self, n: int, *, seed: int = 0) -> list[str]:
        """Up to ``n`` distinct titles, drawn (``seed``) from the first ``4 n`` stored."""
        rows = self.connection.call(
            "query",
            self._collection,
            filter="",
            output_fields=[TITLE],
            limit=min(max(n, 1) * 4, EXACT_SUBSET_MAX),
        )
        titles = [str(r[TITLE]) for r in rows if isinstance(r.get(TITLE), str)]
        titles = [t for t in dict.fromkeys(titles) if t.strip()]
        order = np.random.default_rng(seed).permutation(len(titles))
        return [titles[i] for i in order[:n]]

    def evaluate(
        self, *, queries: npt.NDArray[np.float32] | None = None, target: float = 0.95
    ) -> list[RecallReport]:
        """Recall of the current collection against exact search over the vectors it
        stores now (all read back: minutes for millions), tuned to ``target``; the
        tuned setting and the report go into its manifest."""
        if queries is not None:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        with self._lock:
            collection, manifest, _ = self._read_current()
            ids, vectors = self.stored(collection)
            if not ids:
                raise DataError(f"{self.location}: the index holds no items")
            report = measure(
                self.connection,
                collection,
                manifest.index_type,
                vectors,
                ids,
                queries=queries,
                target=target,
                nlist=manifest.build_params.get("nlist"),
                note=_speed_note(server_info(self.connection)),
            )
            knob = report["knob"]
            search = {knob: report["chosen"][knob]} if knob else {}
            self._changed(collection, manifest.replace(search=search, recall=report))
        return [RecallReport(f"{self.location} ({collection})", report)]

    def refresh(self, accept: Accept | None = None) -> bool:
        """Follow the alias (another process switched it) and the revision (another
        replica changed items); True when the version changed."""
        if accept is not None:
            self._accept = accept
        collection, manifest, revision = self._read_current()
        if collection == self._collection:
            if revision != self._revision:
                self.manifest, self._revision = manifest, revision
                self._count = self._live_count(collection)
            return False
        if accept is not None:
            accept(manifest.model)
        texts = self._open_texts(manifest)
        self._collection, self.manifest, self._revision = collection, manifest, revision
        self._count = self._live_count(collection)
        self._texts = texts
        return True

    def ping(self) -> None:
        """Raises :class:`IndexUnavailableError` when the server does not answer."""
        self.connection.call("get_server_version")

    def close(self) -> None:
        self.connection.close()


class MilvusTexts:
    """A version's text corpus (``NAME_vNNNN_texts``), searched by image: the
    :class:`index.backend.TextSearcher` of a :class:`MilvusIndex`."""

    def __init__(
        self, owner: MilvusIndex, collection: str, manifest: MilvusManifest, count: int
    ) -> None:
        self.owner, self.collection, self.manifest = owner, collection, manifest
        self._count = count

    @property
    def count(self) -> int:
        return self._count

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: Mapping[str, Any] | None = None,
        with_metadata: bool = False,
    ) -> SearchResult:
        """As :meth:`MilvusIndex.search`, over the texts of the version in service."""
        q = check_queries(queries, self.manifest.dim, k, nprobe)
        options: dict[str, Any] = {"nprobe": nprobe, "ef_search": ef_search, "filter": filter}
        return self.owner._following(self._current, q, k, with_metadata, options)

    def _current(self) -> tuple[str, MilvusManifest]:
        """The text collection of the version in service now."""
        texts = self.owner._texts
        if texts is None:
            raise DataError(f"{self.owner.location}: the version in service has no text corpus")
        return texts.collection, texts.manifest


def load(location: str, *, timeout_s: float = 10.0) -> MilvusIndex:
    """The index behind the alias of ``location`` (``milvus://HOST:PORT/NAME``)."""
    return MilvusIndex(location, timeout_s=timeout_s)
