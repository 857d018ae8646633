"""create_model(pretrained=...), files, Keras readers, preprocessing, the convert CLI and
load_variables (what a training run's init_from calls). No torch, no Keras: state dicts are
drawn from the reference key lists in tests/data (see tests/test_interop.py)."""

import json
import shutil

import chex
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from interop_data import REFERENCE, identical, random_state_dict

from jaxcnn import convert, models
from jaxcnn.interop import (
    ConversionError,
    create_model,
    eval_transform,
    from_torch_state_dict,
    load_file,
    load_variables,
    predict,
    pretrained_cfg,
    read_keras,
    save_file,
    to_torch_state_dict,
)
from jaxcnn.interop.files import META_FILE


@pytest.fixture(scope="module")
def r18():
    sd = random_state_dict("torchvision", "resnet18")
    return sd, from_torch_state_dict("resnet18", sd)


def _body(v):
    return {k: t for k, t in v["params"].items() if k != "head"}


def test_create_model_pretrained_unpacks_as_model_and_variables(r18, tmp_path):
    sd, ref = r18
    net = create_model("resnet18", pretrained=sd)
    model, variables = net
    assert isinstance(model, type(models.create_model("resnet18")))
    identical(variables, ref)
    assert net.source == "torchvision" and net.fresh == () and net.adapted == ()
    assert net.cfg.weights == "IMAGENET1K_V1" and net.cfg.resize == 256
    path = save_file(sd, tmp_path / "r18.safetensors")
    identical(create_model("resnet18", pretrained=path).variables, ref)
    np.savez(tmp_path / "r18.npz", **sd)
    identical(create_model("resnet18", pretrained=tmp_path / "r18.npz").variables, ref)


def test_create_model_new_head_for_other_num_classes(r18):
    sd, ref = r18
    net = create_model("resnet18", pretrained=sd, num_classes=10)
    assert net.model.num_classes == 10
    assert net.variables["params"]["head"]["kernel"].shape == (512, 10)
    assert net.fresh == ("params/head/kernel", "params/head/bias")
    identical(_body(net.variables), _body(ref))
    assert net.model_kwargs["num_classes"] == 10


def test_create_model_adapts_the_first_conv(r18):
    """timm's adapt_input_conv: 1 channel sums the RGB filters; 5 repeat them, times 3/5."""
    sd, ref = r18
    rgb = np.asarray(ref["params"]["stem"]["conv"]["kernel"])
    gray = create_model("resnet18", pretrained=sd, in_channels=1)
    assert gray.model.in_channels == 1 and gray.adapted == ("params/stem/conv/kernel",)
    k1 = np.asarray(gray.variables["params"]["stem"]["conv"]["kernel"])
    np.testing.assert_allclose(k1, rgb.sum(axis=2, keepdims=True), rtol=1e-6)
    y = gray.model.apply(gray.variables, jnp.ones((1, 32, 32, 1)))
    assert y.shape == (1, 1000)
    five = create_model("resnet18", pretrained=sd, in_channels=5, num_classes=3)
    k5 = np.asarray(five.variables["params"]["stem"]["conv"]["kernel"])
    np.testing.assert_allclose(k5, np.concatenate([rgb, rgb[:, :, :2]], 2) * 3 / 5, rtol=1e-6)
    identical(five.variables["params"]["stage4"], ref["params"]["stage4"])


def test_create_model_pretrained_sets_the_options_the_weights_need():
    sd = random_state_dict("timm", "mobilenet_v3_small")
    net = create_model("mobilenet_v3_small", pretrained=sd)
    assert net.source == "timm" and net.model.bn_eps == 1e-5
    assert net.model_kwargs["bn_eps"] == 1e-5
    assert net.cfg.weights == "lamb_in1k" and net.cfg.interpolation == "bicubic"


def test_models_create_model_points_to_interop(r18):
    with pytest.raises(TypeError, match=r"jaxcnn.interop.create_model\(name, pretrained=\.\.\."):
        models.create_model("resnet18", pretrained=r18[0])


def test_create_model_pretrained_refuses_a_misfit(r18):
    sd, _ = r18
    bad = {k: v for k, v in sd.items() if k != "layer2.1.bn2.weight"}
    with pytest.raises(ConversionError, match=r"resnet18: missing: 'layer2.1.bn2.weight'"):
        create_model("resnet18", pretrained=bad, num_classes=10)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        create_model("resnet18", pretrained=sd, num_classes=0)
    with pytest.raises(TypeError, match="pretrained must be a path or a mapping"):
        create_model("resnet18", pretrained=3)


