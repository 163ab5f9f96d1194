"""The Chinese CLIP text tokenizer: Chinese BERT WordPiece, ids identical to the official one.

Every official Chinese CLIP checkpoint encodes a text as::

    [CLS] + word-piece ids[:context_length - 2] + [SEP], zero-padded to context_length (52)

where the word pieces come from the BERT ``FullTokenizer`` of ``cn_clip`` (basic tokenization
with lower-casing and accent stripping, then greedy longest-match WordPiece with ``##``
continuations and ``max_input_chars_per_word=200``) over the Chinese BERT vocabulary shipped
in ``runtime/assets/vocab.txt``. This module reproduces those ids exactly, for any input,
without torch, on the Rust ``tokenizers`` library.

Two paths, chosen per text:

* **fast path**: a ``tokenizers`` pipeline with ``BertNormalizer`` + ``BertPreTokenizer``
  + ``WordPiece``. Its normalization is not the official one for every character (see
  below), so it is used only for texts made entirely of characters in :data:`FAST_CHARS`,
  a set for which both pipelines were checked character by character (alone and between
  letters, digits and Chinese characters; ``tests/runtime/test_tokenizer.py`` repeats the
  check exhaustively) and for which no context-dependent rule can apply: it holds no
  capital sigma (Python's final-sigma lower-casing) and its only combining characters,
  U+302A..U+302F, are dropped or reordered identically by both. This covers ordinary
  Chinese/English queries.
* **exact path**: everything else goes through this module's own implementation of the
  official basic tokenization (on Python's ``unicodedata``, as the official code), and the
  resulting words are given to the same WordPiece as pre-tokenized input.

Where the two normalizations differ (``tokenizers`` 0.22, Python 3.11): the Rust side drops
private-use characters (the official code keeps them, making their word ``[UNK]``);
lower-cases character by character (no final sigma: official ``ΟΔΟΣ`` ends in ``ς``); uses
older Unicode category tables, so marks, punctuation and format characters added or
re-categorized in Unicode 10 to 14 are classified differently; and its CJK range starts
Extension E at U+2B920 instead of U+2B820.

The official tokenizer treats ``[CLS]``, ``[MASK]`` etc. inside a text as plain text
(``[``, ``ma``, ``##sk``, ``]``); so does this one, so user text cannot inject special
tokens. ``[CLS]``/``[SEP]``, truncation and padding are added in numpy, not by
``tokenizers``, so one pair of pipelines serves every context length and padding mode.

Thread safety: a :class:`ChineseTokenizer` holds no per-call state; its ``tokenizers``
objects are configured once and only read afterwards, so one instance can be shared by
worker threads. ``tokenizers`` parallelizes a batch over its own thread pool unless the
environment variable ``TOKENIZERS_PARALLELISM`` is ``false``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from runtime.errors import ConfigError

__all__ = [
    "CONTEXT_LENGTH",
    "FAST_CHARS",
    "ChineseTokenizer",
    "TokenizedBatch",
    "default_tokenizer",
    "default_vocab_path",
    "is_fast_text",
    "official_words",
]

CONTEXT_LENGTH = 52
"""Tokens per text of every official Chinese CLIP model: [CLS], up to 50 pieces, [SEP]."""

MAX_INPUT_CHARS_PER_WORD = 200
"""Longer words become [UNK] (official value; transformers' BertTokenizer uses 100)."""

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]"

FAST_CHARS: tuple[tuple[int, int], ...] = (
    (0x09, 0x0A),  # tab, line feed
    (0x0D, 0x0D),  # carriage return
    (0x20, 0x7E),  # printable ASCII
    (0xA0, 0xFF),  # Latin-1 supplement: no-break space, middle dot, accented letters
    (0x2000, 0x2064),  # general punctuation: spaces, zero-width chars, dashes, quotes, ...
    (0x3000, 0x303F),  # CJK symbols and punctuation: ideographic space, 、。《》「」【】
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xFF01, 0xFF5E),  # fullwidth ASCII variants: ，！？（）０-９Ａ-Ｚａ-ｚ
)
"""Inclusive code point ranges whose texts take the fast path (see the module docstring)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_FAST_TEXT = re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in FAST_CHARS) + "]*")

# CJK ideograph ranges of the official tokenizer (spaces are put around these characters).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(char: str) -> bool:
    """Official rule: every non-alphanumeric printable ASCII char, and Unicode category P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _cleaned(char: str) -> str:
    """What the official text cleanup and CJK spacing make of one character.

    "" for characters it removes (NUL, U+FFFD, categories Cc/Cf except tab/newline/return),
    " " for whitespace (space, tab, newline, return, category Zs), the ideograph between two
    spaces for CJK ideographs, and the character itself otherwise.
    """
    if char in "\t\n\r ":
        return " "
    cp = ord(char)
    category = unicodedata.category(char)
    if cp == 0 or cp == 0xFFFD or category in ("Cc", "Cf"):
        return ""
    if category == "Zs":
        return " "
    if _is_cjk(cp):
        return f" {char} "
    return char


