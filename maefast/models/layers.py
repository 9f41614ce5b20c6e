"""Transformer building blocks. Parameter names follow timm, so timm state dicts load unchanged."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from maefast.errors import UserInputError
from maefast.ops import attention

LAYER_NORM_EPS = 1e-6


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


def xavier_linear_(module: nn.Module) -> None:
    """The MAE initialization of a linear layer (xavier-uniform weight, zero bias); other modules are left as they
    are."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole samples, rescaling the survivors.

    The rate is a (non-persistent) tensor, not a Python float: torch.compile then sees the blocks of a model,
    whose rates differ, as the same code, instead of recompiling once per rate."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.register_buffer("drop_prob", torch.tensor(float(drop_prob)), persistent=False)

    def forward(self, x):
        if not self.training:
            return x
        keep = 1.0 - self.drop_prob
        survivors = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
        return x * (survivors / keep).to(x.dtype)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob.item():g}"


class AttentionSite(nn.Module):
    """A module that calls the attention op. `attention_backend` ("auto" or a name of
    maefast.ops.attention.ATTENTION_BACKENDS) is set before the forward by
    maefast.models.attention_setup (the user's choice, or the fastest one timed at setup); `attention_role`
    groups the sites that share a shape (encoder blocks, decoder blocks, the CA-MAE cross-attention)."""

    attention_role = ""

    def __init__(self):
        super().__init__()
        self.attention_backend = "auto"

    def attend(self, q, k, v, q_norm=None, k_norm=None):
        if _attention_recorder is not None:  # attention_setup.recording_attention_calls: shapes for tuning
            _attention_recorder(self, q, k, v, q_norm, k_norm)
        return attention(q, k, v, backend=self.attention_backend, q_norm=q_norm, k_norm=k_norm)


_attention_recorder = None  # set only while attention_setup records a model's attention calls


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class ParallelBlock(AttentionSite):
    """The papers' encoder block: attention and MLP side by side from one fused in-projection.

    y = in_norm(x); [mlp_hidden, q, k, v] = in_proj(y); q, k <- LayerNorm per head (qk-norm);
    x + drop_path(ls(attn_out_proj(attention(q, k, v)) + mlp_out_proj(gelu(mlp_hidden + mlp_bias))))
    Same parameters and math as timm's ParallelScalingBlock (`forward_unfused` computes it op by op, the
    reference of `forward`).

    `forward` runs both out-projections as one GEMM: z = [attention output, gelu(mlp_hidden + mlp_bias)]
    (one buffer) times the two weights side by side, with LayerScale folded into them and into the summed
    bias, so the residual update is z @ (gamma * [W_attn | W_mlp])^T + gamma * (b_attn + b_mlp). Under
    torch.compile the weight fold and cast fuse into one kernel per block, GELU and the bias into the
    writing of z, and the bias, drop path and residual add into one kernel after the GEMM. The residual
    stream keeps the dtype it has (fp32 under autocast: with LayerScale starting at 1e-4, a bf16 stream
    would round the blocks' updates away).
    """

    attention_role = "encoder"
    # the fused out-projection's GEMM, (z, weight) -> z @ weight^T; maefast.models.fp8 sets an FP8 one
    out_linear = staticmethod(F.linear)

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_norm: bool = True, init_values: float | None = 1e-4, drop_path: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise UserInputError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        mlp_hidden = int(mlp_ratio * dim)
        self.in_split = [mlp_hidden, dim, dim, dim]
        self.in_norm = layer_norm(dim)
        self.in_proj = nn.Linear(dim, mlp_hidden + 3 * dim, bias=qkv_bias)
        # With a biased in_proj the MLP bias is part of in_proj.bias; otherwise it is separate.
        self.mlp_bias = None if qkv_bias else nn.Parameter(torch.zeros(mlp_hidden))
        self.qk_norm = qk_norm
        self.q_norm = layer_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = layer_norm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_out_proj = nn.Linear(dim, dim)
        self.mlp_out_proj = nn.Linear(mlp_hidden, dim)
        self.ls = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def attention_and_mlp_hidden(self, x):
        """(merged attention output (B, N, D), MLP hidden before its bias and GELU (B, N, hidden))."""
        mlp_hidden, q, k, v = torch.split(self.in_proj(self.in_norm(x)), self.in_split, dim=-1)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))
        if self.qk_norm:  # the attention op applies the qk LayerNorm (fused into the Triton kernel)
            attended = self.attend(q, k, v, q_norm=self.q_norm, k_norm=self.k_norm)
        else:
            attended = self.attend(q, k, v)
        return merge_heads(attended), mlp_hidden

    def activated_mlp_hidden(self, mlp_hidden):
        """GELU(mlp_hidden + mlp_bias) in the activations' dtype: under autocast the fp32 bias is cast to bf16
        first, as timm adds it inside the in-projection, instead of promoting the GELU, the concatenation and
        the out-projection's input to fp32."""
        if self.mlp_bias is not None:
            mlp_hidden = mlp_hidden + self.mlp_bias.to(mlp_hidden.dtype)
        return F.gelu(mlp_hidden)

    def forward(self, x):
        attended, mlp_hidden = self.attention_and_mlp_hidden(x)
        z = torch.cat([attended, self.activated_mlp_hidden(mlp_hidden)], dim=-1)
        weight = torch.cat([self.attn_out_proj.weight, self.mlp_out_proj.weight], dim=1)
        bias = self.attn_out_proj.bias + self.mlp_out_proj.bias
        if isinstance(self.ls, LayerScale):
            weight, bias = weight * self.ls.gamma[:, None], bias * self.ls.gamma
        return x + self.drop_path(self.out_linear(z, weight) + bias)

    def forward_unfused(self, x):
        """The block op by op, as timm's ParallelScalingBlock: the reference of forward."""
        attended, mlp_hidden = self.attention_and_mlp_hidden(x)
        y = self.attn_out_proj(attended) + self.mlp_out_proj(self.activated_mlp_hidden(mlp_hidden))
        return x + self.drop_path(self.ls(y))


