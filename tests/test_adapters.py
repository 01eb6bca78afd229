"""SegmentationAdapter: output kinds, activations, slices, sliding windows, MONAI nets, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks import nets
from torch import nn

from medseg_xai.adapters import SegmentationAdapter


class Tiny(nn.Module):
    """Two convolutions; returns the logits in the structure asked for."""

    def __init__(self, dims: int = 3, k: int = 2, kind: str = "tensor") -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.body = conv(1, 4, 3, padding=1)
        self.head = conv(4, k, 1)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        y = self.head(torch.relu(self.body(x)))
        if self.kind == "dict":
            return {"aux": y * 0, "out": y}
        if self.kind == "tuple":
            return (y, y[..., ::2, ::2, ::2] if y.ndim == 5 else y[..., ::2, ::2])
        return y


class Plain2d(nn.Module):
    """Scriptable: one forward path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def image3d() -> np.ndarray:
    return np.random.default_rng(0).random((1, 8, 12, 10)).astype(np.float32)


def test_numpy_and_tensor_inputs_agree_and_numpy_returns_cpu(image3d):
    torch.manual_seed(0)
    model = Tiny()
    ad = SegmentationAdapter(model)
    a = ad.logits(image3d)
    b = ad.logits(torch.from_numpy(image3d)[None])
    assert a.shape == (1, 2, 8, 12, 10) and a.device.type == "cpu"
    assert not a.requires_grad  # numpy inputs run without a graph
    torch.testing.assert_close(a, b.detach())
    with torch.no_grad():
        torch.testing.assert_close(a, model(torch.from_numpy(image3d)[None]))
    # (*spatial) gets C=1
    torch.testing.assert_close(ad.logits(image3d[0]), a)


@pytest.mark.parametrize("kind,output", [("dict", "out"), ("tuple", None), ("tuple", 0)])
def test_dict_and_tuple_outputs_select_the_full_resolution_map(image3d, kind, output):
    torch.manual_seed(0)
    plain = Tiny()
    wrapped = Tiny(kind=kind)
    wrapped.load_state_dict(plain.state_dict())
    expected = SegmentationAdapter(plain).logits(image3d)
    got = SegmentationAdapter(wrapped, output=output).logits(image3d)
    torch.testing.assert_close(got, expected)


def test_callable_output_and_output_errors(image3d):
    torch.manual_seed(0)
    model = Tiny(kind="dict")
    got = SegmentationAdapter(model, output=lambda d: d["out"] + 1).logits(image3d)
    ref = SegmentationAdapter(model, output="out").logits(image3d)
    torch.testing.assert_close(got, ref + 1)
    with pytest.raises(ValueError, match="output=<key>"):
        SegmentationAdapter(model).logits(image3d)
    with pytest.raises(ValueError, match="'nope'"):
        SegmentationAdapter(model, output="nope").logits(image3d)


def test_activations_and_predict_rules(image3d):
    torch.manual_seed(0)
    soft = SegmentationAdapter(Tiny(k=3))
    p = soft.probabilities(image3d)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 8, 12, 10))
    assert torch.equal(soft.predict(image3d), p.argmax(1))

    one = Tiny(k=1)
    sig = SegmentationAdapter(one, activation="sigmoid")
    ps = sig.probabilities(image3d)
    torch.testing.assert_close(ps, torch.sigmoid(sig.logits(image3d)))
    assert torch.equal(sig.predict(image3d), (ps[:, 0] > 0.5).long())

    multi = SegmentationAdapter(Tiny(k=3), activation="sigmoid")
    pm = multi.probabilities(image3d)
    best, idx = pm.max(1)
    assert torch.equal(multi.predict(image3d), torch.where(best > 0.5, idx + 1, 0))

    none = SegmentationAdapter(Tiny(k=2), activation="none")
    torch.testing.assert_close(none.probabilities(image3d), none.logits(image3d))
    fg = soft.foreground_probability(image3d, 2)
    torch.testing.assert_close(fg, p[:, 2])
    with pytest.raises(ValueError, match="class_index"):
        soft.foreground_probability(image3d, 3)


