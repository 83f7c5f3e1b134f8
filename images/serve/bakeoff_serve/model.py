"""The reference model: the OpenCLIP ViT-B/32 image tower, written out in plain PyTorch.

Every backend serves this module (directly, or exported to ONNX by `onnx_export`), so the
architecture lives in one place. Weights load from a state dict when one is given;
otherwise the model is a seeded random init, which is enough for performance work and is
always said so in `ModelProvenance` (the cluster has no model hub to download from).

Input: float32 RGB in [0, 1], shape [B, 3, S, S]. The CLIP mean/std normalisation is part of
the graph, so every backend gets identical bytes and identical preprocessing.
Output: [B, embed_dim] L2-normalised embeddings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bakeoff_serve.model_configs import (
    BUILTIN_MODELS,
    CLIP_MEAN,
    CLIP_STD,
    INPUT_NAME,
    OUTPUT_NAME,
    ClipVisionConfig,
)

__all__ = [
    "BUILTIN_MODELS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ClipVisionConfig",
    "ClipVisionTower",
    "ModelProvenance",
    "build_model",
    "describe_source",
]


@dataclass(frozen=True)
class ModelProvenance:
    builtin: str
    weights: str  # "random-init" or the weights file path
    seed: int | None
    sha256: str | None

    def describe(self) -> str:
        if self.weights == "random-init":
            return f"{self.builtin}, seeded random init (seed={self.seed}); no pretrained weights"
        return f"{self.builtin}, weights {self.weights} (sha256 {self.sha256})"


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width * 4),
            nn.GELU(),
            nn.Linear(width * 4, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class ClipVisionTower(nn.Module):
    """ViT image encoder with CLIP's layout: class token, pre/post LayerNorm, projection."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.config = config
        scale = config.width**-0.5
        self.conv1 = nn.Conv2d(3, config.width, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(config.width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(config.grid * config.grid + 1, config.width)
        )
        self.ln_pre = nn.LayerNorm(config.width)
        self.blocks = nn.Sequential(
            *(ResidualAttentionBlock(config.width, config.heads) for _ in range(config.layers))
        )
        self.ln_post = nn.LayerNorm(config.width)
        self.proj = nn.Parameter(scale * torch.randn(config.width, config.embed_dim))
        # Buffers, not constants: they follow .to(device, dtype) with the weights.
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        x = self.conv1(x)  # [B, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.blocks(x)
        x = self.ln_post(x[:, 0, :])
        x = x @ self.proj
        return nn.functional.normalize(x, dim=-1)


def build_model(
    builtin: str, weights: Path | None = None, seed: int = 0
) -> tuple[ClipVisionTower, ModelProvenance]:
    """Build a builtin model in eval mode, from `weights` when given, else seeded random init."""
    try:
        config = BUILTIN_MODELS[builtin]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ValueError(f"unknown builtin model {builtin!r}; known: {known}") from None
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ClipVisionTower(config)
    finally:
        torch.random.set_rng_state(generator_state)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval(), describe_source(builtin, weights, seed)


def describe_source(builtin: str, weights: Path | None, seed: int) -> ModelProvenance:
    """Where a builtin model's weights come from, without building it."""
    if weights is None:
        return ModelProvenance(builtin, "random-init", seed, None)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return ModelProvenance(builtin, str(weights), None, digest)