class SelfAttention(AttentionSite):
    """timm's Attention with a fused qkv projection and optional qk-norm: the MAE decoder blocks' (role
    "decoder") and the standard encoder blocks' (role "encoder")."""

    attention_role = "decoder"

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 role: str = "decoder"):
        super().__init__()
        if dim % num_heads:
            raise UserInputError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attention_role = num_heads, role
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.qk_norm = qk_norm
        self.q_norm = layer_norm(dim // num_heads) if qk_norm else nn.Identity()
        self.k_norm = layer_norm(dim // num_heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.qk_norm:
            return self.proj(merge_heads(self.attend(q, k, v, q_norm=self.q_norm, k_norm=self.k_norm)))
        return self.proj(merge_heads(self.attend(q, k, v)))


class CrossAttention(AttentionSite):
    """Queries from x, keys and values from context (the CA-MAE decoder's channel mixing)."""

    attention_role = "cross"

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context):
        q = split_heads(self.q(x), self.num_heads)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.proj(merge_heads(self.attend(q, k, v)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """timm's pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))), each branch with
    drop path. The MAE decoder's block (no qk-norm, no LayerScale), and the encoder block of a ViT built with
    block="standard" (timm's VisionTransformer default, e.g. vit_small_patch16_224: qkv bias, no qk-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, drop_path: float = 0.0,
                 role: str = "decoder"):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, qk_norm, role)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def sincos_position_embedding(dim: int, grid_side: int, repeats: int = 1, scale: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (grid_side**2 * repeats, dim), as in the papers' reference.

    Per grid cell (row h, column w): [sin(h w_i), cos(h w_i), sin(w w_i), cos(w w_i)] with
    w_i = scale ** (-i / (dim / 4)), i < dim / 4. `repeats` tiles the grid (once per channel for CA-MAE).
    """
    if dim % 4:
        raise UserInputError(f"sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / scale ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    coords = torch.arange(grid_side, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    row_angles = torch.outer(rows.flatten(), frequencies)
    col_angles = torch.outer(cols.flatten(), frequencies)
    grid = torch.cat([row_angles.sin(), row_angles.cos(), col_angles.sin(), col_angles.cos()], dim=1)
    return grid.repeat(repeats, 1)