def test_bad_arguments_name_themselves(image3d):
    with pytest.raises(ValueError, match="activation"):
        SegmentationAdapter(Tiny(), activation="relu")
    with pytest.raises(ValueError, match="spatial_dims"):
        SegmentationAdapter(Tiny(), spatial_dims=4)
    with pytest.raises(ValueError, match="slice_axis"):
        SegmentationAdapter(Tiny(dims=2), spatial_dims=2, slice_axis=0)
    with pytest.raises(ValueError, match="model"):
        SegmentationAdapter("not a model")
    with pytest.raises(ValueError, match=r"x: expected a numpy image"):
        SegmentationAdapter(Tiny()).logits(np.zeros((1, 1, 4, 4, 4, 4)))
    with pytest.raises(ValueError, match="roi_size"):
        SegmentationAdapter(Tiny(), sliding_window={"overlap": 0.5})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_axis_equals_a_manual_slice_loop(image3d, axis):
    torch.manual_seed(0)
    model2d = Tiny(dims=2)
    ad = SegmentationAdapter(model2d, spatial_dims=3, slice_axis=axis)
    got = ad.logits(image3d)
    vol = torch.from_numpy(image3d)
    with torch.no_grad():
        slices = [model2d(vol.select(axis + 1, i)[None]) for i in range(vol.shape[axis + 1])]
    expected = torch.stack(slices, dim=axis + 2)
    torch.testing.assert_close(got, expected)


def test_sliding_window_matches_monai_and_keeps_gradients(image3d):
    torch.manual_seed(0)
    model = Tiny()
    ad = SegmentationAdapter(model, sliding_window={"roi_size": (4, 8, 8), "overlap": 0.5})
    x = torch.from_numpy(image3d)[None]
    with torch.no_grad():
        expected = sliding_window_inference(x, (4, 8, 8), 1, model, overlap=0.5)
    torch.testing.assert_close(ad.logits(image3d), torch.as_tensor(expected))
    xg = x.clone().requires_grad_(True)
    ad.logits(xg)[:, 1].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_model_state_restored_also_after_an_exception(image3d):
    model = Tiny()
    model.train()
    model.body.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ad = SegmentationAdapter(model)
    ad.predict(image3d)
    with pytest.raises(RuntimeError, match="boom"), ad.frozen():
        assert not model.training and not model.head.weight.requires_grad
        raise RuntimeError("boom")
    assert model.training and model.head.training
    assert not model.body.weight.requires_grad and model.head.weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    ad.layers((1, 8, 12, 10))
    assert hook_count(model) == 0


def test_fingerprint_tracks_parameters():
    torch.manual_seed(0)
    model = Tiny()
    ad = SegmentationAdapter(model)
    fp = ad.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert SegmentationAdapter(model).fingerprint == fp
    with torch.no_grad():
        model.head.bias[0] += 1e-3
    assert ad.fingerprint != fp


def test_layers_lists_convolutions_with_shapes_and_default_is_before_the_head():
    torch.manual_seed(0)
    model = nets.UNet(3, 1, 2, (4, 8, 16), (2, 2))
    ad = SegmentationAdapter(model)
    df = ad.layers((1, 16, 16, 16))
    assert list(df.columns) == ["name", "type", "output_shape"]
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.modules.conv._ConvNd) for n in df["name"])
    # the head is the last convolution and outputs the 2 classes at full resolution
    assert df["output_shape"].iloc[-1] == (1, 2, 16, 16, 16)
    default = ad.default_layer((1, 16, 16, 16))
    # The default is the last wide decoder convolution or a block enclosing it...
    convs = [n for n in df["name"] if n == default or n.startswith(default + ".")]
    assert convs and default != df["name"].iloc[-1]
    row = df[df["name"] == convs[-1]].iloc[0]
    assert row["output_shape"][1] > 2
    later = df.iloc[df.index[df["name"] == convs[-1]][0] + 1 :]
    assert (later["output_shape"].map(lambda s: s[1]) <= 2).all()
    # ...taken after the normalisation: Grad-CAM weights (spatial mean gradients) are not ~0.
    block = ad.get_layer(default)
    assert any(isinstance(m, (nn.InstanceNorm3d, nn.BatchNorm3d)) for m in block.modules())
    with pytest.raises(ValueError, match="not a sub-module"):
        ad.get_layer("model.99")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_model_logits_work_and_layers_explain_why_not():
    torch.manual_seed(0)
    model = Plain2d()
    scripted = torch.jit.script(model)
    ad = SegmentationAdapter(scripted, spatial_dims=2)
    x = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)
    torch.testing.assert_close(ad.logits(x), SegmentationAdapter(model, spatial_dims=2).logits(x))
    assert ad.is_scripted
    assert ad.layers((1, 8, 8))["output_shape"].isna().all()
    with pytest.raises(ValueError, match="TorchScript"):
        ad.default_layer((1, 8, 8))


