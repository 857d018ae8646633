"""torchvision and timm names of jaxcnn's variables, one :class:`~jaxcnn.interop.core.Layout`
per model class and library.

Each rule maps a jaxcnn variable path (``stage3/block4/conv2/kernel``) to a torch key
(``layer3.4.conv2.weight``); the first rule that matches the whole path wins, and the leaf is
renamed afterwards (``kernel``/``scale`` -> ``weight``, ``mean``/``var`` -> ``running_*``).
Where torch numbers an ``nn.Sequential`` (``features.4.block.2``) the rule asks the
:class:`~jaxcnn.interop.core.Tree` for the module's position in jaxcnn's call order, which is
the order torch registers them in.

A new family: write its rules here (or in the model's own module) and register them for the
root module's class name; tests/test_interop.py then checks them against the reference keys.
"""

from __future__ import annotations

import re

import numpy as np

from jaxcnn.interop.core import Layout, register_layout

CB = {"conv": 0, "bn": 1}  # torchvision's Conv2dNormActivation: 0 conv, 1 norm


def _both(cls: str, rules, **kw) -> None:
    """Register the same names for torchvision and timm (ResNet, DenseNet, Inception v3)."""
    register_layout(cls, Layout("torchvision", tuple(rules), **kw))
    register_layout(cls, Layout("timm", tuple(rules), **kw))


# -- ResNet / ResNeXt / Wide ResNet (torchvision == timm) ---------------------------------------
_both(
    "ResNet",
    [
        (r"stem/conv/(\w+)", r"conv1.\1"),
        (r"stem/bn/(\w+)", r"bn1.\1"),
        (r"stage(\d+)/block(\d+)/downsample/conv/(\w+)", r"layer\1.\2.downsample.0.\3"),
        (r"stage(\d+)/block(\d+)/downsample/bn/(\w+)", r"layer\1.\2.downsample.1.\3"),
        (r"stage(\d+)/block(\d+)/(\w+)/(\w+)", r"layer\1.\2.\3.\4"),
        (r"head/(\w+)", r"fc.\1"),
    ],
)


# -- DenseNet (torchvision == timm) --------------------------------------------------------------
def _dense_layer(m, t):
    kind = "norm" if m[3] == "bn" else "conv"
    return f"features.denseblock{m[1]}.denselayer{int(m[2]) + 1}.{kind}{m[4]}.{m[5]}"


_both(
    "DenseNet",
    [
        (r"stem/conv/(\w+)", r"features.conv0.\1"),
        (r"stem/bn/(\w+)", r"features.norm0.\1"),
        (r"stage(\d+)/block(\d+)/(bn|conv)(\d)/(\w+)", _dense_layer),
        (
            r"stage(\d+)/transition/(bn|conv)/(\w+)",
            lambda m, t: (
                f"features.transition{int(m[1]) - 1}.{'norm' if m[2] == 'bn' else 'conv'}.{m[3]}"
            ),
        ),
        (r"final_norm/(\w+)", r"features.norm5.\1"),
        (r"head/(\w+)", r"classifier.\1"),
    ],
)


# -- Inception v3 (torchvision == timm; timm's has no aux head) ----------------------------------
_both(
    "InceptionV3",
    [
        (r"conv2d_(\w+)/(conv|bn)/(\w+)", r"Conv2d_\1.\2.\3"),
        (r"mixed_(\w+)/(\w+)/(conv|bn)/(\w+)", r"Mixed_\1.\2.\3.\4"),
        (r"aux/(conv\d)/(conv|bn)/(\w+)", r"AuxLogits.\1.\2.\3"),
        (r"aux/head/(\w+)", r"AuxLogits.fc.\1"),
        (r"head/(\w+)", r"fc.\1"),
    ],
    model_kwargs=lambda keys: {"aux_logits": "AuxLogits.fc.weight" in keys},
)


