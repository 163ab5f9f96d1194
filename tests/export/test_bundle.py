"""Export to a verified bundle, refusal of broken ones, and torch-free loading."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import export_bundle
from export.verify import VerificationError, check_parity
from model.modeling import build_model
from runtime.bundle import BundleError, load_bundle
from runtime.tokenizer import default_tokenizer
from tests.conftest import ROOT, tiny_config

PHOTO = "coco-photos/000000005082.jpg"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    from tests.conftest import data_root

    out: dict[tuple[str, str], Path] = {}
    base = tmp_path_factory.mktemp("bundles")
    for family in ("vit", "resnet"):
        for precision in ("fp32", "fp16", "int8"):
            torch.manual_seed(0)
            model = build_model(tiny_config(family))
            path = base / f"{family}-{precision}"
            # The fp16 bundles carry the torch.export programs too.
            programs = precision == "fp16"
            export_bundle(
                model, path, precision=precision, verify_data=data_root(), torch_programs=programs
            )
            out[(family, precision)] = path
    return out


@pytest.mark.parametrize("family", ["vit", "resnet"])
@pytest.mark.parametrize(
    ("precision", "threshold"), [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.99)]
)
def test_bundle_matches_pytorch(
    bundles: dict[tuple[str, str], Path],
    data_dir: Path,
    family: str,
    precision: str,
    threshold: float,
) -> None:
    path = bundles[(family, precision)]
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["precision"] == precision and manifest["embed_dim"] == 32
    assert manifest["parity"]["texts"] >= 50 and manifest["parity"]["images"] == 14
    assert manifest["parity"]["text_min_cosine"] >= threshold
    bundle = load_bundle(path)
    torch.manual_seed(0)
    model = build_model(tiny_config(family)).eval()
    texts = ["红色的杯子", "一群人围坐在桌边吃饭", "踢足球的人"]
    ids = default_tokenizer()(texts, pad_to="longest").ids
    with torch.no_grad():
        ref = model.encode_text(torch.from_numpy(ids)).numpy()
    got = bundle.encode_texts(texts)
    assert got.shape == (3, 32) and got.dtype == np.float32
    assert (ref * got).sum(axis=1).min() >= threshold
    image = bundle.encode_images([data_dir / PHOTO])
    assert image.shape == (1, 32)
    assert bundle.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_a_graph_that_differs_is_refused_and_nothing_is_written(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.bundle as bundle_module
    from export.onnx_export import export_text

    torch.manual_seed(1)
    other = build_model(tiny_config("vit"))
    # The text graph comes from another model: the verification must catch it.
    monkeypatch.setattr(bundle_module, "export_text", lambda model, path: export_text(other, path))
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match="text cosine"):
        export_bundle(build_model(tiny_config("vit")), tmp_path / "b", verify_data=data_dir)
    assert list(tmp_path.iterdir()) == []


def test_check_parity_thresholds() -> None:
    good = {
        "text_min_cosine": 0.995,
        "image_min_cosine": 0.999,
        "text_top10_agreement": 1.0,
        "image_top10_agreement": 1.0,
    }
    check_parity(good, "int8")
    with pytest.raises(VerificationError, match="fp32"):
        check_parity(good, "fp32")
    with pytest.raises(VerificationError, match="neighbours"):
        check_parity({**good, "image_top10_agreement": 0.5}, "int8")


def test_corrupted_or_mismatched_bundles_are_refused(
    bundles: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    def copy() -> Path:
        target = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundles[("vit", "fp32")], target)
        return target

    broken = copy()
    data = bytearray((broken / "text.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 differs"):
        load_bundle(broken)

    missing = copy()
    (missing / "image.onnx").unlink()
    with pytest.raises(BundleError, match="image tower image.onnx is missing"):
        load_bundle(missing)

    vocab = copy()
    with (vocab / "vocab.txt").open("a", encoding="utf-8") as handle:
        handle.write("[extra]\n")
    with pytest.raises(BundleError, match="not the vocabulary"):
        load_bundle(vocab)

    newer = copy()
    manifest = json.loads((newer / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="upgrade cnclip"):
        load_bundle(newer)

    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_a_bundle_loads_and_embeds_without_torch(
    bundles: dict[tuple[str, str], Path], data_dir: Path
) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from runtime.bundle import load_bundle
b = load_bundle({str(bundles[("resnet", "int8")])!r})
t = b.encode_texts(["红色的杯子"])
i = b.encode_images([{str(data_dir / PHOTO)!r}])
print(t.shape, i.shape, "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(1, 32) (1, 32) False"


def test_cli_export_then_embed_with_the_bundle(tmp_path: Path, data_dir: Path) -> None:
    from cnclip.cli import main
    from model.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_config("vit"))
    ckpt = save_checkpoint(model, tmp_path / "tiny.pt")
    out = tmp_path / "bundle"
    args = ["export", "--model", str(ckpt), "--out", str(out), "--verify-data", str(data_dir)]
    assert main([*args, "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"]["checkpoint"] == "tiny.pt" and len(manifest["source"]["sha256"]) == 64
    assert main([*args, "-q"]) == 2  # exists: refused without --overwrite
    vectors = tmp_path / "v.npy"
    assert (
        main(["embed", "--model", str(out), "--text", "红色的杯子", "--out", str(vectors), "-q"])
        == 0
    )
    with torch.no_grad():
        ids = torch.from_numpy(default_tokenizer()(["红色的杯子"], pad_to="longest").ids)
        ref = model.eval().encode_text(ids).numpy()
    np.testing.assert_allclose(np.load(vectors), ref, atol=1e-5)


def test_export_without_sample_data_verifies_on_the_built_in_set(tmp_path: Path) -> None:
    from export.samples import builtin_pictures, builtin_sentences

    assert len(builtin_sentences()) >= 20 and {p.mode for p in builtin_pictures()} >= {"L", "RGBA"}
    longest = max(len(default_tokenizer().encode(s)) for s in builtin_sentences())
    assert longest >= 50  # every length up to 52 tokens gets checked
    torch.manual_seed(0)
    manifest = export_bundle(build_model(tiny_config("resnet")), tmp_path / "b", precision="int8")
    assert manifest.parity["verified_on"] == "built-in sentences and drawings"
    assert manifest.parity["texts"] >= 50 and manifest.parity["images"] == 12
    assert load_bundle(tmp_path / "b").encode_texts(["白色陶瓷马克杯"]).shape == (1, 32)
    # readable by another user (the serving container's), as any new file under the umask
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [tmp_path / "b", *(tmp_path / "b").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o444 & ~umask == 0o444 & ~umask, path


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_fp16_graphs_keep_the_sensitive_ops_in_fp32(
    bundles: dict[tuple[str, str], Path], family: str
) -> None:
    import onnx
    from onnx import TensorProto

    for tower in ("text", "image"):
        graph = onnx.load(str(bundles[(family, "fp16")] / f"{tower}.onnx")).graph
        types = {init.name: init.data_type for init in graph.initializer}
        matmul_weights = [
            types[name]
            for node in graph.node
            if node.op_type in ("MatMul", "Gemm", "Conv")
            for name in node.input
            if name in types
        ]
        assert matmul_weights and set(matmul_weights) == {TensorProto.FLOAT16}
        # The inputs of every LayerNorm and softmax come out of a cast to float32 (or
        # are float32 weights): those ops compute in fp32.
        casts = {
            out: attr.i
            for node in graph.node
            if node.op_type == "Cast"
            for attr in node.attribute
            if attr.name == "to"
            for out in node.output
        }
        sensitive = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert sensitive
        for node in sensitive:
            first = node.input[0]
            assert casts.get(first) == TensorProto.FLOAT, (tower, node.name)
            for weight in node.input[1:]:
                assert types.get(weight, TensorProto.FLOAT) == TensorProto.FLOAT
        # Input and output stay float32/int64: the runtime feeds every precision alike.
        assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        manifest = json.loads((bundles[(family, "fp16")] / "manifest.json").read_text("utf-8"))
        assert manifest["towers"][tower]["precision"] == "fp16"


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_torch_programs_run_on_the_torch_backends(
    bundles: dict[tuple[str, str], Path], family: str
) -> None:
    from runtime.torch_session import TorchSession

    path = bundles[(family, "fp16")]
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["torch"]["parity"]["text_min_cosine"] >= 0.9999
    assert manifest["torch"]["torch_version"] == torch.__version__
    torch.manual_seed(0)
    model = build_model(tiny_config(family)).eval()
    texts = ["红色的杯子", "一群人围坐在桌边吃饭，桌上摆满了饭菜和饮料"]
    ids = default_tokenizer()(texts, pad_to="longest").ids
    with torch.no_grad():
        ref = model.encode_text(torch.from_numpy(ids)).numpy()
    bundle = load_bundle(path, backend="torch-cpu")
    np.testing.assert_allclose(bundle.encode_texts(texts), ref, atol=1e-5)
    # What torch-cuda does on a GPU (half weights under autocast), here in bfloat16.
    half = TorchSession(
        path / "text.pt2", "input_ids", "text_embeds", device="cpu", dtype="bfloat16"
    )
    got = half.run(ids)
    assert got.dtype == np.float32 and (got * ref).sum(axis=1).min() >= 0.99
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    size = model.config.vision.image_size
    pixels = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref_image = model.encode_image(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(bundle.encode_pixels(pixels), ref_image, atol=1e-5)


def test_backends_that_cannot_run_here_say_why(
    bundles: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    from runtime.errors import ConfigError
    from runtime.sessions import BackendOptions

    fp32 = bundles[("vit", "fp32")]
    with pytest.raises(BundleError, match="no PyTorch programs.*--torch"):
        load_bundle(fp32, backend="torch-cpu")
    with pytest.raises(ConfigError, match="unknown backend 'gpu'"):
        load_bundle(fp32, backend="gpu")
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        BackendOptions(threads=0)
    with pytest.raises(ConfigError, match="TensorRT runs fp32 and fp16 bundles"):
        load_bundle(bundles[("vit", "int8")], backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no GPU"):
            load_bundle(bundles[("vit", "fp16")], backend="torch-cuda")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
            load_bundle(fp32, backend="onnxruntime-cuda")
    from runtime.tensorrt import tensorrt_available

    if not tensorrt_available():
        with pytest.raises(ConfigError, match="tensorrt"):
            load_bundle(fp32, backend="tensorrt")
        torch.manual_seed(0)
        with pytest.raises(ConfigError, match="tensorrt"):
            export_bundle(build_model(tiny_config("vit")), tmp_path / "t", tensorrt=True)
        assert not (tmp_path / "t").exists()


def test_a_changed_torch_program_is_refused(
    bundles: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    target = tmp_path / "b"
    shutil.copytree(bundles[("resnet", "fp16")], target)
    with (target / "image.pt2").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="image.pt2: sha256 differs"):
        load_bundle(target, backend="torch-cpu")
    load_bundle(target)  # the ONNX towers are intact: the default backend still loads


def test_cli_embed_backend_choices(bundles: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    from cnclip.cli import main

    out = str(tmp_path / "v.npy")
    path = str(bundles[("vit", "fp16")])
    base = ["embed", "--model", path, "--text", "红色的杯子", "--out", out, "-q"]
    assert main([*base, "--backend", "torch-cpu", "--threads", "1"]) == 0
    assert np.load(out).shape == (1, 32)
    assert main([*base, "--device", "cuda"]) == 2  # a CPU backend on a GPU: refused
    assert main([*base, "--backend", "torch-cuda", "--device", "gpu0"]) == 2


def test_graphs_past_2gb_keep_their_weights_in_one_checked_file(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    import export.bundle as bundle_module
    from export.onnx_export import consolidate_external_data, export_text

    def export_text_as_large(model: torch.nn.Module, path: Path) -> None:
        export_text(model, path)  # type: ignore[arg-type]
        # One file per weight, as the exporter writes a graph past protobuf's 2 GB.
        graph = onnx.load(str(path))
        onnx.save_model(
            graph,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=False,
            size_threshold=0,
        )
        assert len(list(path.parent.iterdir())) > 10
        consolidate_external_data(path)

    monkeypatch.setattr(bundle_module, "export_text", export_text_as_large)
    torch.manual_seed(0)
    manifest = export_bundle(build_model(tiny_config("vit")), tmp_path / "b", verify_data=data_dir)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["image.onnx", "manifest.json", "text.onnx", "text.onnx.data", "vocab.txt"]
    external = manifest.towers["text"].external_data
    assert external is not None and external.file == "text.onnx.data"
    assert manifest.parity["text_min_cosine"] >= 0.9999
    assert load_bundle(tmp_path / "b").encode_texts(["红色的杯子"]).shape == (1, 32)
    with (tmp_path / "b" / "text.onnx.data").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    with pytest.raises(BundleError, match="text.onnx.data: sha256 differs"):
        load_bundle(tmp_path / "b")
