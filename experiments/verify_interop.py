"""Check converted jaxcnn models against the real libraries: same weights in, same outputs out,
per feature stage and on the logits.

    python -m experiments.verify_interop --source torchvision resnet50 swin_t
    python -m experiments.verify_interop --source timm --all          # every timm reference
    python -m experiments.verify_interop --source keras mobilenet_v1 xception
    python -m experiments.verify_interop --keys   # refresh tests/data/reference_keys.json.gz
    python -m experiments.verify_interop --cfgs   # print jaxcnn.interop.pretrained's table

Two Pythons: this script runs in jaxcnn's, and runs itself as a worker (``--worker JOB``) in
one with torch, torchvision, timm, safetensors and keras 3 (``--torch-python``, default
``$JAXCNN_TORCH_PYTHON``, else ``python3``); jaxcnn never imports torch. The worker builds each
reference model with random weights, also randomising what initialisation leaves trivial
(BatchNorm statistics, biases, layer scales, relative position tables, zero-initialised heads;
head biases zeroed so the logits depend on the features; conv kernels far above He scale scaled
down), runs one random image and writes the weights (``.safetensors`` for torch; ``.keras``,
``.weights.h5`` and legacy ``.h5`` for Keras) and the outputs of the modules that end jaxcnn's
feature stages (``feature_info``; every block of a ViT) to ``--dir``.

This side reads the weights with :func:`jaxcnn.interop.load_file` (the file's own key order:
safetensors sorts by name), checks that five other orders (``state_dict`` order and shuffles)
and, for Keras, all three file formats give bit-identical variables, runs the jaxcnn model, and
prints relative errors ``max |jaxcnn - reference| / max |reference|`` of the logits and of
every stage (the reference module compared is named), and whether ``to_torch_state_dict``
gives the tensors back bit for bit (the ``state_dict``, or the Keras file's weights), with and
without the reference. ``--photo`` also runs skimage's photo of a cat through the library's own
eval transform and :func:`jaxcnn.interop.eval_transform` with the model's ``pretrained_cfg``:
same input (max difference) and same top 5. Exit status 1 if any relative error exceeds
``--tol`` (1e-5) or any check fails. Figures: docs/results.md (interop section).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

KERAS_FILES = (".keras", ".weights.h5", ".legacy.h5")
# Reference modules whose output the library passes through a ReLU in forward(), outside any
# module (torchvision's DenseNet ``norm5``; timm's is a BatchNormAct2d that has it).
RELU_AFTER = {"torchvision": {"features.norm5"}}
# Auxiliary heads: (jaxcnn name, torchvision attribute, torchvision module feeding it).
AUX = {
    "googlenet": [("aux1", "aux1", "inception4a"), ("aux2", "aux2", "inception4d")],
    "inception_v3": [("aux", "AuxLogits", "Mixed_6e")],
}


# ============================================================================= worker (torch)
def _randomise_torch(model, g):
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.dtype.is_floating_point:
                continue
            leaf = k.rpartition(".")[2]
            if leaf == "running_var":
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif leaf in ("running_mean", "bias", "layer_scale", "gamma") or leaf.startswith(
                "relative_position_bias_table"
            ):
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif v.ndim == 2 and not v.abs().sum():
                v.copy_(torch.randn(v.shape, generator=g) * 0.02)
            elif v.ndim == 4 and v.std() > 2 * (2 / v[0].numel()) ** 0.5:
                v.mul_((2 / v[0].numel()) ** 0.5 / v.std())  # inception_v3: std 0.1 blows up
            if k.startswith(("classifier", "heads", "head", "fc")) and leaf == "bias":
                v.zero_()


def _torch_model(spec):
    if spec["source"] == "torchvision":
        import torchvision.models as tvm

        return getattr(tvm, spec["arch"])(weights=None, **spec["arch_kwargs"])
    import timm

    return timm.create_model(spec["arch"], pretrained=False, **spec["arch_kwargs"])


def _worker_torch(spec, out):
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    model = _torch_model(spec).eval()
    g = torch.Generator().manual_seed(1)
    _randomise_torch(model, g)
    side = spec["size"]
    x = torch.randn(1, 3, side, side, generator=g)
    seen = {}
    modules = dict(model.named_modules())
    for stage, target in spec["hooks"].items():
        modules[target].register_forward_hook(
            lambda m, i, o, stage=stage: seen.__setitem__(stage, o.detach().clone().numpy())
        )
    aux_in = {}
    for jname, attr, src in spec.get("aux", []):
        modules[src].register_forward_hook(
            lambda m, i, o, jname=jname: aux_in.__setitem__(jname, o.detach().clone())
        )
    with torch.no_grad():
        y = model(x)
        outs = {f"stage:{k}": v for k, v in seen.items()}
        for jname, attr, _ in spec.get("aux", []):
            outs[f"aux_in:{jname}"] = aux_in[jname].numpy()
            outs[f"aux_out:{jname}"] = getattr(model, attr)(aux_in[jname]).numpy()
        if spec.get("photo"):  # the library's own eval transform on a real photo
            outs["photo_x"], outs["photo_logits"] = _photo(spec, model)
    sd = model.state_dict()
    save_file({k: v.contiguous().numpy() for k, v in sd.items()}, out + ".safetensors")
    np.savez(
        out + ".npz",
        x=x.numpy().transpose(0, 2, 3, 1),
        logits=y.numpy(),
        order=np.array(list(sd)),
        **outs,
    )


def _photo(spec, model):
    """skimage's chelsea through torchvision's weights.transforms() / timm's create_transform."""
    import torch
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea())
    if spec["source"] == "torchvision":
        import torchvision.models as tvm

        enum = tvm.get_model_weights(spec["arch"])
        weights = enum[spec["weights"]] if spec.get("weights") else enum.DEFAULT
        x = weights.transforms()(image)[None]
        if spec["arch"] in ("googlenet", "inception_v3"):  # transform_input of the weights
            mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
            std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
    else:
        import timm

        cfg = timm.data.resolve_data_config({}, model=model)
        x = timm.data.create_transform(**cfg)(image)[None]
    return x.numpy().transpose(0, 2, 3, 1), model(x).numpy()


