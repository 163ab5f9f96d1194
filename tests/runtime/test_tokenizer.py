"""The Chinese CLIP tokenizer gives the official ids for any text.

References: the official `cn_clip` 1.6.0 tokenizer (`clip.tokenize` for whole rows,
`official_tokenize` for word pieces) and transformers' pure-Python `BertTokenizer`.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.tokenizer import (
    CONTEXT_LENGTH,
    FAST_CHARS,
    ChineseTokenizer,
    TokenizedBatch,
    default_tokenizer,
    default_vocab_path,
    is_blank,
    is_fast_text,
    official_words,
)
from tests.conftest import ROOT
from tests.official import official_clip, official_tokenize

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tok() -> ChineseTokenizer:
    return ChineseTokenizer()


@pytest.fixture(scope="module")
def clip() -> Any:
    return official_clip()


@pytest.fixture(scope="module")
def captions(data_dir: Path) -> list[str]:
    lines = (data_dir / "coco-cn-captions.txt").read_text(encoding="utf-8").splitlines()
    sentences = [line.split("\t", 1)[1] for line in lines if line.strip()]
    assert len(sentences) == 4712
    return sentences


def official_rows(clip: Any, texts: Sequence[str], context_length: int = 52) -> np.ndarray:
    """Rows of the official `cn_clip.clip.tokenize` (a torch tensor) as int64 numpy."""
    return np.asarray(clip.tokenize(list(texts), context_length=context_length).numpy())


def official_rule(pieces: list[int], context_length: int = 52) -> list[int]:
    """The official rule on word-piece ids: [CLS] + pieces[:L-2] + [SEP], zero-padded."""
    row = [CLS, *pieces[: context_length - 2], SEP]
    return row + [0] * (context_length - len(row))


def mismatches(tok: ChineseTokenizer, texts: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """Texts whose word-piece ids differ from the official ones, with both id lists."""
    ours = tok(texts, pad_to="longest") if texts else None
    out = []
    for i, text in enumerate(texts):
        expected = official_tokenize(text)
        got = tok.encode(text)
        if got != expected:
            out.append((text, got, expected))
        elif ours is not None:
            row = official_rule(expected)
            width = ours.ids.shape[1]
            if ours.ids[i].tolist() != row[:width] or any(row[width:]):
                out.append((text, ours.ids[i].tolist(), row))
    return out


# -- real captions --------------------------------------------------------------------------


def test_captions_match_official_rows(
    tok: ChineseTokenizer, clip: Any, captions: list[str]
) -> None:
    batch = tok(captions)
    expected = official_rows(clip, captions)
    assert batch.ids.dtype == np.int64
    assert batch.ids.shape == (4712, 52)
    assert np.array_equal(batch.ids, expected)
    # Every caption fits in 50 pieces; the data holds both fast-path and exact-path texts.
    assert not batch.truncated.any()
    assert sum(not is_fast_text(c) for c in captions) >= 1
    assert np.array_equal(np.stack([tok(c).ids[0] for c in captions[:300]]), expected[:300])


@pytest.fixture(scope="module")
def hf() -> Any:
    """transformers' pure-Python BertTokenizer (4.x) over the same vocabulary."""
    import transformers

    bert: Any = transformers.BertTokenizer
    return bert(vocab_file=str(default_vocab_path()), do_lower_case=True)


def test_captions_match_transformers_and_official_pieces(
    tok: ChineseTokenizer, hf: Any, captions: list[str]
) -> None:
    assert type(hf).__name__ == "BertTokenizer"  # the slow one, not BertTokenizerFast
    expected = np.array(
        [official_rule(hf.encode(c, add_special_tokens=False)) for c in captions], dtype=np.int64
    )
    assert np.array_equal(tok(captions).ids, expected)
    assert [tok.encode(c) for c in captions] == [official_tokenize(c) for c in captions]


# -- hand-written edge cases ----------------------------------------------------------------

