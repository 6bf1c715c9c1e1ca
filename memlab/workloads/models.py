"""The three reference models. Each keeps its repeated blocks in ``self.blocks`` (an
``nn.ModuleList``), which is what gradient checkpointing wraps.

They are deliberately different in where their memory goes, so the knobs show different faces:
the MLP (8.4M parameters) is parameter-heavy (bf16 and sparsity shine), the CNN and the
transformer are activation-heavy (batch size and checkpointing shine). Sizes are chosen so one
default training step (batch 32, fp32) stays well under 0.3 s on 2 CPU cores (about 10-60 ms
on an idle 2-core machine).

The transformer block is written out (not ``nn.TransformerEncoderLayer``) because that layer
keeps its attention projection as a raw ``in_proj_weight`` and calls ``out_proj.weight``
directly, so neither sparse storage nor dynamic quantization could replace its Linear layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "CNN", "Transformer", "EncoderBlock", "ResidualMLPBlock", "ConvBlock"]


def _gelu(h: torch.Tensor, inplace: bool) -> torch.Tensor:
    # F.gelu has no inplace flag; aten.gelu_ is its in-place kernel.
    return torch.ops.aten.gelu_(h) if inplace else F.gelu(h)


def _residual(x: torch.Tensor, h: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + h``; in place, into ``h`` (a fresh layer output), never into ``x``, which the
    block's norm saved for backward."""
    return h.add_(x) if inplace else x + h


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + fc2(gelu(fc1(norm(x))))``. ``inplace`` (the
    ``inplace`` knob) runs the GELU and the residual add in place."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(_gelu(self.fc1(self.norm(x)), self.inplace))
        return _residual(x, h, self.inplace)


class MLP(nn.Module):
    """64 -> ``dim``, ``depth`` residual MLP blocks, -> classes (8.4M parameters by default)."""

    def __init__(
        self,
        in_features: int = 64,
        dim: int = 512,
        hidden: int = 2048,
        depth: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(dim, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


class ConvBlock(nn.Module):
    """Residual ``conv3x3 -> batchnorm -> relu`` at a fixed resolution. ``inplace`` runs the
    ReLU and the residual add in place: fine in inference; in training the add overwrites the
    ReLU's output, which ReLU saved for its gradient, and backward fails (on purpose: the
    ``inplace`` knob shows that error)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual(x, F.relu(self.bn(self.conv(x)), inplace=self.inplace), self.inplace)


class CNN(nn.Module):
    """(1, 16, 16) images: a conv stem, ``depth`` conv+batchnorm blocks, pooled linear head.

    Note for checkpointing: a recomputed batchnorm in training mode updates its running
    statistics a second time (torch.utils.checkpoint docs); harmless for a memory lab.
    """

    def __init__(self, channels: int = 64, depth: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.blocks = nn.ModuleList(ConvBlock(channels) for _ in range(depth))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block with fused-QKV attention and a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = _residual(x, self.proj(a.transpose(1, 2).reshape(b, s, d)), self.inplace)
        return _residual(x, self.fc2(_gelu(self.fc1(self.norm2(x)), self.inplace)), self.inplace)


class Transformer(nn.Module):
    """Continuous tokens (n, seq, in_features) -> linear embedding + learned positions,
    ``depth`` encoder blocks, mean-pooled linear head."""

    def __init__(
        self,
        in_features: int = 4,
        seq_len: int = 64,
        dim: int = 96,
        heads: int = 4,
        hidden: int = 384,
        depth: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, dim))
        # Larger than ViT's usual 0.02: with tokens of a few pixels, position carries most of
        # the information, and a few hundred steps on the digits must suffice to learn (measured:
        # 0.91 test accuracy after 200 steps of 32 versus 0.33 with std 0.02).
        nn.init.normal_(self.pos, std=0.5)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x).mean(dim=1))
