"""The reference model (`bakeoff_serve.model`): interface, determinism, provenance, size."""

from __future__ import annotations

import pytest
import torch

from bakeoff_serve import model


def embed(seed: int, pixels: torch.Tensor) -> torch.Tensor:
    built, _ = model.build_model("vit-tiny-clip", seed=seed)
    with torch.inference_mode():
        return built(pixels)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand((3, 3, 224, 224), generator=torch.Generator().manual_seed(7))


def test_output_is_batch_by_512_and_unit_norm(pixels: torch.Tensor) -> None:
    out = embed(0, pixels)
    assert out.shape == (3, 512)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)


def test_same_seed_gives_same_model(pixels: torch.Tensor) -> None:
    torch.testing.assert_close(embed(0, pixels), embed(0, pixels), atol=0, rtol=0)


def test_other_seed_gives_other_model(pixels: torch.Tensor) -> None:
    assert (embed(0, pixels) - embed(1, pixels)).abs().max() > 1e-3


def test_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    model.build_model("vit-tiny-clip", seed=5)
    torch.testing.assert_close(torch.rand(4), expected)


def test_provenance_says_random_init() -> None:
    _, provenance = model.build_model("vit-tiny-clip", seed=3)
    assert provenance.weights == "random-init"
    assert "random init" in provenance.describe()
    assert "seed=3" in provenance.describe()


def test_vit_b32_has_openclip_parameter_count() -> None:
    built, _ = model.build_model("vit-b32-clip")
    count = sum(p.numel() for p in built.parameters())
    assert 87e6 < count < 89e6, count


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown builtin model 'vit-huge'"):
        model.build_model("vit-huge")
