"""Vision Transformer (Dosovitskiy et al., 2021), faithful to torchvision 0.2x
``VisionTransformer`` (and to timm's ``vit_tiny/small_patch16_224``, which have the same
parameter layout).

Patchify with a ``p x p`` conv stride ``p`` (``stem``), prepend a class token (``cls_token``),
add learned position embeddings (``pos_embed``, one per patch plus one for the class token),
dropout, ``depth`` pre-norm encoder blocks (LN -> multi-head self-attention -> dropout ->
residual; LN -> MLP with exact GELU and dropout -> residual), final LayerNorm (``norm``), and a
Linear ``head`` on the class token (zero-initialised like torchvision). LayerNorm eps is 1e-6.

Names: torchvision ``vit_b_16`` .. ``vit_h_14`` keep their names; timm's
``vit_tiny_patch16_224`` / ``vit_small_patch16_224`` are ``vit_ti_16`` / ``vit_s_16``.
``vit_h_14`` is counted at 224x224 (torchvision's default with ``weights=None``; its SWAG
weights use 518, i.e. ``img_size=518`` here after ``resample_pos_embed``).

Image size: the model is built for ``img_size`` (field, int or (H, W)); the input must have that
size. To run at another size, build the model with the new ``img_size`` and convert the weights
with ``resample_pos_embed(params, new_grid)`` (same parameter count, only ``pos_embed``
changes). ``features_only=True`` returns ``[tokens]``: the patch tokens after the final
LayerNorm as an NHWC grid ``(B, H/p, W/p, hidden)`` (reduction = patch size), class token
dropped. Attention weights: see ``jaxcnn.layers.attention`` (``mutable=["intermediates"]``).
Extra options beyond torchvision: ``drop_path_rate`` (timm-style stochastic depth, linear per
block, default 0); ``scan_blocks=True`` runs the ``depth`` identical encoder blocks under one
``nn.scan`` (parameters stacked under ``blocks``, the per-block drop-path rate a scanned input;
see :mod:`jaxcnn.models.scan`), ``scan_remat=True`` rematerialises each of them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import DropPath, Mlp, check_image, conv2d, drop_path_schedule, pair
from jaxcnn.layers.attention import MultiHeadSelfAttention
from jaxcnn.models import register_model
from jaxcnn.models.scan import STACKED, block_rates, check_scan_options, run_scanned

__all__ = ["EncoderBlock", "VisionTransformer", "resample_pos_embed"]

_EPS = 1e-6
_gelu = functools.partial(nn.gelu, approximate=False)


def resample_pos_embed(params, new_grid, old_grid=None, method: str = "bicubic"):
    """Resample a ViT's position embeddings to a new patch grid (class token kept as is).

    Args:
      params: the ``params`` collection of a ViT, or a variables dict holding it.
      new_grid: patches per side for the new image size (``img_size // patch_size``), int or
        ``(gh, gw)``.
      old_grid: the current grid; default: square, from the number of embeddings.
      method: ``jax.image.resize`` method over the 2-D grid ("bicubic", "bilinear", ...).
    Returns the same structure with ``pos_embed`` of shape ``(1, 1 + gh * gw, hidden)``.
    """
    if "params" in params:
        return {
            **params,
            "params": resample_pos_embed(params["params"], new_grid, old_grid, method),
        }
    pe = params["pos_embed"]
    n, dim = pe.shape[1] - 1, pe.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(
                f"resample_pos_embed: {n} patch embeddings are not a square grid; "
                "pass old_grid=(gh, gw)"
            )
        old_grid = (side, side)
    oh, ow = pair(old_grid)
    gh, gw = pair(new_grid)
    if oh * ow != n:
        raise ValueError(f"resample_pos_embed: old_grid {oh}x{ow} != {n} patch embeddings")
    grid = pe[:, 1:].reshape(1, oh, ow, dim).astype(jnp.float32)
    grid = jax.image.resize(grid, (1, gh, gw, dim), method=method)
    new = jnp.concatenate([pe[:, :1], grid.reshape(1, gh * gw, dim).astype(pe.dtype)], axis=1)
    return {**params, "pos_embed": new}


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.
    ``drop_path`` given to the call (a traced per-block rate under ``nn.scan``) overrides the
    field."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, drop_path=None):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        rate = self.drop_path if drop_path is None else drop_path

        def ln(name):
            return nn.LayerNorm(
                _EPS,
                use_fast_variance=False,
                name=name,  # noqa: E731
                **common,
            )

        y = MultiHeadSelfAttention(
            self.num_heads,
            attn_drop=self.attention_dropout,
            proj_drop=self.dropout,
            name="attn",
            **common,
        )(ln("norm1")(x), deterministic=not train)
        x = x + DropPath(rate)(y, deterministic=not train)
        y = Mlp(self.mlp_dim, act=_gelu, drop=self.dropout, name="mlp", **common)(
            ln("norm2")(x), deterministic=not train
        )
        return x + DropPath(rate)(y, deterministic=not train)


def embed_tokens(mdl: nn.Module, x, cls_init, dropout: float, train: bool):
    """Patch tokens ``(B, N, D)`` -> ``(B, 1 + N, D)``: the class token ``cls_token`` (drawn
    from ``cls_init``) first, the position embeddings ``pos_embed`` added, then dropout. The
    parameters are ``mdl``'s: call it inside ``mdl``'s ``nn.compact`` method."""
    b, n, d = x.shape
    cls = mdl.param("cls_token", cls_init, (1, 1, d), mdl.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    pos = mdl.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + n, d), mdl.param_dtype)
    return nn.Dropout(dropout)(x + pos.astype(x.dtype), deterministic=not train)


def token_head(mdl: nn.Module, x, grid: tuple[int, int], features=()):
    """The encoder's final LayerNorm ``norm``, then the logits of the zero-initialised Dense
    ``head`` on the class token; with ``mdl.features_only``, ``[*features, the patch tokens as
    a (B, gh, gw, D) map]`` instead. Call it inside ``mdl``'s ``nn.compact`` method."""
    common = dict(dtype=mdl.dtype, param_dtype=mdl.param_dtype)
    x = nn.LayerNorm(_EPS, use_fast_variance=False, name="norm", **common)(x)
    if mdl.features_only:
        return [*features, x[:, 1:].reshape(x.shape[0], *grid, x.shape[-1])]
    return nn.Dense(mdl.num_classes, kernel_init=nn.initializers.zeros, name="head", **common)(
        x[:, 0]
    )


class VisionTransformer(nn.Module):
    """ViT with a class token. See the module docstring for ``img_size`` and ``features_only``."""

    patch_size: int = 16
    img_size: Any = 224
    hidden_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "vit"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)
    scan_blocks: bool = False  # the encoder blocks under one nn.scan (jaxcnn.models.scan)
    scan_remat: bool = False  # with scan_blocks: nn.remat around each scanned block

    def scan_groups(self) -> tuple[tuple[str, int, int], ...]:
        """``(scope, first, count)`` of the blocks ``scan_blocks=True`` stacks."""
        return (("", 0, self.depth),)

    def grid(self) -> tuple[int, int]:
        """Patches per side, ``(H // p, W // p)``, for ``img_size``."""
        ih, iw = pair(self.img_size)
        p = self.patch_size
        if ih % p or iw % p:
            raise ValueError(
                f"{self.variant}: img_size {ih}x{iw} is not a multiple of the patch size {p}"
            )
        return ih // p, iw // p

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = self.patch_size
        check_image(x, model=self.variant, channels=self.in_channels, min_size=p)
        check_scan_options(self.variant, self.scan_blocks, self.scan_remat)
        b, h, w, _ = x.shape
        if h % p or w % p:
            raise ValueError(
                f"{self.variant}: image height and width must be multiples of the "
                f"patch size {p}, got {h}x{w}"
            )
        gh, gw = self.grid()
        if (h, w) != (gh * p, gw * p):
            raise ValueError(
                f"{self.variant}: built for {gh * p}x{gw * p} images (img_size), got {h}x{w}; "
                f"build it with img_size=({h}, {w}) and convert the weights with "
                f"jaxcnn.models.vit.resample_pos_embed(params, new_grid=({h // p}, {w // p}))"
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.hidden_dim
        x = conv2d(d, p, stride=p, padding=0, name="stem", **common)(x).reshape(b, gh * gw, d)
        x = embed_tokens(self, x, nn.initializers.zeros, self.dropout, train)
        (rates,) = drop_path_schedule(self.drop_path_rate, (self.depth,), endpoint=True)
        block = functools.partial(
            EncoderBlock, self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout
        )
        if self.scan_blocks:
            static, scanned = block_rates(rates)
            x = run_scanned(
                block(static or 0.0, name=STACKED, **common),
                x,
                self.depth,
                scanned,
                call=lambda mdl, y, rate: mdl(y, train, rate),
                remat=self.scan_remat,
            )
        else:
            for i, dp in enumerate(rates):
                x = block(dp, name=f"block{i}", **common)(x, train)
        return token_head(self, x, (gh, gw))


_PAPER = (
    "Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image "
    "Recognition at Scale. ICLR 2021"
)


def _vit(variant, kwargs, **defaults):
    cfg = dict(defaults, variant=variant)
    cfg.update(kwargs)
    return VisionTransformer(**cfg)


def _register(name, params, reference, patch, hidden, depth, heads, mlp, slow):
    feature_info = ({"name": "tokens", "channels": hidden, "reduction": patch},)

    @register_model(
        name,
        params=params,
        input_size=(224, 224, 3),
        paper=_PAPER,
        reference=reference,
        feature_info=feature_info,
        min_size=patch,
        slow=slow,
        test_size=224,
    )
    def build(**kwargs) -> VisionTransformer:
        return _vit(
            name,
            kwargs,
            patch_size=patch,
            hidden_dim=hidden,
            depth=depth,
            num_heads=heads,
            mlp_dim=mlp,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ViT {name}: patch {patch}, hidden {hidden}, {depth} blocks, {heads} heads."
    return build


#                                  params        reference           p   dim  depth heads mlp
vit_ti_16 = _register(
    "vit_ti_16", 5_717_416, "timm vit_tiny_patch16_224", 16, 192, 12, 3, 768, False
)
vit_s_16 = _register(
    "vit_s_16", 22_050_664, "timm vit_small_patch16_224", 16, 384, 12, 6, 1536, False
)
vit_b_16 = _register("vit_b_16", 86_567_656, "torchvision 0.29", 16, 768, 12, 12, 3072, True)
vit_b_32 = _register("vit_b_32", 88_224_232, "torchvision 0.29", 32, 768, 12, 12, 3072, True)
vit_l_16 = _register("vit_l_16", 304_326_632, "torchvision 0.29", 16, 1024, 24, 16, 4096, True)
vit_l_32 = _register("vit_l_32", 306_535_400, "torchvision 0.29", 32, 1024, 24, 16, 4096, True)
vit_h_14 = _register(
    "vit_h_14", 632_045_800, "torchvision 0.29 (img_size 224)", 14, 1280, 32, 16, 5120, True
)