EDGE_CASES = [
    "一只猫坐在red沙发上，旁边有3个iPhone 15 Pro。",
    "COCO数据集2014年版本v1.0的第42张图: A dog & a cat!",
    "ＡＢＣ全角字母ａｂｃ和数字０１２３，标点！？（）：；＄＋～｀",
    "中文\u3000全角空格\u3000分隔",
    "表情😀🐱👍和新表情🫨🩷🪿，肤色👋🏽，组合👨\u200d👩\u200d👧",
    "ΟΔΟΣ",
    "ΟΔΟΣ ΣΑΣ Σ",
    "Café Crème brûlée naïve ÅNGSTRÖM",
    "한국어 문장 테스트",
    "ひらがなとカタカナ、ｶﾀｶﾅ半角",
    "私用\ue000区\uf8ff字符\U000f0000 a\ue000b",
    "控制\x00字符\x08\x1b\x7f\x85\x9f\ufffd删掉",
    "零宽\u200b空格\u200c与\u200d连接\u2060符\ufeff",
    "行\u2028分隔\u2029段落",
    "兼容汉字\uf900\ufa0e\ufad9\U0002f800",
    "扩展B\U00020000\U0002a6d6扩展E\U0002b820\U0002b91f\U0002b920",
    "[MASK] [CLS] [SEP] [PAD] [UNK] 不是特殊符号",
    "x" * 150,
    "a" * 250,
    "中" + "b" * 200 + " " + "c" * 201,
    "",
    " \t\n\r\u3000 ",
    "İstanbul ǅ ß ﬁ Ω K Å",
    "tabs\tand\nnewlines\r\nin text",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
    "新Unicode\u061d\u0890\u2e43\u2e52\u0898字符",
    "组合音标e\u0301a\u0300\u0327 and \u302a\u302e\u302f",
    "孤立代理\ud800字符\udfff",
    "①②③ Ⅻ ℃ ㎡ №",
    "——……“引号”‘单引号’《书名》【括号】·间隔号",
]


@pytest.mark.parametrize("text", EDGE_CASES, ids=[repr(t[:12]) for t in EDGE_CASES])
def test_edge_cases_match_official(tok: ChineseTokenizer, clip: Any, text: str) -> None:
    assert tok.encode(text) == official_tokenize(text)
    assert tok.tokenize(text) == clip._tokenizer.tokenize(text)
    assert np.array_equal(tok(text).ids, official_rows(clip, [text]))
    assert np.array_equal(tok(text).ids[0], official_rule(official_tokenize(text)))


def test_edge_cases_exercise_both_paths() -> None:
    fast = [is_fast_text(t) for t in EDGE_CASES]
    assert any(fast) and not all(fast)


def test_known_divergences_are_on_the_exact_path(tok: ChineseTokenizer) -> None:
    # Characters where tokenizers' BertNormalizer/BertPreTokenizer differ from the official
    # code: none may take the fast path, and the results must be the official ones.
    cases = {
        "ΟΔΟΣ": ["ο", "##δ", "##ο", "##ς"],  # final sigma (Rust lower-cases per char)
        "a\ue000b": ["[UNK]"],  # private use: Rust drops it
        "\U0002b820a": ["[UNK]", "a"],  # Rust's CJK range starts extension E at U+2B920
        "a\u2e43b": ["a", "[UNK]", "b"],  # Unicode 10 punctuation, unknown to Rust's tables
    }
    for text, pieces in cases.items():
        assert not is_fast_text(text)
        assert tok.tokenize(text) == pieces


def test_special_token_strings_are_plain_text(tok: ChineseTokenizer) -> None:
    assert tok.tokenize("[MASK]") == ["[", "ma", "##sk", "]"]
    ids = tok("[CLS] [SEP] [PAD] [MASK]").ids[0]
    assert ids[0] == CLS and (ids[1:] != CLS).all()
    assert (ids[1:] == SEP).sum() == 1  # only the real one
    assert 103 not in ids  # [MASK]


def test_long_words_use_the_official_limit_of_200_chars(tok: ChineseTokenizer, hf: Any) -> None:
    word = "x" * 150
    assert hf.tokenize(word) == ["[UNK]"]  # transformers' limit is 100
    assert tok.tokenize(word) == official_words_pieces(word)
    assert "[UNK]" not in tok.tokenize(word)
    assert tok.tokenize("x" * 200) != ["[UNK]"]
    assert tok.tokenize("x" * 201) == ["[UNK]"]
    assert tok.tokenize("中" + "x" * 201) == ["中", "[UNK]"]


def official_words_pieces(text: str) -> list[str]:
    clip = official_clip()
    pieces: list[str] = clip._tokenizer.tokenize(text)
    return pieces


def test_empty_and_whitespace_only(tok: ChineseTokenizer) -> None:
    for text in ["", " ", "\t\n\r\u3000\u2028", "\x00\u200b"]:
        batch = tok(text)
        assert batch.ids[0, :3].tolist() == [CLS, SEP, 0]
        assert batch.lengths.tolist() == [2]
        assert not batch.truncated[0]
        assert tok.encode(text) == []