def _monai_nets():
    return {
        "UNet-3d": (lambda: nets.UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1), 3, 16),
        "BasicUNet-2d": (
            lambda: nets.BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), 2, 32),
        "SegResNet-3d": (
            lambda: nets.SegResNet(3, init_filters=4, in_channels=1, out_channels=2,
                                   blocks_down=(1, 1), blocks_up=(1,),
                                   norm=("GROUP", {"num_groups": 2})), 3, 16),
        "AttentionUnet-2d": (
            lambda: nets.AttentionUnet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2)), 2, 32),
        "DynUNet-3d-deep-supervision": (
            lambda: nets.DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                                 upsample_kernel_size=[2, 2], filters=[4, 8, 16],
                                 deep_supervision=True, deep_supr_num=1), 3, 16),
        "UNETR-2d": (
            lambda: nets.UNETR(1, 2, img_size=(32, 32), feature_size=4, hidden_size=24,
                               mlp_dim=48, num_heads=2, spatial_dims=2), 2, 32),
        "SwinUNETR-2d": (
            lambda: nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12,
                                   depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3),
                                   spatial_dims=2), 2, 64),  # 32 -> 1x1 bottleneck
    }


@pytest.mark.parametrize("name", list(_monai_nets()))
def test_monai_networks(name):
    if name.startswith(("UNETR", "SwinUNETR")):
        pytest.importorskip("einops", reason="MONAI's transformer blocks need einops")
    build, dims, size = _monai_nets()[name]
    torch.manual_seed(0)
    model = build()
    model.train()  # DynUNet stacks its deep-supervision heads only in training mode
    ad = SegmentationAdapter(model, spatial_dims=dims)
    x = np.random.default_rng(0).random((1, *(size,) * dims)).astype(np.float32)
    logits = ad.logits(x)
    assert logits.shape == (1, 2, *(size,) * dims) and torch.isfinite(logits).all()
    assert model.training  # left as found
    layer = ad.default_layer(x.shape)
    # A listed convolution or the block enclosing one (taken after its norm and activation).
    names = list(ad.layers(x.shape)["name"])
    assert any(n == layer or n.startswith(layer + ".") for n in names)
    assert not names[-1].startswith(layer + ".")  # never a block holding the head
    assert hook_count(model) == 0 and model.training
    model.eval()
    with torch.no_grad():
        raw = model(torch.from_numpy(x)[None])
    raw = raw[0] if isinstance(raw, (list, tuple)) else raw
    torch.testing.assert_close(logits, raw)


def test_dynunet_stacked_training_output_is_indexed():
    torch.manual_seed(0)
    model = nets.DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                         upsample_kernel_size=[2, 2], filters=[4, 8, 16],
                         deep_supervision=True, deep_supr_num=1)
    model.train()
    x = torch.rand(1, 1, 8, 8, 8)
    stacked = model(x)
    assert stacked.ndim == 6  # (N, heads, K, *spatial)
    ad = SegmentationAdapter(model)
    # the adapter's _select handles the stacked form directly
    torch.testing.assert_close(ad._select(stacked), stacked[:, 0])