def test_pretrained_cfgs():
    c = pretrained_cfg("resnet50")
    assert (c.source, c.weights, c.resize, c.input_size, c.interpolation) == (
        "torchvision",
        "IMAGENET1K_V2",
        232,
        (224, 224, 3),
        "bilinear",
    )
    t = pretrained_cfg("resnet50", "timm")
    assert (t.weights, t.resize, t.crop_pct, t.interpolation) == ("a1_in1k", 235, 0.95, "bicubic")
    x = pretrained_cfg("xception")
    assert x.source == "keras" and x.mean == (0.5, 0.5, 0.5) and x.input_size[0] == 299
    g = pretrained_cfg("googlenet")
    assert g.mean == (0.5, 0.5, 0.5) and "transform_input" in g.note
    assert pretrained_cfg("efficientnet_b5", "timm").crop_mode == "squash"
    with pytest.raises(ValueError, match="no keras weights config"):
        pretrained_cfg("resnet50", "keras")


def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre():
    cfg = pretrained_cfg("resnet18")  # resize 256, crop 224, bilinear, ImageNet mean/std
    img = np.zeros((100, 300, 3), np.uint8)  # h=100, w=300 -> 256 x 768, crop the middle
    img[:, 150:] = 255
    x = eval_transform(img, cfg)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    mean, std = np.asarray(cfg.mean), np.asarray(cfg.std)
    np.testing.assert_allclose(
        x[0, :, :100], np.broadcast_to(-mean / std, (224, 100, 3)), rtol=1e-5
    )
    np.testing.assert_allclose(
        x[0, :, 124:], np.broadcast_to((1 - mean) / std, (224, 100, 3)), rtol=1e-5
    )
    const = eval_transform(np.full((40, 30, 3), 128, np.uint8), cfg)
    np.testing.assert_allclose(const[0, 5, 7], (128 / 255 - mean) / std, rtol=1e-5)


def test_predict_gives_top_k(r18):
    sd, _ = r18
    net = create_model("resnet18", pretrained=sd)
    from skimage import data

    top = net.predict(data.chelsea(), top_k=5)
    assert len(top) == 5 and all(0 <= i < 1000 for i, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert top == predict(net.model, net.variables, data.chelsea(), net.cfg)


# -- files ------------------------------------------------------------------------------------
def test_files_round_trip_and_checkpoint_dicts(tmp_path, r18):
    sd, _ = r18
    for ext in (".safetensors", ".npz"):
        back = load_file(save_file(sd, tmp_path / f"w{ext}"))
        assert set(back) == set(sd)
        for k in sd:
            np.testing.assert_array_equal(back[k], sd[k])
    with pytest.raises(ValueError, match="unknown weights format '.onnx'"):
        (tmp_path / "w.onnx").write_bytes(b"")
        load_file(tmp_path / "w.onnx")
    from jaxcnn.interop.files import _unwrap

    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert list(_unwrap(wrapped)) == list(sd)


def test_safetensors_bfloat16_is_read_as_float32(tmp_path):
    import ml_dtypes

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}
    h = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(h).to_bytes(8, "little") + h + a.astype(ml_dtypes.bfloat16).tobytes())
    got = load_file(path)
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], a)


def _keras_v3(path, tensors):
    """A Keras 3 ``.weights.h5`` from ``{"<class>[_k]/<var>": array}`` (vars in Keras order)."""
    from jaxcnn.interop.keras import _VARS

    with h5py.File(path, "w") as f:
        f.create_group("vars")
        layers = {}
        for k, v in tensors.items():
            layer, var = k.split("/")
            layers.setdefault(layer, {})[var] = v
        for layer, vars_ in layers.items():
            g = f.create_group(f"layers/{layer}/vars")
            names = [n for n in _VARS[layer.rstrip("_0123456789")] if n in vars_]
            for i, n in enumerate(names):
                g.create_dataset(str(i), data=vars_[n])


def _keras_legacy(path, tensors):
    """A legacy ``.h5`` (Keras 2 ``save_weights``): layers by their own names, ``name:0``."""
    import re

    def ordinal(layer):  # model order within a class: conv2d, conv2d_1, conv2d_2, ...
        m = re.fullmatch(r"(.+?)(?:_(\d+))?", layer)
        return m[1], int(m[2] or 0)

    with h5py.File(path, "w") as f:
        layers = {}
        for k in sorted(tensors, key=lambda k: ordinal(k.split("/")[0])):
            layer, var = k.split("/")
            layers.setdefault(layer, {})[var] = tensors[k]
        names = [f"my_{layer}" for layer in layers]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for (layer, vars_), name in zip(layers.items(), names):
            g = f.create_group(name)
            wn = [f"{name}/{var}:0" for var in vars_]
            g.attrs["weight_names"] = np.array([w.encode() for w in wn])
            for w, v in zip(wn, vars_.values()):
                g.create_dataset(w, data=v)