def _worker_keras(spec, out):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, spec["arch"])
    model = build(weights=None, classifier_activation=None, **spec["arch_kwargs"])
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    1 + 0.1 * rng.normal(size=g.shape),
                    0.1 * rng.normal(size=b.shape),
                    0.1 * rng.normal(size=m.shape),
                    rng.uniform(0.5, 1.5, v.shape),
                ]
            )
        elif layer.name in ("predictions", "conv_preds") and len(layer.get_weights()) == 2:
            w = layer.get_weights()  # MobileNet's "predictions" is the (weightless) activation
            layer.set_weights([w[0], np.zeros_like(w[1])])
    side = spec["size"]
    x = rng.normal(size=(1, side, side, 3)).astype("float32")
    names = list(spec["hooks"].values())
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names] + [model.output])
    ys = [np.asarray(keras.ops.convert_to_numpy(t)) for t in probe(x)]
    model.save(out + ".keras")
    model.save_weights(out + ".weights.h5")
    model.save(out + ".legacy.h5")
    stages = {f"stage:{s}": ys[i] for i, s in enumerate(spec["hooks"])}
    np.savez(out + ".npz", x=x, logits=ys[-1], **stages)


def _worker_keys(specs):
    """Key lists (state_dict order) and shapes of every reference model, on the meta device."""
    import torch

    out = {}
    for spec in specs:
        if spec["source"] == "keras":
            os.environ.setdefault("KERAS_BACKEND", "torch")
            import keras

            model = getattr(keras.applications, spec["arch"])(weights=None, **spec["arch_kwargs"])
            path = os.path.join(spec["dir"], f"keys_{spec['name']}.weights.h5")
            model.save_weights(path)
            out.setdefault("keras", {})[spec["name"]] = path  # read on jaxcnn's side
            continue
        with torch.device("meta"):
            model = _torch_model(spec)
        keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        out.setdefault(spec["source"], {})[spec["name"]] = keys
    return out