# -- GoogLeNet (torchvision) -------------------------------------------------------------------
register_layout(
    "GoogLeNet",
    Layout(
        "torchvision",
        (
            (r"(conv\d)/(conv|bn)/(\w+)", r"\1.\2.\3"),
            (r"(inception\w+)/branch1/(conv|bn)/(\w+)", r"\1.branch1.\2.\3"),
            (
                r"(inception\w+)/branch(\d)_(\d)/(conv|bn)/(\w+)",
                lambda m, t: f"{m[1]}.branch{m[2]}.{int(m[3]) - 1}.{m[4]}.{m[5]}",
            ),
            (r"(inception\w+)/branch4/(conv|bn)/(\w+)", r"\1.branch4.1.\2.\3"),
            (r"(aux\d)/conv/(conv|bn)/(\w+)", r"\1.conv.\2.\3"),
            (r"(aux\d)/fc1/(\w+)", r"\1.fc1.\2"),
            (r"(aux\d)/head/(\w+)", r"\1.fc2.\2"),
            (r"head/(\w+)", r"fc.\1"),
        ),
        model_kwargs=lambda keys: {"aux_logits": "aux1.fc2.weight" in keys},
    ),
)


# -- VGG, AlexNet (torchvision) ------------------------------------------------------------------
def _vgg_features(m, t):
    """torchvision's ``features`` index: conv[, bn], relu per conv and a max pool per stage."""
    stage, kind, i, leaf = int(m[1]), m[2], int(m[3]), m[4]
    per = 3 if t.has("stage1/bn1") else 2
    index = sum(t.count(rf"stage{s}/conv\d+") * per + 1 for s in range(1, stage))
    return f"features.{index + (i - 1) * per + (kind == 'bn')}.{leaf}"


_CLASSIFIER = [
    (r"fc1/(\w+)", r"classifier.0.\1"),
    (r"fc2/(\w+)", r"classifier.3.\1"),
    (r"head/(\w+)", r"classifier.6.\1"),
]
register_layout(
    "VGG",
    Layout("torchvision", ((r"stage(\d+)/(conv|bn)(\d+)/(\w+)", _vgg_features), *_CLASSIFIER)),
)
_ALEX = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}
register_layout(
    "AlexNet",
    Layout(
        "torchvision",
        (
            (r"(conv\d)/(\w+)", lambda m, t: f"features.{_ALEX[m[1]]}.{m[2]}"),
            (r"fc1/(\w+)", r"classifier.1.\1"),
            (r"fc2/(\w+)", r"classifier.4.\1"),
            (r"head/(\w+)", r"classifier.6.\1"),
        ),
    ),
)


# -- MobileNet v2/v3, EfficientNet: inverted residual blocks -------------------------------------
_BLOCK = r"stage\d+/block\d+"


def _tv_block(prefix, blk, part, sub, leaf, t):
    """``{prefix}.block.{i}`` inside torchvision's MBConv / v3 InvertedResidual: the i-th of
    (expand, depthwise, se, project) that the jaxcnn block ``blk`` has."""
    return f"{prefix}.block.{t.index(f'{blk}/{part}')}.{CB.get(sub, sub)}.{leaf}"


def _tv_efficientnet(m, t):
    blk = f"stage{m[1]}/block{m[2]}"
    return _tv_block(f"features.{m[1]}.{m[2]}", blk, m[3], m[4], m[5], t)


def _tv_mobilenet_v3(m, t):
    return _tv_block(f"features.{1 + t.rank(m[1], _BLOCK)}", m[1], m[2], m[3], m[4], t)


def _n_stages(t) -> int:
    return t.count(r"stage\d+")


register_layout(
    "EfficientNet",
    Layout(
        "torchvision",
        (
            (r"stem/(conv|bn)/(\w+)", lambda m, t: f"features.0.{CB[m[1]]}.{m[2]}"),
            (r"stage(\d+)/block(\d+)/(\w+)/(conv|bn|fc1|fc2)/(\w+)", _tv_efficientnet),
            (
                r"conv_head/(conv|bn)/(\w+)",
                lambda m, t: f"features.{_n_stages(t) + 1}.{CB[m[1]]}.{m[2]}",
            ),
            (r"head/(\w+)", r"classifier.1.\1"),
        ),
    ),
)
register_layout(
    "MobileNetV3",
    Layout(
        "torchvision",
        (
            (r"stem/(conv|bn)/(\w+)", lambda m, t: f"features.0.{CB[m[1]]}.{m[2]}"),
            (rf"({_BLOCK})/(\w+)/(conv|bn|fc1|fc2)/(\w+)", _tv_mobilenet_v3),
            (
                r"conv_head/(conv|bn)/(\w+)",
                lambda m, t: f"features.{t.count(_BLOCK) + 1}.{CB[m[1]]}.{m[2]}",
            ),
            (r"pre_logits/(\w+)", r"classifier.0.\1"),
            (r"head/(\w+)", r"classifier.3.\1"),
        ),
    ),
)