@pytest.mark.parametrize("name", ["mobilenet_v1_025", "xception"])
def test_keras_files_all_read_the_same(name, tmp_path):
    """A Keras 3 .weights.h5, the same zipped as .keras, and a legacy .h5 (layers under their
    own names) read into the same names and convert to the same variables."""
    import zipfile

    sd = random_state_dict("keras", name)
    _keras_v3(tmp_path / "w.weights.h5", sd)
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.write(tmp_path / "w.weights.h5", "model.weights.h5")
        z.writestr("config.json", "{}")
    _keras_legacy(tmp_path / "w.h5", sd)
    reads = [read_keras(tmp_path / p) for p in ("w.weights.h5", "m.keras", "w.h5")]
    for got in reads:
        assert set(got) == set(sd)
        for k in sd:
            np.testing.assert_array_equal(got[k], sd[k])
    net = create_model(name, pretrained=tmp_path / "m.keras")
    assert net.source == "keras" and net.cfg.source == "keras"
    identical(net.variables, from_torch_state_dict(name, reads[2]))
    # HWIO kernels and (h, w, C, 1) depthwise kernels arrive as they are (reshaped).
    if name == "xception":
        k = sd["separable_conv2d/depthwise_kernel"]
        got = net.variables["params"]["stage1"]["block0"]["sepconv1"]["depthwise"]["kernel"]
        np.testing.assert_array_equal(np.asarray(got), k.reshape(3, 3, 1, -1))


# -- convert CLI and load_variables ----------------------------------------------------------------
def test_convert_cli_writes_a_checkpoint_load_variables_reads(tmp_path, r18, capsys):
    sd, ref = r18
    src = save_file(sd, tmp_path / "r18.safetensors")
    out = tmp_path / "ckpt"
    assert convert.main([src, str(out), "--model", "resnet18", "--num-classes", "10"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert len(report) <= 12 and report[0].startswith("jaxcnn.convert: resnet18 from ")
    assert any(
        line.startswith("  new:") and "params/head/kernel (512, 10)" in line for line in report
    )
    meta = json.loads((out / META_FILE).read_text())
    assert meta["model"] == "resnet18" and meta["model_kwargs"]["num_classes"] == 10
    v = load_variables(out, "resnet18")
    assert v["params"]["head"]["kernel"].shape == (512, 10)
    identical(_body(v), _body(ref))
    net = create_model("resnet18", pretrained=out)
    assert net.model.num_classes == 10 and net.source == "torchvision"
    identical(net.variables, v)
    module = models.create_model("resnet18", num_classes=10)
    identical(load_variables(out, module), v)
    with pytest.raises(ConversionError, match="The classifier head has 1000 classes"):
        load_variables(out, "resnet18", num_classes=1000)
    fresh = load_variables(out, "resnet18", num_classes=7, strict=False)
    assert fresh["params"]["head"]["kernel"].shape == (512, 7)


def test_convert_cli_back_to_torch_names(tmp_path, r18, capsys):
    sd, _ = r18
    src = save_file(sd, tmp_path / "r18.safetensors")
    assert convert.main([src, str(tmp_path / "ckpt"), "--model", "resnet18"]) == 0
    back = tmp_path / "back.safetensors"
    assert (
        convert.main(
            [
                str(tmp_path / "ckpt"),
                str(back),
                "--model",
                "resnet18",
                "--to",
                "torch",
                "--reference",
                src,
            ]
        )
        == 0
    )
    got = load_file(back)
    assert set(got) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    err = convert.main([src, str(tmp_path / "ckpt"), "--model", "resnet18"])
    assert err == 2 and "exists" in capsys.readouterr().err


def test_load_variables_checks_the_options_recorded(tmp_path):
    sd = random_state_dict("timm", "mobilenet_v3_small")
    src = save_file(sd, tmp_path / "m.safetensors")
    out = tmp_path / "ckpt"
    assert convert.main([src, str(out), "--model", "mobilenet_v3_small"]) == 0
    v = load_variables(out, "mobilenet_v3_small")  # built with bn_eps=1e-5 from the meta
    identical(v, from_torch_state_dict("mobilenet_v3_small", sd))
    with pytest.raises(ValueError, match="converted for a model with bn_eps=1e-05"):
        load_variables(out, models.create_model("mobilenet_v3_small"))
    ok = load_variables(out, models.create_model("mobilenet_v3_small", bn_eps=1e-5))
    identical(ok, v)


def test_every_fixture_model_is_registered():
    for src in REFERENCE:
        for name in REFERENCE[src]:
            assert name in models.list_models()


def test_jit_apply_of_loaded_variables(r18):
    sd, _ = r18
    model, variables = create_model("resnet18", pretrained=sd, num_classes=4)
    y = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.zeros((2, 32, 32, 3)))
    assert y.shape == (2, 4)


def test_convert_cli_back_to_a_library_layout_without_reference(tmp_path):
    """``--to torch`` with no reference: the checkpoint's source names the keys (timm's here),
    the shapes are the library's own, the values the converted ones."""
    sd = random_state_dict("timm", "mobilenet_v3_small")
    src = save_file(sd, tmp_path / "m.safetensors")
    assert convert.main([src, str(tmp_path / "ckpt"), "--model", "mobilenet_v3_small"]) == 0
    back = tmp_path / "back.npz"
    args = [str(tmp_path / "ckpt"), str(back), "--model", "mobilenet_v3_small", "--to", "torch"]
    assert convert.main(args) == 0
    got = load_file(back)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in sd.items()}
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(got[k], sd[k], err_msg=k)