def _worker_cfgs(specs):
    """Eval preprocessing of each reference's default weights."""
    import math

    out = []
    for spec in specs:
        src, arch = spec["source"], spec["arch"]
        if src == "torchvision":
            import torchvision.models as tvm

            enum = tvm.get_model_weights(arch)
            w = enum[spec["weights"]] if spec.get("weights") else enum.DEFAULT
            t = w.transforms()
            crop, resize = t.crop_size[0], t.resize_size[0]
            out.append(
                dict(
                    name=spec["name"],
                    source=src,
                    weights=w.name,
                    input_size=crop,
                    resize=resize,
                    crop_pct=round(crop / resize, 4),
                    interpolation=t.interpolation.value,
                    mean=list(t.mean),
                    std=list(t.std),
                    num_classes=len(w.meta["categories"]),
                )
            )
        elif src == "timm":
            import timm
            import torch

            with torch.device("meta"):  # only the config is read: allocate nothing
                c = timm.create_model(arch, pretrained=False).pretrained_cfg
            size = c["input_size"][1]
            out.append(
                dict(
                    name=spec["name"],
                    source=src,
                    weights=c.get("tag"),
                    input_size=size,
                    resize=math.floor(size / c["crop_pct"]),
                    crop_pct=c["crop_pct"],
                    interpolation=c["interpolation"],
                    mean=list(c["mean"]),
                    std=list(c["std"]),
                    num_classes=c.get("num_classes", 1000),
                    crop_mode=c.get("crop_mode", "center"),
                )
            )
    return out


def worker(job_path) -> int:
    with open(job_path) as f:
        job = json.load(f)
    if job["task"] == "keys":
        result = _worker_keys(job["specs"])
    elif job["task"] == "cfgs":
        result = _worker_cfgs(job["specs"])
    else:
        for spec in job["specs"]:
            out = os.path.join(job["dir"], f"{spec['source']}_{spec['name']}")
            (_worker_keras if spec["source"] == "keras" else _worker_torch)(spec, out)
            print(f"  {spec['source']} {spec['arch']}: written {out}.*", flush=True)
        result = None
    with open(job_path + ".out", "w") as f:
        json.dump(result, f)
    return 0


# ============================================================================= jaxcnn side
def _counterpart(plan, module: str):
    """The reference module holding exactly the tensors of the jaxcnn ``module``, if any."""
    keys = [j.key for j in plan.leaves if "/".join(j.module + ("",)).startswith(module + "/")]
    if not keys:
        return None
    sep = "/" if plan.layout.tensors == "hwio" else "."
    parts = [k.split(sep)[:-1] for k in keys]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        prefix.append(level[0])

    def under(p):
        return {j.key for j in plan.leaves if j.key.startswith(p + sep)}

    if not prefix or under(sep.join(prefix)) != set(keys):
        return None
    while len(prefix) > 1 and under(sep.join(prefix[:-1])) == set(keys):
        prefix = prefix[:-1]  # the outermost module holding them (a block, not its body)
    return sep.join(prefix)


def _override(name, info, plan, stage):
    """Reference modules for stages that no reference module holds exactly."""
    src, family, tree = plan.layout.source, info.family, plan.tree
    if family == "densenet":  # the last stage: after norm5 and the ReLU (see RELU_AFTER)
        last = stage == info.feature_info[-1]["name"]
        return "features.norm5" if last else f"features.denseblock{stage[len('stage') :]}"
    if family == "alexnet":
        return {"conv1": "features.1", "conv2": "features.4", "conv5": "features.11"}[stage]
    if family == "vgg":  # the ReLU after the stage's last conv / bn
        last = [j for j in plan.leaves if j.module[0] == stage][-1]
        index = int(last.key.split(".")[1])
        return f"features.{index + 1}"
    if family in ("vit", "vit_hybrid") and stage == "tokens":
        return "encoder.ln" if src == "torchvision" else "norm"
    if family == "xception" and src == "timm" and stage == "stage4":
        return "act4"
    if src == "keras" and family == "mobilenet":
        k = 1 + tree.rank(f"{stage}/{tree.children(stage)[-1]}", r"stage\d+/block\d+")
        return f"conv_pw_{k}_relu"
    if src == "keras" and family == "xception":
        return {"stage1": "add", "stage2": "add_1", "stage3": "add_10"}.get(
            stage, "block14_sepconv2_act"
        )
    return None