class _CharTable(dict[str, str]):
    """Memo of a per-character function; entries are added on first use.

    Concurrent first uses may compute an entry twice, which is harmless: the function is
    pure and a dict store is atomic.
    """

    def __init__(self, function: Any) -> None:
        super().__init__()
        self._function = function

    def __missing__(self, char: str) -> str:
        value: str = self._function(char)
        self[char] = value
        return value


_CLEANED = _CharTable(_cleaned)
# A character's form inside a word after accent stripping: "" for category Mn (the NFD
# decomposition is done on the whole word first), "\0c\0" for punctuation, which splits the
# word there ("\0" cannot survive cleanup, so it is free to mark split points).
_IN_WORD = _CharTable(
    lambda c: "" if unicodedata.category(c) == "Mn" else f"\0{c}\0" if _is_punctuation(c) else c
)


def official_words(text: str) -> list[str]:
    """The words of the official ``BasicTokenizer`` (lower-cased), before WordPiece.

    Cleanup and CJK spacing per character; split on whitespace; per word: ``str.lower``
    (with its final-sigma rule), NFD, drop category Mn, split punctuation off as words of
    their own.
    """
    words: list[str] = []
    for token in "".join(map(_CLEANED.__getitem__, text)).split():
        token = token.lower()
        if not token.isascii():
            token = unicodedata.normalize("NFD", token)
        marked = "".join(map(_IN_WORD.__getitem__, token))
        if "\0" in marked:
            # Words split off may still contain whitespace made by lower() or NFD;
            # the official code splits those again.
            words.extend(w for part in marked.split("\0") for w in part.split())
        elif marked:
            words.extend(marked.split())
    return words


def is_blank(text: str) -> bool:
    """Whether nothing of ``text`` survives the official cleanup: only whitespace of any
    kind, control or format characters, NUL, U+FFFD or combining marks. Its token row
    would be ``[CLS][SEP]`` alone."""
    return not official_words(text)


def is_fast_text(text: str) -> bool:
    """Whether ``text`` consists only of :data:`FAST_CHARS` (and takes the fast path)."""
    return _FAST_TEXT.fullmatch(text) is not None


def default_vocab_path() -> Path:
    """The official Chinese BERT vocabulary shipped with the package (21,128 entries)."""
    return Path(__file__).resolve().parent / "assets" / "vocab.txt"


