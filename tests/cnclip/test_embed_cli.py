"""`cnclip embed` and `model.embed.embed` on tiny checkpoints, real photos and sentences."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnclip.cli import main
from model.checkpoints import save_checkpoint
from model.embed import embed
from model.modeling import ChineseCLIP, build_model
from runtime.images import PreprocessConfig, load_and_preprocess
from runtime.tokenizer import default_tokenizer
from tests.conftest import ROOT, tiny_config

TEXTS = ["红色的杯子", "蓝色的T恤 XL", "一个男人和一个女人穿着军装玩手机。"]


@pytest.fixture(scope="module")
def model() -> ChineseCLIP:
    torch.manual_seed(0)
    return build_model(tiny_config("vit")).eval()


@pytest.fixture(scope="module")
def checkpoint(model: ChineseCLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def photos(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "coco-photos").glob("*.jpg"))[:5]


def _reference_texts(model: ChineseCLIP, texts: list[str]) -> np.ndarray:
    ids = torch.from_numpy(default_tokenizer()(texts).ids)
    with torch.no_grad():
        return model.encode_text(ids).numpy()


def _reference_images(model: ChineseCLIP, paths: list[Path]) -> np.ndarray:
    config = PreprocessConfig(image_size=model.config.vision.image_size)
    pixels = torch.from_numpy(np.stack([load_and_preprocess(p, config) for p in paths]))
    with torch.no_grad():
        return model.encode_image(pixels).numpy()


def test_embed_texts(model: ChineseCLIP, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.npy"
    assert main(["embed", "--model", str(checkpoint), "--text", *TEXTS, "--out", str(out)]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got, _reference_texts(model, TEXTS), atol=1e-6)


def test_embed_images_in_input_order(
    model: ChineseCLIP, checkpoint: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "i.npy"
    order = photos[::-1]
    args = ["embed", "--model", str(checkpoint), "--images", *map(str, order), "--out", str(out)]
    assert main([*args, "--batch-size", "2"]) == 0
    got = np.load(out)
    assert got.shape == (5, 32)
    np.testing.assert_allclose(got, _reference_images(model, order), atol=1e-6)


def test_text_file_and_stdin(
    model: ChineseCLIP, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "queries.txt"
    source.write_bytes("\ufeff".encode() + "\r\n".join(TEXTS).encode())  # BOM, CRLF
    out = tmp_path / "f.npy"
    assert (
        main(["embed", "--model", str(checkpoint), "--text-file", str(source), "--out", str(out)])
        == 0
    )
    np.testing.assert_allclose(np.load(out), _reference_texts(model, TEXTS), atol=1e-6)

    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(TEXTS).encode())))
    out2 = tmp_path / "s.npy"
    assert main(["embed", "--model", str(checkpoint), "--text-file", "-", "--out", str(out2)]) == 0
    np.testing.assert_array_equal(np.load(out2), np.load(out))


def test_python_function_equals_the_command(
    model: ChineseCLIP, checkpoint: Path, photos: list[Path], tmp_path: Path
) -> None:
    by_path = embed(checkpoint, texts=TEXTS, batch_size=1)
    by_model = embed(model, texts=TEXTS)
    np.testing.assert_allclose(by_path, by_model, atol=1e-6)
    np.testing.assert_allclose(by_path, _reference_texts(model, TEXTS), atol=1e-6)
    images = embed(checkpoint, images=[str(p) for p in photos])
    np.testing.assert_allclose(images, _reference_images(model, photos), atol=1e-6)
    from runtime.errors import CnClipError

    with pytest.raises(CnClipError, match="either texts or images"):
        embed(checkpoint)


def test_truncation_is_reported(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = "很长的句子" * 20
    out = tmp_path / "l.npy"
    assert (
        main(["embed", "--model", str(checkpoint), "--text", "短", long_text, "--out", str(out)])
        == 0
    )
    # (run as a program, the warning goes to stderr through logging.basicConfig)
    assert "1 of 2 texts were longer than 50 word pieces" in caplog.text
    assert "positions, from 0: 1)" in caplog.text


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnclip: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_user_errors_are_one_line_and_write_nothing(
    checkpoint: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.npy"
    base = ["embed", "--model", str(checkpoint), "--out", str(out)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert "bad.jpg" in _fails([*base, "--images", str(photos[0]), str(bad)], capsys)
    assert "holds a custom architecture, not RN50" in _fails(
        [*base, "--arch", "RN50", "--text", "a"], capsys
    )
    assert "image nowhere.jpg: no such file" in _fails([*base, "--images", "nowhere.jpg"], capsys)
    assert "is a directory" in _fails([*base, "--images", str(tmp_path)], capsys)
    missing = ["embed", "--model", str(tmp_path / "nope.pt"), "--text", "a", "--out", str(out)]
    assert "no such file" in _fails(missing, capsys)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\ncaf\xe9".encode("latin-1"))
    assert "not UTF-8 text (invalid byte on line 2)" in _fails(
        [*base, "--text-file", str(latin1)], capsys
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "holds no texts" in _fails([*base, "--text-file", str(empty)], capsys)
    as_dir = ["embed", "--model", str(checkpoint), "--text", "a", "--out", str(tmp_path)]
    assert "is a directory" in _fails(as_dir, capsys)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in _fails([*base, "--text", "a", "--device", "cuda"], capsys)
    assert "unknown device" in _fails([*base, "--text", "a", "--device", "tpu:x"], capsys)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_an_existing_output_survives_a_failure(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keep.npy"
    np.save(out, np.ones((2, 2), dtype=np.float32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _fails(["embed", "--model", str(checkpoint), "--images", str(bad), "--out", str(out)], capsys)
    np.testing.assert_array_equal(np.load(out), np.ones((2, 2), dtype=np.float32))


def test_argument_errors_exit_2(checkpoint: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["embed", "--model", str(checkpoint), "--out", "x.npy"])  # no input
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(
            [
                "embed",
                "--model",
                str(checkpoint),
                "--text",
                "a",
                "--out",
                "x.npy",
                "--batch-size",
                "0",
            ]
        )


def test_the_command_line_does_not_import_torch_until_needed() -> None:
    code = "import sys, cnclip.cli; cnclip.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_python_m_cnclip_runs(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.npy"
    argv = ["embed", "--model", str(checkpoint), "--text", "你好", "长" * 60, "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "cnclip", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 x 32 float32 embeddings of texts" in result.stderr
    assert "cnclip: WARNING: 1 of 2 texts were longer than 50 word pieces" in result.stderr
    assert np.load(out).shape == (2, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(checkpoint: Path, photos: list[Path]) -> None:
    cpu = embed(checkpoint, images=[str(p) for p in photos])
    gpu = embed(checkpoint, images=[str(p) for p in photos], device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    np.testing.assert_allclose(
        embed(checkpoint, texts=TEXTS, device="cuda"), embed(checkpoint, texts=TEXTS), atol=1e-4
    )