def test_is_blank_is_true_exactly_when_the_official_row_is_cls_sep(clip: Any) -> None:
    blank = ["", " ", "\t\n\r\u3000\u2028", "\x00\u200b", "\ufffd\ufeff", "\u0301"]
    for text in [*blank, "猫", "a", " 。", "\x00猫"]:
        official = official_rows(clip, [text])[0]
        assert is_blank(text) == (official[:3].tolist() == [CLS, SEP, 0]), repr(text)
    assert all(is_blank(t) for t in blank)


def test_truncation(tok: ChineseTokenizer, clip: Any) -> None:
    texts = ["中" * 49, "中" * 50, "中" * 51, "猫" * 200, "a " * 60 + "末"]
    batch = tok(texts)
    assert batch.truncated.tolist() == [False, False, True, True, True]
    assert batch.ids.shape == (5, 52)
    assert batch.lengths.tolist() == [51, 52, 52, 52, 52]
    assert (batch.ids[1:, 51] == SEP).all()
    assert batch.ids[0, 50] == SEP and batch.ids[0, 51] == 0
    assert np.array_equal(batch.ids, official_rows(clip, texts))
    assert batch.ids[4, 1:51].tolist() == official_tokenize(texts[4])[:50]
    # The same one text at a time, and with another context length.
    assert tok("中" * 51).truncated.tolist() == [True]
    assert tok("中" * 50).truncated.tolist() == [False]
    short = tok(texts, context_length=10)
    assert short.ids.shape == (5, 10)
    assert short.truncated.tolist() == [True] * 5
    assert np.array_equal(short.ids, official_rows(clip, texts, context_length=10))
    assert tok("中" * 8, context_length=10).truncated.tolist() == [False]
    assert tok("中" * 9, context_length=10).truncated.tolist() == [True]


# -- exhaustive and random checks against the official tokenizer ----------------------------


def fast_chars() -> list[str]:
    return [chr(cp) for lo, hi in FAST_CHARS for cp in range(lo, hi + 1)]


def test_every_fast_char_in_every_context(tok: ChineseTokenizer) -> None:
    chars = fast_chars()
    assert len(chars) > 27_000
    contexts = ["{c}", "a{c}b", "中{c}1", "Ab{c}{c}", "{c}x", "é{c}\u302e"]
    texts = [context.format(c=c) for context in contexts for c in chars]
    assert all(map(is_fast_text, texts))
    ours = tok(texts, pad_to="longest").ids.tolist()
    width = len(ours[0])
    expected = [official_rule(official_tokenize(t)) for t in texts]
    bad = [
        (t, got)
        for t, got, row in zip(texts, ours, expected, strict=True)
        if got != row[:width] or any(row[width:])
    ]
    assert bad == []


def test_characters_outside_the_fast_set_take_the_exact_path() -> None:
    inside = {cp for lo, hi in FAST_CHARS for cp in range(lo, hi + 1)}
    for cp in [0, 0x0B, 0x0C, 0x1F, 0x7F, 0x9F, 0x100, 0x3A3, 0x2065, 0x2E43, 0xE000, 0x1F600]:
        assert cp not in inside
        assert not is_fast_text(f"中文{chr(cp)}")
    assert is_fast_text("中文 Abc，。！\t")


def random_texts(rng: random.Random, pools: Sequence[Sequence[int]], n: int) -> list[str]:
    texts = []
    for _ in range(n):
        length = rng.choice([rng.randint(0, 12), rng.randint(0, 40), rng.randint(40, 90)])
        pool = rng.choice(pools)
        texts.append(
            "".join(
                chr(rng.choice(rng.choice(pools) if rng.random() < 0.3 else pool))
                for _ in range(length)
            )
        )
    return texts


def span(lo: int, hi: int) -> range:
    return range(lo, hi + 1)


FAST_POOLS: list[Sequence[int]] = [
    [cp for lo, hi in FAST_CHARS for cp in span(lo, hi)],
    [*span(0x20, 0x7E), *span(0x4E00, 0x4E80)],
    [*span(0x41, 0x5A), *span(0x61, 0x7A), 0x20, *span(0xC0, 0xFF)],
    [*span(0x3000, 0x303F), *span(0xFF01, 0xFF5E), *span(0x2000, 0x2064)],
    [0x20, 0x61, 0x62, 0xE9, 0x4E2D, *span(0x302A, 0x302F), 0x2E, 0x2D],
]