def test_python_dash_m_jaxcnn_convert(tmp_path):
    """The module runs as ``python -m jaxcnn.convert``; a misfit exits 2 naming the tensor."""
    import subprocess
    import sys

    sd = random_state_dict("keras", "mobilenet_v1_025")
    src = save_file(sd, tmp_path / "m.safetensors")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "jaxcnn.convert", *a], capture_output=True, text=True
    )
    ok = run(src, str(tmp_path / "ckpt"), "--model", "mobilenet_v1_025", "--num-classes", "5")
    assert ok.returncode == 0, ok.stderr
    assert "  new:     params/head/kernel (" in ok.stdout  # --num-classes 5: a new head
    assert json.loads((tmp_path / "ckpt" / META_FILE).read_text())["source"] == "keras"
    bad = save_file({k: v for k, v in sd.items() if k != "conv2d_3/kernel"}, tmp_path / "b.npz")
    err = run(bad, str(tmp_path / "ckpt2"), "--model", "mobilenet_v1_025")
    assert err.returncode == 2
    assert err.stderr.startswith("jaxcnn.convert: mobilenet_v1_025: missing: 'conv2d_3/kernel'")


def test_training_starts_from_a_converted_checkpoint(tmp_path):
    """``experiments.train --config.init_from=DIR`` (the Trainer's init_from): the body starts
    from the converted weights, the 10-class head of digits is new (the file's has 3)."""
    from jaxcnn.tasks import Classification
    from jaxcnn.train.trainer import Trainer

    model = models.create_model("lenet5_modern", num_classes=3)
    v = model.init(jax.random.key(7), jnp.zeros((1, 28, 28, 1)))
    sd = to_torch_state_dict(model, v, input_shape=(28, 28, 1))
    src = save_file(sd, tmp_path / "lenet.safetensors")
    ckpt = tmp_path / "ckpt"
    assert convert.main([src, str(ckpt), "--model", "lenet5_modern"]) == 0
    cfg = dict(
        model="lenet5_modern",
        dataset="digits",
        num_train=64,
        validation_split=32,
        batch_size=32,
        eval_batch_size=64,
        epochs=1,
        optimizer="sgd",
        learning_rate=1e-9,  # one step that moves nothing measurable
        progress=False,
    )
    for init_from in (ckpt, src):  # a converted checkpoint, or the weights file itself
        res = Trainer(Classification(), {**cfg, "init_from": str(init_from)}, tmp_path / "r")
        out = res.run(stop_at_step=1)
        params = jax.device_get(out["state"].params)
        assert params["head"]["kernel"].shape[-1] == 10
        for k in v["params"]:
            if k != "head":
                chex.assert_trees_all_close(params[k], v["params"][k], atol=1e-6)
        shutil.rmtree(tmp_path / "r")
    bad = save_file({k: a for k, a in sd.items() if k != "c3.bias"}, tmp_path / "bad.npz")
    with pytest.raises(ConversionError, match=r"LeNet5: missing: 'c3.bias' for params/c3/bias"):
        Trainer(Classification(), {**cfg, "init_from": bad}, tmp_path / "b").run()