def stage_targets(name, info, plan) -> dict:
    """{jaxcnn feature / block: reference module name} compared by the check."""
    out = {}
    stages = [f["name"] for f in info.feature_info]
    if info.family in ("vit", "vit_hybrid"):  # one token map: compare every block too
        stages += [c for c in plan.tree.children("") if c.startswith("block")]
    for s in stages:
        target = _override(name, info, plan, s)
        if target is None and plan.layout.tensors != "hwio":
            target = _counterpart(plan, s)
            if target is None and plan.tree.children(s):  # a sequential stage: its last block
                target = _counterpart(plan, f"{s}/{plan.tree.children(s)[-1]}")
        if target is None:
            raise ValueError(f"{name}: no reference module for stage {s!r}; add an override")
        out[s] = target
    return out


def _rel(a, ref) -> float:
    import numpy as np

    return float(np.abs(a - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def _as_nhwc(ref, like):
    """A reference output in jaxcnn's layout: NCHW -> NHWC, ViT tokens -> grid (no class)."""
    import numpy as np

    ref = np.asarray(ref)
    if ref.shape == like.shape:
        return ref
    if ref.ndim == 4 and ref.transpose(0, 2, 3, 1).shape == like.shape:
        return ref.transpose(0, 2, 3, 1)
    if ref.ndim == 3 and like.ndim == 4 and ref.shape[1] == 1 + like.shape[1] * like.shape[2]:
        return ref[:, 1:].reshape(like.shape)
    if ref.ndim == 3 and like.ndim == 3 and ref.shape[1] == like.shape[1] + 1:
        return ref[:, 1:]
    raise ValueError(f"reference output {ref.shape} does not fit jaxcnn's {like.shape}")


def _specs(names, source, directory):
    from jaxcnn.interop import pretrained

    specs = []
    for name in names:
        ref = pretrained.reference(name, source)
        from jaxcnn import models

        info = models.model_info(name)
        try:
            size = pretrained.pretrained_cfg(name, source).input_size[0]
        except ValueError:  # no table yet (--cfgs)
            size = info.input_size[0]
        if info.family == "vit":
            size = info.input_size[0]
        specs.append(
            dict(
                name=name,
                source=source,
                arch=ref.arch,
                arch_kwargs=dict(ref.arch_kwargs),
                model_kwargs=dict(ref.model_kwargs),
                weights=ref.weights,
                size=size,
                dir=directory,
            )
        )
    return specs


def _run_worker(python, task, specs, directory):
    os.makedirs(directory, exist_ok=True)
    job = os.path.join(directory, f"job_{task}.json")
    with open(job, "w") as f:
        json.dump({"task": task, "specs": specs, "dir": directory}, f)
    here = os.path.abspath(__file__)
    subprocess.run([python, here, "--worker", job], check=True)
    with open(job + ".out") as f:
        return json.load(f)


def check(names, source, directory, python, tol, orders: int = 5, photo=False) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn import models
    from jaxcnn.interop import core, from_torch_state_dict, load_file, to_torch_state_dict

    specs = _specs(names, source, directory)
    for spec in specs:  # the stages to hook come from jaxcnn's side
        model = models.create_model(spec["name"], **spec["model_kwargs"])
        info = models.model_info(spec["name"])
        shape = (1, spec["size"], spec["size"], 3)
        plan = core.make_plan(model, spec["name"], shape, core.layout_named(model, source))
        spec["hooks"] = stage_targets(spec["name"], info, plan)
        if source == "torchvision" and spec["name"] in AUX:
            spec["aux"] = AUX[spec["name"]]
        spec["photo"] = photo and source != "keras"
    _run_worker(python, "run", specs, directory)
    failed = False
    for spec in specs:
        name = spec["name"]
        base = os.path.join(directory, f"{source}_{name}")
        ref = np.load(base + ".npz")
        x = ref["x"]
        model = models.create_model(name, **spec["model_kwargs"])
        paths = [base + e for e in KERAS_FILES] if source == "keras" else [base + ".safetensors"]
        sd = load_file(paths[0])
        variables = from_torch_state_dict(model, sd, input_shape=x.shape, source="auto")
        chosen_plan = core.choose_layout(model, name, x.shape, sd.keys(), "auto")
        chosen = chosen_plan.layout.source
        # timm's ResNet, DenseNet and Inception v3 have torchvision's names: either layout fits
        own = core.make_plan(model, name, x.shape, core.layout_named(model, source))
        same = chosen == source or own.keys.keys() == chosen_plan.keys.keys()
        orders_ok = True
        others = [list(ref["order"])] if "order" in ref.files else []
        for seed in range(orders):
            keys = list(sd)
            random.Random(seed).shuffle(keys)
            others.append(keys)
        for keys in others:
            v = from_torch_state_dict(model, {k: sd[k] for k in keys}, input_shape=x.shape)
            orders_ok &= _identical(v, variables)
        for p in paths[1:]:
            v = from_torch_state_dict(model, load_file(p), input_shape=x.shape)
            orders_ok &= _identical(v, variables)
        y = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x)))
        logits_rel = _rel(y, ref["logits"])
        fmodel = model.clone(features_only=True)
        fv = from_torch_state_dict(fmodel, sd, input_shape=x.shape)
        feats = jax.jit(lambda v, x: fmodel.apply(v, x))(fv, jnp.asarray(x))
        names_f = [f["name"] for f in models.model_info(name).feature_info]
        stage_rel = {}
        for s, a in zip(names_f, feats):
            r = _as_nhwc(ref[f"stage:{s}"], np.asarray(a))
            if spec["hooks"][s] in RELU_AFTER.get(source, ()):
                r = np.maximum(r, 0)
            stage_rel[s] = _rel(np.asarray(a), r)
        for s in spec["hooks"]:
            if s not in stage_rel:  # ViT blocks: intermediates of the full model
                a = _intermediate(model, variables, x, s)
                stage_rel[s] = _rel(a, _as_nhwc(ref[f"stage:{s}"], a))
        for jname, _, _ in spec.get("aux", []):
            head = _aux_head(model)
            sub = {c: v[jname] for c, v in variables.items()}
            a_in = jnp.asarray(ref[f"aux_in:{jname}"].transpose(0, 2, 3, 1))
            stage_rel[f"{jname} (head)"] = _rel(
                np.asarray(head.apply(sub, a_in)), ref[f"aux_out:{jname}"]
            )
        photo = ""
        if "photo_x" in ref.files:
            from skimage import data

            from jaxcnn.interop import pretrained

            px = pretrained.eval_transform(data.chelsea(), pretrained.pretrained_cfg(name, source))
            pdiff = float(np.abs(px - ref["photo_x"]).max())
            py = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(px)))
            top = [int(i) for i in np.argsort(-py[0])[:5]]
            rtop = [int(i) for i in np.argsort(-ref["photo_logits"][0])[:5]]
            photo = (
                f"\n  photo (skimage chelsea, {px.shape[1]}px): input max |diff| {pdiff:.1e}, "
                f"logits {_rel(py, ref['photo_logits']):.1e}, top-5 {top} "
                f"{'==' if top == rtop else '!='} reference {rtop}"
            )
            photo_ok = top == rtop and pdiff <= 1e-5
        else:
            photo_ok = True
        back = to_torch_state_dict(model, variables, sd, input_shape=x.shape)
        exact = list(back) == list(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
        fresh = to_torch_state_dict(model, variables, input_shape=x.shape, source=source)
        exact &= set(fresh) == set(sd) and all(np.array_equal(fresh[k], sd[k]) for k in sd)
        worst = max(stage_rel.items(), key=lambda kv: kv[1])
        ok = same and orders_ok and exact and photo_ok and logits_rel <= tol and worst[1] <= tol
        failed |= not ok
        stages = ", ".join(f"{s} {r:.1e}" for s, r in stage_rel.items())
        print(
            f"{name} ({source} {spec['arch']}, {x.shape[1]}px): logits {logits_rel:.1e} "
            f"(max |logit| {np.abs(ref['logits']).max():.2g}); worst stage {worst[0]} "
            f"{worst[1]:.1e}; layout detected {chosen}; orders/files identical {orders_ok}; "
            f"round trip exact {exact}{'' if ok else '  <-- FAIL'}\n  stages: {stages}\n"
            f"  compared with: {', '.join(f'{s}={t}' for s, t in spec['hooks'].items())}{photo}",
            flush=True,
        )
    return 1 if failed else 0


def _identical(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return len(la) == len(lb) and all(
        pa == pb and np.array_equal(np.asarray(x), np.asarray(y))
        for (pa, x), (pb, y) in zip(la, lb)
    )


def _intermediate(model, variables, x, module):
    import jax.numpy as jnp
    import numpy as np

    _, state = model.apply(
        variables,
        jnp.asarray(x),
        capture_intermediates=lambda mdl, method: mdl.path == (module,) and method == "__call__",
        mutable=["intermediates"],
    )
    return np.asarray(state["intermediates"][module]["__call__"][0])


def _aux_head(model):
    import importlib

    family = importlib.import_module(type(model).__module__)
    return family.InceptionAux(model.num_classes)


def write_keys(python, directory, out_path) -> int:
    """tests/data/reference_keys.json.gz: every reference's keys and shapes, in its order."""
    import gzip

    from jaxcnn.interop import load_file, pretrained

    specs = []
    for source in ("torchvision", "timm", "keras"):
        specs += _specs(pretrained.names(source), source, directory)
    result = _run_worker(python, "keys", specs, directory)
    for name, path in result.pop("keras", {}).items():
        result.setdefault("keras", {})[name] = [
            [k, list(v.shape)] for k, v in load_file(path).items()
        ]
    with gzip.open(out_path, "wt") as f:
        json.dump(result, f, separators=(",", ":"), sort_keys=True)
    n = sum(len(v) for v in result.values())
    print(f"{n} reference key lists -> {out_path}")
    return 0


def print_cfgs(python, directory) -> int:
    from jaxcnn.interop import pretrained

    specs = []
    for source in ("torchvision", "timm"):
        specs += _specs(pretrained.names(source), source, directory)
    norms = {
        (pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD): "IN",
        (pretrained.HALF,) * 2: "HALF_NORM",
    }
    for c in _run_worker(python, "cfgs", specs, directory):
        mean_std = (tuple(round(m, 4) for m in c["mean"]), tuple(round(m, 4) for m in c["std"]))
        norm = norms.get(mean_std, repr(mean_std))
        tail = ""
        if c.get("crop_mode", "center") != "center":
            tail = f", {c['num_classes']}, {c['crop_mode']!r}"
        elif c["num_classes"] != 1000:
            tail = f", {c['num_classes']}"
        print(
            f"    ({c['name']!r}, {c['source']!r}, {c['weights']!r}, {c['input_size']}, "
            f"{c['resize']}, {c['crop_pct']}, {c['interpolation']!r}, {norm}{tail}),"
        )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="jaxcnn model names")
    p.add_argument("--source", default="torchvision", choices=["torchvision", "timm", "keras"])
    p.add_argument("--all", action="store_true", help="every model with a reference there")
    p.add_argument("--dir", default=os.path.join("/tmp", "jaxcnn_verify"), help="scratch files")
    p.add_argument("--torch-python", default=os.environ.get("JAXCNN_TORCH_PYTHON", "python3"))
    p.add_argument("--tol", type=float, default=1e-5, help="largest relative error allowed")
    p.add_argument(
        "--photo",
        action="store_true",
        help="also compare eval preprocessing and top-5 on a real photo (skimage chelsea)",
    )
    p.add_argument("--keys", action="store_true", help="write tests/data/reference_keys.json.gz")
    p.add_argument("--cfgs", action="store_true", help="print the pretrained-config table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.keys:
        out = os.path.join(
            os.path.dirname(__file__), "..", "tests", "data", "reference_keys.json.gz"
        )
        return write_keys(args.torch_python, args.dir, os.path.normpath(out))
    if args.cfgs:
        return print_cfgs(args.torch_python, args.dir)
    from jaxcnn.interop import pretrained

    names = pretrained.names(args.source) if args.all else args.models
    if not names:
        p.error("name models or pass --all")
    return check(names, args.source, args.dir, args.torch_python, args.tol, photo=args.photo)


if __name__ == "__main__":
    sys.exit(main())