WIDE_POOLS: list[Sequence[int]] = [
    *FAST_POOLS,
    [*span(0x00, 0x40), *span(0x7F, 0xA0), 0xAD, 0x2028, 0x2029, 0xFEFF, 0xFFFD, 0x85],
    [*span(0x100, 0x24F), *span(0x300, 0x36F), *span(0x370, 0x3FF), 0x3A3, 0x3A3],
    [*span(0x400, 0x4FF), *span(0x590, 0x6FF), *span(0x900, 0x97F), *span(0xE00, 0xE7F)],
    [*span(0xAC00, 0xAC80), *span(0x1100, 0x11FF), *span(0x3040, 0x30FF), *span(0xFF61, 0xFF9F)],
    [*span(0x1F300, 0x1F64F), *span(0x1F900, 0x1FAFF), 0x200D, *span(0x1F3FB, 0x1F3FF), 0xFE0F],
    [*span(0xE000, 0xE010), *span(0xF0000, 0xF0010), *span(0x100000, 0x100010), 0x378, 0xD800],
    [
        *span(0x20000, 0x20010),
        *span(0x2B810, 0x2B830),
        *span(0x2B910, 0x2B930),
        *span(0xF900, 0xFAFF),
    ],
    [0x61D, 0x890, 0x891, *span(0x898, 0x89F), *span(0x2E43, 0x2E5D), 0x1734, 0x166D, 0x302E],
    [*span(0x2460, 0x24FF), *span(0x2100, 0x214F), *span(0x3200, 0x33FF), *span(0xFB00, 0xFB06)],
    range(0x110000),
]


def test_random_fast_texts_match_official(tok: ChineseTokenizer) -> None:
    texts = random_texts(random.Random(20240601), FAST_POOLS, 2500)
    assert all(map(is_fast_text, texts))
    assert mismatches(tok, texts) == []


def test_random_wide_unicode_texts_match_official(tok: ChineseTokenizer) -> None:
    texts = random_texts(random.Random(7), WIDE_POOLS, 3000)
    assert 100 < sum(map(is_fast_text, texts)) < 2900  # both paths
    assert any(tok(t).truncated[0] for t in texts)
    assert mismatches(tok, texts) == []


def test_official_words_match_the_official_basic_tokenizer() -> None:
    basic = official_clip()._tokenizer.basic_tokenizer
    texts = [*EDGE_CASES, *random_texts(random.Random(3), WIDE_POOLS, 1500)]
    assert [official_words(t) for t in texts] == [basic.tokenize(t) for t in texts]


# -- batch behaviour ------------------------------------------------------------------------


def test_pad_to_longest_is_max_cut_to_the_longest_row(tok: ChineseTokenizer) -> None:
    texts = ["猫", "一只在草地上奔跑的小狗 dog", "ΟΔΟΣ 😀", ""]
    full = tok(texts)
    longest = tok(texts, pad_to="longest")
    width = int(full.lengths.max())
    assert longest.ids.shape == (4, width)
    assert np.array_equal(longest.ids, full.ids[:, :width])
    assert (full.ids[:, width:] == 0).all()
    assert np.array_equal(longest.truncated, full.truncated)
    assert tok("猫", pad_to="longest").ids.tolist() == [[CLS, tok.encode("猫")[0], SEP]]
    capped = tok(["中" * 80, "a"], pad_to="longest")
    assert capped.ids.shape == (2, 52) and capped.truncated.tolist() == [True, False]


def test_batch_keeps_input_order_across_paths(tok: ChineseTokenizer) -> None:
    texts = ["猫", "ΟΔΟΣ", "狗", "😀 emoji", "a\ue000b", "鸟", "한국어", "hello world"]
    assert [is_fast_text(t) for t in texts] == [True, False, True, False, False, True, False, True]
    batch = tok(texts)
    for i, text in enumerate(texts):
        assert batch.ids[i].tolist() == official_rule(official_tokenize(text)), text
    assert np.array_equal(tok(tuple(texts)).ids, batch.ids)
    assert np.array_equal(tok(cast(Sequence[str], np.array(texts))).ids, batch.ids)
    assert np.array_equal(tok(texts[::-1]).ids, batch.ids[::-1])