def _tv_mobilenet_v2(m, t):
    """torchvision's ``features.{k}.conv``: [expand (0.0 conv, 0.1 bn)], depthwise (e.0,
    e.1), project conv (e+1), project bn (e+2), e = 1 with an expansion conv."""
    k = 1 + t.rank(m[1], _BLOCK)
    e = int(t.has(f"{m[1]}/expand"))
    part, sub, leaf = m[2], m[3], m[4]
    tail = {
        "expand": f"0.{CB[sub]}",
        "depthwise": f"{e}.{CB[sub]}",
        "project": str(e + 1 + CB[sub]),
    }[part]
    return f"features.{k}.conv.{tail}.{leaf}"


register_layout(
    "MobileNetV2",
    Layout(
        "torchvision",
        (
            (r"stem/(conv|bn)/(\w+)", lambda m, t: f"features.0.{CB[m[1]]}.{m[2]}"),
            (rf"({_BLOCK})/(expand|depthwise|project)/(conv|bn)/(\w+)", _tv_mobilenet_v2),
            (
                r"conv_head/(conv|bn)/(\w+)",
                lambda m, t: f"features.{t.count(_BLOCK) + 1}.{CB[m[1]]}.{m[2]}",
            ),
            (r"head/(\w+)", r"classifier.1.\1"),
        ),
    ),
)


def _timm_block(m, t):
    """timm's ``blocks.{stage}.{block}``: DepthwiseSeparable (conv_dw, bn1, se, conv_pw, bn2)
    without an expansion conv, InvertedResidual (conv_pw, bn1, conv_dw, bn2, se, conv_pwl,
    bn3) with one."""
    s, b, part, sub, leaf = int(m[1]), m[2], m[3], m[4], m[5]
    ir = t.has(f"stage{s}/block{b}/expand")
    names = {
        ("expand", "conv"): "conv_pw",
        ("expand", "bn"): "bn1",
        ("depthwise", "conv"): "conv_dw",
        ("depthwise", "bn"): "bn2" if ir else "bn1",
        ("se", "fc1"): "se.conv_reduce",
        ("se", "fc2"): "se.conv_expand",
        ("project", "conv"): "conv_pwl" if ir else "conv_pw",
        ("project", "bn"): "bn3" if ir else "bn2",
    }
    return f"blocks.{s - 1}.{b}.{names[part, sub]}.{leaf}"


_TIMM_BLOCKS = (
    (r"stem/conv/(\w+)", r"conv_stem.\1"),
    (r"stem/bn/(\w+)", r"bn1.\1"),
    (r"stage(\d+)/block(\d+)/(\w+)/(conv|bn|fc1|fc2)/(\w+)", _timm_block),
)
register_layout(
    "EfficientNet",
    Layout(
        "timm",
        (
            *_TIMM_BLOCKS,
            (r"conv_head/conv/(\w+)", r"conv_head.\1"),
            (r"conv_head/bn/(\w+)", r"bn2.\1"),
            (r"head/(\w+)", r"classifier.\1"),
        ),
        model_kwargs={"bn_eps": 1e-5},
    ),
)
register_layout(
    "MobileNetV3",
    Layout(
        "timm",
        (
            *_TIMM_BLOCKS,
            # timm ends ``blocks`` with the 1x1 conv + BN; its ``conv_head`` is jaxcnn's
            # ``pre_logits`` (a 1x1 conv with bias on the pooled map).
            (r"conv_head/conv/(\w+)", lambda m, t: f"blocks.{_n_stages(t)}.0.conv.{m[1]}"),
            (r"conv_head/bn/(\w+)", lambda m, t: f"blocks.{_n_stages(t)}.0.bn1.{m[1]}"),
            (r"pre_logits/(\w+)", r"conv_head.\1"),
            (r"head/(\w+)", r"classifier.\1"),
        ),
        model_kwargs={"bn_eps": 1e-5},
        expand=((r"conv_head\.weight", 4),),
    ),
)


