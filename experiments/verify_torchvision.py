"""Numerical check of jaxcnn models against torchvision: same weights in, same logits out.

Two steps, because torch is not a dependency of jaxcnn (any Python with torchvision does step 1):

    /work/tvenv/bin/python experiments/verify_torchvision.py --dump mobilenet_v3_small swin_t
    python -m experiments.verify_torchvision mobilenet_v3_small swin_t

``--dump`` builds each torchvision model with random weights, also randomising what
initialisation leaves trivial (BatchNorm running statistics, biases, layer scales, relative
position bias tables, zero-initialised heads; head biases are zeroed so that the logits depend
on the features; conv kernels far above He scale are scaled down to it), runs a random 224x224
image (299 for inception_v3) and writes ``state_dict``, input and logits to ``DIR/NAME.npz``
(``--dir``, default ``/tmp/jaxcnn_tv``); for GoogLeNet and Inception v3 (built with their
auxiliary heads) also each aux head's input and output in eval mode. The check converts the
``state_dict`` with :func:`jaxcnn.interop.from_torch_state_dict` (no name table: see
:mod:`jaxcnn.interop.torch`), prints the largest absolute difference of the logits (and of the
aux heads' outputs, run alone on torch's input), and checks that
:func:`jaxcnn.interop.to_torch_state_dict` gives the ``state_dict`` back exactly. float32
agreement is ~1e-6.

Checked (random weights; max |diff| of logits, largest |logit| in brackets): resnet18 7.2e-6
(6.9), mobilenet_v2 1.8e-7 (0.22), mobilenet_v3_small 1.9e-8 (0.015), mobilenet_v3_large
2.6e-8 (0.023), efficientnet_b0 2.2e-7 (0.20), convnext_tiny 2.0e-6 (2.0), swin_t 1.6e-6 (1.5),
vit_b_16 3.8e-6 (2.0), vgg11 1.5e-6 (0.42), alexnet 7.3e-8 (0.036), densenet121 5.5e-6 (6.0),
googlenet 8.2e-8 (0.12; aux1/aux2 7.5e-8/6.0e-8), inception_v3 4.3e-3 (3.3e3: random BatchNorm
statistics let activations grow; 1.3e-6 relative; aux 2.0e-5 of 21). The round trip is exact
for all of them.
"""

from __future__ import annotations

import argparse
import os
import sys

# torchvision constructor options, jaxcnn create_model options, input side.
TV_KWARGS = {
    "googlenet": {"aux_logits": True, "transform_input": False, "init_weights": True},
    "inception_v3": {"aux_logits": True, "transform_input": False, "init_weights": True},
}
JAX_KWARGS = {"googlenet": {"aux_logits": True}}
SIZE = {"inception_v3": 299}
# Auxiliary heads: (jaxcnn name, torchvision attribute, torchvision module feeding it).
AUX = {
    "googlenet": [("aux1", "aux1", "inception4a"), ("aux2", "aux2", "inception4d")],
    "inception_v3": [("aux", "AuxLogits", "Mixed_6e")],
}


def dump(names, out_dir):
    import numpy as np
    import torch
    import torchvision.models as tvm

    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        model = getattr(tvm, name)(weights=None, **TV_KWARGS.get(name, {})).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if not v.dtype.is_floating_point:
                    continue
                if k.endswith("running_var"):
                    v.copy_(torch.rand(v.shape, generator=g) + 0.5)
                elif k.endswith(
                    ("running_mean", "bias", "layer_scale", "relative_position_bias_table")
                ):
                    v.copy_(torch.randn(v.shape, generator=g) * 0.1)
                elif v.ndim == 2 and not v.abs().sum():
                    v.copy_(torch.randn(v.shape, generator=g) * 0.02)
                elif v.ndim == 4 and v.std() > 2 * (2 / v[0].numel()) ** 0.5:
                    v.mul_((2 / v[0].numel()) ** 0.5 / v.std())  # inception_v3: std 0.1 blows up
                if k.startswith(("classifier", "heads", "head", "fc")) and k.endswith("bias"):
                    v.zero_()
            side = SIZE.get(name, 224)
            x = torch.randn(1, 3, side, side, generator=g)
            seen = {}
            for _, _, src in AUX.get(name, []):
                getattr(model, src).register_forward_hook(
                    lambda m, i, o, src=src: seen.__setitem__(src, o)
                )
            y = model(x)
            for jname, attr, src in AUX.get(name, []):
                seen[f"__aux_{jname}_in"] = seen[src].numpy()
                seen[f"__aux_{jname}_out"] = getattr(model, attr)(seen[src]).numpy()
        sd = {f"{i:04d}|{k}": v.numpy() for i, (k, v) in enumerate(model.state_dict().items())}
        aux = {k: v for k, v in seen.items() if k.startswith("__aux")}
        path = os.path.join(out_dir, f"{name}.npz")
        np.savez(path, __x=x.numpy(), __y=y.numpy(), **aux, **sd)
        print(f"{name}: {len(sd)} tensors -> {path}")


def load_state_dict(npz) -> dict:
    """The dumped ``state_dict`` in torch's order (the ``NNNN|`` prefixes keep it)."""
    return {k.split("|", 1)[1]: npz[k] for k in sorted(k for k in npz.files if "|" in k)}


def check(names, out_dir) -> int:
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn import models
    from jaxcnn.interop import from_torch_state_dict, to_torch_state_dict

    worst, exact = 0.0, True
    for name in names:
        npz = np.load(os.path.join(out_dir, f"{name}.npz"))
        x = npz["__x"].transpose(0, 2, 3, 1)
        model = models.create_model(name, **JAX_KWARGS.get(name, {}))
        sd = load_state_dict(npz)
        variables = from_torch_state_dict(model, sd, input_shape=x.shape)
        y = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x)))
        ref = npz["__y"]
        diff = float(np.abs(y - ref).max())
        worst = max(worst, diff / max(float(np.abs(ref).max()), 1e-12))
        back = to_torch_state_dict(model, variables, sd, input_shape=x.shape)
        same = list(back) == list(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
        exact &= same
        print(
            f"{name}: max |diff| {diff:.2e} (max |logit| {np.abs(ref).max():.2e}), "
            f"same argmax: {int(y.argmax()) == int(ref.argmax())}, "
            f"to_torch_state_dict exact: {same}",
            flush=True,
        )
        family = importlib.import_module(f"jaxcnn.models.{models.model_info(name).family}")
        for jname, _, _ in AUX.get(name, []):
            head = family.InceptionAux(model.num_classes)
            sub = {c: v[jname] for c, v in variables.items()}
            a_in = jnp.asarray(npz[f"__aux_{jname}_in"].transpose(0, 2, 3, 1))
            a = np.asarray(head.apply(sub, a_in))
            ref = npz[f"__aux_{jname}_out"]
            diff = float(np.abs(a - ref).max())
            worst = max(worst, diff / max(float(np.abs(ref).max()), 1e-12))
            print(f"  {jname}: max |diff| {diff:.2e} (max |logit| {np.abs(ref).max():.2e})")
    return 0 if worst < 1e-4 and exact else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="names registered in jaxcnn and in torchvision")
    p.add_argument("--dump", action="store_true", help="step 1: run torchvision, save weights")
    p.add_argument("--dir", default="/tmp/jaxcnn_tv", help="where the .npz files go")
    args = p.parse_args(argv)
    if args.dump:
        dump(args.models, args.dir)
        return 0
    return check(args.models, args.dir)


if __name__ == "__main__":
    sys.exit(main())