def test_batch_result_shapes_and_dtypes(tok: ChineseTokenizer) -> None:
    batch = tok(["猫", "一只狗"])
    assert isinstance(batch, TokenizedBatch) and len(batch) == 2
    assert batch.ids.dtype == np.int64 and batch.ids.shape == (2, CONTEXT_LENGTH)
    assert batch.truncated.dtype == np.bool_ and batch.truncated.shape == (2,)
    assert batch.attention_mask.dtype == np.int64
    assert batch.attention_mask.tolist()[0][:4] == [1, 1, 1, 0]
    assert batch.lengths.tolist() == [3, 5]
    empty = tok([])
    assert empty.ids.shape == (0, 52) and empty.truncated.shape == (0,)
    assert tok([], pad_to="longest").ids.shape == (0, 0)


def test_concurrent_threads_get_the_same_results(tok: ChineseTokenizer) -> None:
    rng = random.Random(11)
    texts = random_texts(rng, WIDE_POOLS, 400)
    expected = tok(texts).ids
    expected_single = [tok(t).ids for t in texts[:100]]
    failures: list[str] = []

    def work(seed: int) -> None:
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        for _ in range(5):
            got = tok([texts[i] for i in order]).ids
            if not np.array_equal(got, expected[order]):
                failures.append(f"batch in thread {seed}")
            for i in order[:100]:
                if i < 100 and not np.array_equal(tok(texts[i]).ids, expected_single[i]):
                    failures.append(f"text {i} in thread {seed}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- API, arguments, errors -----------------------------------------------------------------


def test_vocabulary_properties(tok: ChineseTokenizer) -> None:
    import hashlib

    assert tok.vocab_size == 21128
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert tok.vocab_sha256 == hashlib.sha256(default_vocab_path().read_bytes()).hexdigest()
    assert tok.context_length == 52
    assert tok.vocab_path == default_vocab_path()
    assert default_tokenizer() is default_tokenizer()
    assert default_vocab_path().is_file()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t: t(123), TypeError, "got int"),
        (lambda t: t(["猫", 5]), TypeError, r"texts\[1\] must be a str, got int"),
        (lambda t: t([None]), TypeError, r"texts\[0\] must be a str, got NoneType"),
        (lambda t: t(b"cat"), TypeError, "bytes"),
        (lambda t: t([b"cat"]), TypeError, "decode"),
        (lambda t: t("猫", context_length=2), ValueError, "at least 3"),
        (lambda t: t("猫", context_length=True), TypeError, "must be an int"),
        (lambda t: t("猫", context_length=52.0), TypeError, "must be an int"),
        (lambda t: t("猫", pad_to="min"), ValueError, "pad_to"),
        (lambda t: t.encode(None), TypeError, "text must be a str"),
        (lambda t: t.tokenize(3.5), TypeError, "text must be a str"),
        (lambda t: ChineseTokenizer(context_length=2), ValueError, "at least 3"),
    ],
)
def test_bad_arguments_raise_clear_errors(
    tok: ChineseTokenizer, call: Callable[[Any], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(tok)


def test_missing_vocab_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vocab.txt"
    with pytest.raises(ConfigError, match=str(missing)):
        ChineseTokenizer(missing)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        ChineseTokenizer(tmp_path)  # a directory


def test_invalid_vocab_files(tmp_path: Path) -> None:
    cases = {
        "empty.txt": (b"", "lacks"),
        "no-cls.txt": (b"[PAD]\n[UNK]\n[SEP]\n", r"lacks \[CLS\]"),
        "pad-late.txt": (b"[UNK]\n[PAD]\n[CLS]\n[SEP]\n", "must be the first line"),
        "latin1.txt": ("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncaf\xe9\n".encode("latin-1"), "UTF-8"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match=message):
            ChineseTokenizer(path)


def test_custom_vocab_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n猫\nca\n##t\n", encoding="utf-8")
    small = ChineseTokenizer(str(path), context_length=6)
    assert small.vocab_size == 7 and (small.cls_id, small.sep_id, small.unk_id) == (2, 3, 1)
    assert small.tokenize("Cat 猫 dog") == ["ca", "##t", "猫", "[UNK]"]
    assert small(["Cat 猫 dog 猫"]).ids.tolist() == [[2, 5, 6, 4, 1, 3]]
    assert small(["Cat 猫 dog 猫"]).truncated.tolist() == [True]


def test_runtime_does_not_import_torch() -> None:
    code = (
        "import sys, runtime.tokenizer as t; t.default_tokenizer()('猫'); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_categories_used_by_the_fast_set_are_stable() -> None:
    # The fast set must not hold anything whose treatment depends on context or on the
    # Unicode version: no unassigned/private/surrogate characters, no capital sigma.
    for c in fast_chars():
        assert unicodedata.category(c) not in ("Cn", "Co", "Cs"), hex(ord(c))
        assert c != "Σ"