# -- ConvNeXt ----------------------------------------------------------------------------------
_CNX_TV = {"dwconv": 0, "norm": 2, "fc1": 3, "fc2": 5}
register_layout(
    "ConvNeXt",
    Layout(
        "torchvision",
        (
            (r"stem/conv/(\w+)", r"features.0.0.\1"),
            (r"stem/norm/(\w+)", r"features.0.1.\1"),
            (
                r"stage(\d+)/block(\d+)/layer_scale",
                lambda m, t: f"features.{2 * int(m[1]) - 1}.{m[2]}.layer_scale",
            ),
            (
                r"stage(\d+)/block(\d+)/(\w+)/(\w+)",
                lambda m, t: f"features.{2 * int(m[1]) - 1}.{m[2]}.block.{_CNX_TV[m[3]]}.{m[4]}",
            ),
            (
                r"stage(\d+)/downsample/(norm|conv)/(\w+)",
                lambda m, t: f"features.{2 * int(m[1]) - 2}.{int(m[2] == 'conv')}.{m[3]}",
            ),
            (r"norm/(\w+)", r"classifier.0.\1"),
            (r"head/(\w+)", r"classifier.2.\1"),
        ),
        expand=((r"features\.\d+\.\d+\.layer_scale", 3),),
    ),
)
_CNX_TIMM = {"dwconv": "conv_dw", "norm": "norm", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
register_layout(
    "ConvNeXt",
    Layout(
        "timm",
        (
            (r"stem/conv/(\w+)", r"stem.0.\1"),
            (r"stem/norm/(\w+)", r"stem.1.\1"),
            (
                r"stage(\d+)/block(\d+)/layer_scale",
                lambda m, t: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.gamma",
            ),
            (
                r"stage(\d+)/block(\d+)/(\w+)/(\w+)",
                lambda m, t: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{_CNX_TIMM[m[3]]}.{m[4]}",
            ),
            (
                r"stage(\d+)/downsample/(norm|conv)/(\w+)",
                lambda m, t: f"stages.{int(m[1]) - 1}.downsample.{int(m[2] == 'conv')}.{m[3]}",
            ),
            (r"norm/(\w+)", r"head.norm.\1"),
            (r"head/(\w+)", r"head.fc.\1"),
        ),
    ),
)


# -- Swin Transformer ----------------------------------------------------------------------------
def relative_position_index(window: int) -> np.ndarray:
    """Swin's ``relative_position_index`` (flattened, int64), as torchvision stores it."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(
        2, -1
    )
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).reshape(-1).astype(np.int64)


def _swin_buffers(t) -> dict:
    """torchvision's persistent ``relative_position_index`` of every block."""
    out = {}
    for blk in t.matching(_BLOCK):
        rows = t.shapes[f"{blk}/attn/relative_position_bias_table"][0]  # (2w - 1)^2
        s, b = blk[len("stage") :].split("/block")
        key = f"features.{2 * int(s) - 1}.{b}.attn.relative_position_index"
        out[key] = relative_position_index((int(round(rows**0.5)) + 1) // 2)
    return out


def _swin_tv_block(m, t):
    rest = m[3].replace("/", ".").replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
    return f"features.{2 * int(m[1]) - 1}.{m[2]}.{rest}"


register_layout(
    "SwinTransformer",
    Layout(
        "torchvision",
        (
            (r"stem/conv/(\w+)", r"features.0.0.\1"),
            (r"stem/norm/(\w+)", r"features.0.2.\1"),
            (r"stage(\d+)/block(\d+)/(.+)", _swin_tv_block),
            (
                r"stage(\d+)/downsample/(\w+)/(\w+)",
                lambda m, t: f"features.{2 * int(m[1]) - 2}.{m[2]}.{m[3]}",
            ),
            (r"norm/(\w+)", r"norm.\1"),
            (r"head/(\w+)", r"head.\1"),
        ),
        buffers=_swin_buffers,
    ),
)
register_layout(
    "SwinTransformer",
    Layout(
        "timm",
        (
            (r"stem/conv/(\w+)", r"patch_embed.proj.\1"),
            (r"stem/norm/(\w+)", r"patch_embed.norm.\1"),
            (
                r"stage(\d+)/block(\d+)/(.+)",
                lambda m, t: f"layers.{int(m[1]) - 1}.blocks.{m[2]}.{m[3].replace('/', '.')}",
            ),
            (
                r"stage(\d+)/downsample/(\w+)/(\w+)",
                lambda m, t: f"layers.{int(m[1]) - 1}.downsample.{m[2]}.{m[3]}",
            ),
            (r"norm/(\w+)", r"norm.\1"),
            (r"head/(\w+)", r"head.fc.\1"),
        ),
    ),
)


# -- Vision Transformer --------------------------------------------------------------------------
_VIT_LAYER = r"encoder.layers.encoder_layer_\1"
register_layout(
    "VisionTransformer",
    Layout(
        "torchvision",
        (
            (r"cls_token", "class_token"),
            (r"pos_embed", "encoder.pos_embedding"),
            (r"stem/(\w+)", r"conv_proj.\1"),
            (r"block(\d+)/norm(\d)/(\w+)", _VIT_LAYER + r".ln_\2.\3"),
            (r"block(\d+)/attn/qkv/kernel", _VIT_LAYER + r".self_attention.in_proj_weight"),
            (r"block(\d+)/attn/qkv/bias", _VIT_LAYER + r".self_attention.in_proj_bias"),
            (r"block(\d+)/attn/proj/(\w+)", _VIT_LAYER + r".self_attention.out_proj.\2"),
            (
                r"block(\d+)/mlp/fc(\d)/(\w+)",
                lambda m, t: (
                    f"encoder.layers.encoder_layer_{m[1]}.mlp.{3 * (int(m[2]) - 1)}.{m[3]}"
                ),
            ),
            (r"norm/(\w+)", r"encoder.ln.\1"),
            (r"head/(\w+)", r"heads.head.\1"),
        ),
    ),
)
register_layout(
    "VisionTransformer",
    Layout(
        "timm",
        (
            (r"(cls_token|pos_embed)", r"\1"),
            (r"stem/(\w+)", r"patch_embed.proj.\1"),
            (r"block(\d+)/(.+)", lambda m, t: f"blocks.{m[1]}.{m[2].replace('/', '.')}"),
            (r"norm/(\w+)", r"norm.\1"),
            (r"head/(\w+)", r"head.\1"),
        ),
    ),
)


# -- Xception: timm's ``legacy_xception`` (Cadene's port of the Keras weights) --------------------
def _timm_xception(m, t):
    blk, rest = m[1], m[2]
    n = 1 + t.rank(blk, _BLOCK)
    if n == t.count(_BLOCK):  # the exit flow's two separable convs: conv3/bn3, conv4/bn4
        i, part, leaf = _sep_part(rest)
        return (
            f"{'bn' if part == 'bn' else 'conv'}{i + 2}.{'' if part == 'bn' else part + '.'}{leaf}"
        )
    if rest.startswith("downsample/"):
        _, sub, leaf = rest.split("/")
        return f"block{n}.{'skip' if sub == 'conv' else 'skipbn'}.{leaf}"
    i, part, leaf = _sep_part(rest)
    pre = 0 if n == 1 else 1  # block1 follows the stem's ReLU; the others start with one
    r = 3 * (i - 1) + pre + (part == "bn")
    return f"block{n}.rep.{r}.{'' if part == 'bn' else part + '.'}{leaf}"


def _sep_part(rest: str):
    """``sepconv2/depthwise/kernel`` -> (2, "conv1", "kernel"); ``bn1/scale`` -> (1, "bn", ...)."""
    parts = rest.split("/")
    if parts[0].startswith("bn"):
        return int(parts[0][2:]), "bn", parts[1]
    return int(parts[0][7:]), {"depthwise": "conv1", "pointwise": "pointwise"}[parts[1]], parts[2]


register_layout(
    "Xception",
    Layout(
        "timm",
        (
            (r"stem/(conv\d|bn\d)/(\w+)", r"\1.\2"),
            (rf"({_BLOCK})/(.+)", _timm_xception),
            (r"head/(\w+)", r"fc.\1"),
        ),
        # Cadene's port: BatchNorm eps 1e-5, max pools padded by 1 (TensorFlow's "SAME" pads
        # the 74x74 map of block3 at the bottom/right only).
        model_kwargs={"bn_eps": 1e-5, "pool_padding": 1},
    ),
)


# -- Inception v4 / Inception-ResNet v2 (timm) ---------------------------------------------------
def _inception_branch(rest: str, keep_underscores: bool) -> str:
    """``branch1_2/conv/kernel`` -> ``branch1.2.conv.kernel`` (a timm ``nn.Sequential``
    branch); Inception-C names its convs ``branch1_0``, ``branch2_3a``: only its pool branch
    ``branch3_1`` is a sequential (``branch3.1``)."""
    if keep_underscores:
        rest = rest.replace("branch3_1/", "branch3.1/")
    else:
        rest = re.sub(r"^branch(\d)_(\d+)/", r"branch\1.\2/", rest)
    return rest.replace("/", ".")


_INCEPTION_LAYER = r"(?:stem|stage\d)/\w+"


def _timm_inception_v4(m, t):
    """``features.{k}``: the k-th layer (with parameters) of the stem and stages 1-4."""
    layer, rest = m[1], m[2]
    k = t.rank(layer, _INCEPTION_LAYER)
    inception_c = layer.startswith("stage4/block")
    return f"features.{k}.{_inception_branch(rest, inception_c)}"


register_layout(
    "InceptionV4",
    Layout(
        "timm",
        (
            (rf"({_INCEPTION_LAYER})/(.+)", _timm_inception_v4),
            (r"head/(\w+)", r"last_linear.\1"),
        ),
    ),
)


def _timm_inception_resnet_v2(m, t):
    """``repeat``, ``repeat_1``, ``repeat_2`` hold stages 2-4's residual blocks; the last
    (no ReLU) block of stage 4 is ``block8``; other layers keep their names at the top."""
    stage, layer, rest = int(m[1]), m[2], _inception_branch(m[3], False)
    b = re.fullmatch(r"block(\d+)", layer)
    if b is None:
        return f"{layer}.{rest}"
    if stage == 4 and int(b[1]) == t.count(r"stage4/block\d+") - 1:
        return f"block8.{rest}"
    return f"repeat{'' if stage == 2 else f'_{stage - 2}'}.{b[1]}.{rest}"


register_layout(
    "InceptionResNetV2",
    Layout(
        "timm",
        (
            (r"stem/(\w+)/(.+)", lambda m, t: f"{m[1]}.{m[2].replace('/', '.')}"),
            (r"stage(\d)/(\w+)/(.+)", _timm_inception_resnet_v2),
            (r"head/(\w+)", r"classif.\1"),
        ),
    ),
)


# -- CoAtNet (timm maxxvit) ----------------------------------------------------------------------
def _timm_coatnet_block(m, t):
    """``stages.{s}.blocks.{b}``; the first transformer block's ``norm1`` is timm's
    ``norm1.norm`` (a norm followed by the 2x2 pool)."""
    s, b, rest = int(m[1]), int(m[2]), m[3]
    blk = f"stage{s}/block{b}"
    if b == 0 and t.has(f"{blk}/attn") and rest.startswith("norm1/"):
        rest = "norm1/norm/" + rest[len("norm1/") :]
    return f"stages.{s - 1}.blocks.{b}.{rest.replace('/', '.')}"


register_layout(
    "CoAtNet",
    Layout(
        "timm",
        (
            (r"stem/(\w+)/(\w+)", r"stem.\1.\2"),
            (r"stage(\d+)/block(\d+)/(.+)", _timm_coatnet_block),
            (r"norm/(\w+)", r"head.norm.\1"),
            (r"pre_logits/(\w+)", r"head.pre_logits.fc.\1"),
            (r"head/(\w+)", r"head.fc.\1"),
        ),
        # timm's attention and MLP are 1x1 convs: (out, in, 1, 1) for jaxcnn's dense kernels
        expand=((r"stages\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc\d)\.weight", 4),),
    ),
)


# -- Hybrid ViT (timm vit_base_r50_s16_224) ------------------------------------------------------
register_layout(
    "HybridVisionTransformer",
    Layout(
        "timm",
        (
            (r"(cls_token|pos_embed)", r"\1"),
            (r"stem/(\w+)/(\w+)", r"patch_embed.backbone.stem.\1.\2"),
            (
                r"stage(\d+)/block(\d+)/(.+)",
                lambda m, t: (
                    f"patch_embed.backbone.stages.{int(m[1]) - 1}.blocks.{m[2]}."
                    f"{m[3].replace('/', '.')}"
                ),
            ),
            (r"patch_embed/(\w+)", r"patch_embed.proj.\1"),
            (r"block(\d+)/(.+)", lambda m, t: f"blocks.{m[1]}.{m[2].replace('/', '.')}"),
            (r"norm/(\w+)", r"norm.\1"),
            (r"head/(\w+)", r"head.\1"),
        ),
    ),
)
