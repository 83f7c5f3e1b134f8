"""ONNX export of the reference model: dynamic batch, parity with PyTorch, cached reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bakeoff_serve import model, onnx_export

BUILTIN = "vit-tiny-clip"
IMAGE_SIZE = model.BUILTIN_MODELS[BUILTIN].image_size
EMBED_DIM = model.BUILTIN_MODELS[BUILTIN].embed_dim


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    net, _ = model.build_model(BUILTIN, None, seed=0)
    return net


@pytest.fixture(scope="module")
def exported(tiny: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return onnx_export.export_onnx(tiny, path, IMAGE_SIZE)


def test_export_has_a_dynamic_batch_axis_on_input_and_output(exported: Path) -> None:
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    (returned,) = session.get_outputs()
    assert (given.name, returned.name) == (model.INPUT_NAME, model.OUTPUT_NAME)
    assert isinstance(given.shape[0], str) and given.shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert isinstance(returned.shape[0], str) and returned.shape[1:] == [EMBED_DIM]


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_model_runs_any_batch_size(exported: Path, batch: int) -> None:
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(batch).random((batch, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    (embeddings,) = session.run([model.OUTPUT_NAME], {model.INPUT_NAME: pixels})
    assert embeddings.shape == (batch, EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_exported_model_matches_pytorch_within_1e_5(tiny: torch.nn.Module, exported: Path) -> None:
    error = onnx_export.check_onnx_against_torch(tiny, exported, batch_sizes=(1, 5), seed=3)
    assert 0.0 <= error < 1e-5


def test_export_is_refused_and_removed_when_onnx_disagrees_with_pytorch(
    tiny: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for a broken exporter: the comparison reports a large error.
    monkeypatch.setattr(onnx_export, "check_onnx_against_torch", lambda *a, **k: 0.5)
    path = tmp_path / "bad.onnx"
    with pytest.raises(onnx_export.OnnxExportError, match=r"max abs error 0\.5 > 0\.0001"):
        onnx_export.export_onnx(tiny, path, IMAGE_SIZE)
    assert not path.exists()


def test_export_leaves_the_model_in_its_original_mode(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    tiny.train()
    try:
        onnx_export.export_onnx(tiny, tmp_path / "m.onnx", IMAGE_SIZE)
        assert tiny.training
    finally:
        tiny.eval()


def test_prepare_onnx_exports_once_then_reuses_the_cached_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = onnx_export.prepare_onnx(BUILTIN, None, 0, tmp_path)
    record = json.loads(first.with_suffix(".json").read_text())
    assert record["builtin"] == BUILTIN and record["max_abs_error_vs_torch"] < 1e-5
    assert record["torch"] == torch.__version__
    stamp = first.stat().st_mtime_ns

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare_onnx rebuilt a cached export")

    monkeypatch.setattr(model, "build_model", no_rebuild)
    again = onnx_export.prepare_onnx(BUILTIN, None, 0, tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.name, first.with_suffix(".json").name]
    )


def test_cache_key_changes_with_everything_that_changes_the_bytes() -> None:
    key = onnx_export.export_cache_key
    base = key(BUILTIN, None, 0, 17)
    assert base == key(BUILTIN, None, 0, 17)
    others = {
        key("vit-b32-clip", None, 0, 17),
        key(BUILTIN, None, 1, 17),
        key(BUILTIN, "ab" * 32, 0, 17),
        key(BUILTIN, None, 0, 18),
    }
    assert base not in others and len(others) == 4
    # With weights the seed is irrelevant (build_model ignores it), so it is not in the key.
    assert key(BUILTIN, "ab" * 32, 0, 17) == key(BUILTIN, "ab" * 32, 9, 17)


def test_prepare_onnx_keys_weights_by_content(tiny: torch.nn.Module, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), weights)
    from_weights = onnx_export.prepare_onnx(BUILTIN, weights, 0, tmp_path / "cache")
    seeded = onnx_export.prepare_onnx(BUILTIN, None, 0, tmp_path / "cache")
    assert from_weights != seeded
    record = json.loads(from_weights.with_suffix(".json").read_text())
    assert str(weights) in record["provenance"]