@dataclass(frozen=True, eq=False)
class TokenizedBatch:
    """Token ids of a batch of texts, as the text encoder takes them.

    ``ids``: int64 ``[n, width]``: ``[CLS]``, the word pieces (at most ``context_length - 2``),
    ``[SEP]``, then ``[PAD]`` (0). ``width`` is the context length, or the longest row when
    padded to ``"longest"``.
    ``truncated``: bool ``[n]``: True where the text had more pieces than fit.
    """

    ids: npt.NDArray[np.int64]
    truncated: npt.NDArray[np.bool_]

    @property
    def attention_mask(self) -> npt.NDArray[np.int64]:
        """int64 ``[n, width]``: 1 on real tokens, 0 on padding (official: ``ids != 0``)."""
        return np.not_equal(self.ids, 0).astype(np.int64)

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """int64 ``[n]``: tokens per text including ``[CLS]`` and ``[SEP]``."""
        lengths: npt.NDArray[np.int64] = np.not_equal(self.ids, 0).sum(axis=1, dtype=np.int64)
        return lengths

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _read_vocab(path: Path) -> tuple[dict[str, int], int, str]:
    """Vocabulary as the official ``load_vocab`` reads it: (token -> id, lines, sha256).

    Lines are split like text-mode ``readline`` and stripped; a later duplicate wins.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"cannot read the tokenizer vocabulary {path}: {error.strerror or error}"
        ) from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"tokenizer vocabulary {path} is not UTF-8 text: {error}") from error
    vocab: dict[str, int] = {}
    lines = 0
    for lines, line in enumerate(io.StringIO(text, newline=None), start=1):
        vocab[line.strip()] = lines - 1
    missing = [t for t in (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN) if t not in vocab]
    if missing:
        raise ConfigError(
            f"tokenizer vocabulary {path} lacks {', '.join(missing)}: not a BERT WordPiece "
            "vocabulary (one token per line)"
        )
    if vocab[PAD_TOKEN] != 0:
        raise ConfigError(
            f"tokenizer vocabulary {path} has {PAD_TOKEN} at id {vocab[PAD_TOKEN]}: Chinese CLIP "
            "pads with id 0 and masks with ids != 0, so [PAD] must be the first line"
        )
    return vocab, lines, hashlib.sha256(data).hexdigest()


def _unused_char(vocab: Iterable[str], path: Path) -> str:
    """A private-use character found in no vocabulary entry: any word with it is [UNK]."""
    used = {c for token in vocab for c in token}
    for lo, hi in ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD)):
        for cp in range(lo, hi + 1):
            if chr(cp) not in used:
                return chr(cp)
    raise ConfigError(f"tokenizer vocabulary {path} uses every private-use character")


def _check_text(text: object, index: int | None = None) -> str:
    if isinstance(text, str):
        return text
    where = "text" if index is None else f"texts[{index}]"
    hint = ": decode bytes first (UTF-8)" if isinstance(text, bytes | bytearray) else ""
    raise TypeError(f"{where} must be a str, got {type(text).__name__}{hint}")


def _check_context_length(context_length: object) -> int:
    if not isinstance(context_length, int) or isinstance(context_length, bool):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
    if context_length < 3:
        raise ValueError(
            f"context_length must be at least 3 ([CLS], one piece, [SEP]), got {context_length}"
        )
    return context_length


class ChineseTokenizer:
    """Chinese CLIP tokenizer; ids identical to ``cn_clip.clip.tokenize`` for any text.

    ``vocab_path``: a BERT WordPiece vocabulary, one token per line (default: the official
    one, :func:`default_vocab_path`). ``context_length``: the default row length of
    :meth:`__call__` (52 for every official model). A missing or malformed vocabulary raises
    :class:`~runtime.errors.ConfigError`.
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        self._context_length = _check_context_length(context_length)
        vocab, lines, sha256 = _read_vocab(path)
        self._vocab_path = path
        self._vocab_size = max(lines, max(vocab.values()) + 1)
        self._vocab_sha256 = sha256
        self._pad_id = vocab[PAD_TOKEN]
        self._unk_id = vocab[UNK_TOKEN]
        self._cls_id = vocab[CLS_TOKEN]
        self._sep_id = vocab[SEP_TOKEN]
        self._placeholder = _unused_char(vocab, path)
        # Neither tokenizer knows any added/special token: "[CLS]" in a text is plain text.
        self._fast = self._wordpiece(vocab)
        self._fast.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        self._fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._exact = self._wordpiece(vocab)

    @staticmethod
    def _wordpiece(vocab: dict[str, int]) -> Any:
        # No post-processor, truncation or padding: [CLS]/[SEP], truncation and padding are
        # done in numpy (_pack), so one immutable pair of tokenizers serves every context
        # length and both padding modes, and no configuration changes per call.
        return Tokenizer(
            models.WordPiece(
                vocab,
                unk_token=UNK_TOKEN,
                continuing_subword_prefix="##",
                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            )
        )

    # -- properties -------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        """Default row length of :meth:`__call__`."""
        return self._context_length

    @property
    def vocab_path(self) -> Path:
        return self._vocab_path

    @property
    def vocab_size(self) -> int:
        """Rows the token embedding needs (largest id + 1; 21,128 for the official vocab)."""
        return self._vocab_size

    @property
    def vocab_sha256(self) -> str:
        """SHA-256 of the vocabulary file's bytes, to pin it in exported models."""
        return self._vocab_sha256

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def cls_id(self) -> int:
        return self._cls_id

    @property
    def sep_id(self) -> int:
        return self._sep_id

    # -- encoding ---------------------------------------------------------------------------

    def _words(self, text: str) -> list[str]:
        """Official words of a text, for the exact path."""
        if not text.isascii() and _SURROGATE.search(text):
            # Lone surrogates (JSON "\\ud800" decodes to one) cannot cross into Rust. The
            # official code treats them as letters that are in no vocabulary entry, making
            # their word [UNK]: a private-use character unused by the vocabulary does the same.
            text = _SURROGATE.sub(self._placeholder, text)
        return official_words(text)

    def _encode_one(self, text: str) -> Any:
        """The ``tokenizers`` Encoding of one text's word pieces (no special tokens)."""
        if is_fast_text(text):
            return self._fast.encode(text, add_special_tokens=False)
        return self._exact.encode(self._words(text), is_pretokenized=True, add_special_tokens=False)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids of each text, in input order."""
        fast = [i for i, t in enumerate(texts) if is_fast_text(t)]
        if len(fast) == len(texts):
            return [e.ids for e in self._fast.encode_batch_fast(texts, add_special_tokens=False)]
        rows: list[list[int]] = [[] for _ in texts]
        if fast:
            encodings = self._fast.encode_batch_fast(
                [texts[i] for i in fast], add_special_tokens=False
            )
            for i, encoding in zip(fast, encodings, strict=True):
                rows[i] = encoding.ids
        fast_set = set(fast)
        exact = [i for i in range(len(texts)) if i not in fast_set]
        encodings = self._exact.encode_batch_fast(
            [self._words(texts[i]) for i in exact], is_pretokenized=True, add_special_tokens=False
        )
        for i, encoding in zip(exact, encodings, strict=True):
            rows[i] = encoding.ids
        return rows

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text``: untruncated, without [CLS]/[SEP]."""
        tokens: list[str] = self._encode_one(_check_text(text)).tokens
        return tokens

    def encode(self, text: str) -> list[int]:
        """Word-piece ids of ``text``: untruncated, without [CLS]/[SEP]."""
        ids: list[int] = self._encode_one(_check_text(text)).ids
        return ids

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        context_length: int | None = None,
        pad_to: Literal["max", "longest"] = "max",
    ) -> TokenizedBatch:
        """Token ids of one text (a batch of one) or of a sequence of texts, in input order.

        Each row is ``[CLS] + pieces[:context_length - 2] + [SEP]`` followed by zeros, the
        official encoding. ``pad_to="max"`` pads every row to ``context_length`` (default: the
        tokenizer's, 52), giving ``ids`` of shape ``[n, context_length]``; ``"longest"`` pads
        only to the longest row of the batch (``[n, longest]``, 0 columns for no texts), with
        the same non-pad ids. ``truncated[i]`` is True where text ``i`` had more than
        ``context_length - 2`` pieces.
        """
        length = (
            self._context_length
            if context_length is None
            else _check_context_length(context_length)
        )
        if pad_to not in ("max", "longest"):
            raise ValueError(f'pad_to must be "max" or "longest", got {pad_to!r}')
        if isinstance(texts, str):
            rows = [self._encode_one(texts).ids]
        else:
            if isinstance(texts, bytes | bytearray):
                raise TypeError("texts must be a str or a sequence of str, got bytes: decode it")
            try:
                batch = list(texts)
            except TypeError:
                raise TypeError(
                    f"texts must be a str or a sequence of str, got {type(texts).__name__}"
                ) from None
            rows = self._encode_batch([_check_text(t, i) for i, t in enumerate(batch)])
        return self._pack(rows, length, pad_to)

    def _pack(
        self, rows: list[list[int]], length: int, pad_to: Literal["max", "longest"]
    ) -> TokenizedBatch:
        """``[CLS] + pieces[:length - 2] + [SEP]`` per row, zero-padded into one array."""
        n, room = len(rows), length - 2
        if n == 1:  # the common single-query case, without the vectorized machinery
            pieces = rows[0][:room]
            ids = np.zeros((1, length if pad_to == "max" else len(pieces) + 2), dtype=np.int64)
            ids[0, 0] = self._cls_id
            ids[0, 1 : len(pieces) + 1] = pieces
            ids[0, len(pieces) + 1] = self._sep_id
            return TokenizedBatch(ids=ids, truncated=np.array([len(rows[0]) > room]))
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=n)
        truncated = counts > room
        if truncated.any():
            rows = [row[:room] for row in rows]
            np.minimum(counts, room, out=counts)
        width = length if pad_to == "max" else int(counts.max(initial=-2)) + 2
        ids = np.zeros((n, width), dtype=np.int64)
        if n:
            columns = np.arange(width)
            in_text = (columns >= 1) & (columns <= counts[:, None])
            ids[in_text] = np.fromiter(
                itertools.chain.from_iterable(rows), dtype=np.int64, count=int(counts.sum())
            )
            ids[:, 0] = self._cls_id
            ids[np.arange(n), counts + 1] = self._sep_id
        return TokenizedBatch(ids=ids, truncated=truncated)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ChineseTokenizer:
    """The shared tokenizer over the official vocabulary (built once, thread-safe)."""
    return ChineseTokenizer()
