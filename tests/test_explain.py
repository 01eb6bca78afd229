"""explain(): every method in 2D and 3D, completeness, MONAI Grad-CAM parity, model state."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from monai.visualize import GradCAM
from torch import nn

import medseg_xai as mx
from medseg_xai import targets
from medseg_xai.explain import METHODS, Explanation, activations, explain


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


class Small(nn.Module):
    """Conv encoder-decoder with ReLUs (guided backprop has something to guide)."""

    def __init__(self, dims: int, c_in: int = 1) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.enc = conv(c_in, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.dec = conv(6, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = conv(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.dec(self.act(self.enc(x)))))


@pytest.fixture(scope="module")
def case3d():
    torch.manual_seed(0)
    model = Small(3, c_in=2)
    image = np.random.default_rng(0).random((2, 12, 12, 12)).astype(np.float32)
    ref = np.zeros((12, 12, 12), bool)
    ref[4:8, 4:8, 4:8] = True
    return mx.SegmentationAdapter(model), image, targets.reference(1, ref)


@pytest.fixture(scope="module")
def case2d():
    torch.manual_seed(1)
    model = UNet(2, 1, 2, (4, 8), (2,), num_res_units=1, norm="batch")  # piecewise linear in eval
    image = np.random.default_rng(1).random((1, 16, 16)).astype(np.float32)
    ref = np.zeros((16, 16), bool)
    ref[5:10, 6:12] = True
    return mx.SegmentationAdapter(model, spatial_dims=2), image, targets.reference(1, ref)


def _kwargs(method: str) -> dict:
    return {"occlusion": {"window": 4}, "smoothgrad": {"n_samples": 3},
            "integrated_gradients": {"n_steps": 8}}.get(method, {})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["case3d", "case2d"])
def test_every_method_gives_finite_maps_of_the_input_shape(method, case, request):
    adapter, image, target = request.getfixturevalue(case)
    model = adapter.model
    model.train()
    exp = explain(adapter, image, target, method=method, batch_size=2, **_kwargs(method))
    spatial = image.shape[1:]
    assert isinstance(exp, Explanation) and exp.method == method
    assert exp.attribution.shape == spatial and exp.attribution.dtype == np.float32
    c = 1 if method in ("gradcam", "gradcam++") else image.shape[0]
    assert exp.channel_attribution.shape == (c, *spatial)
    assert np.isfinite(exp.channel_attribution).all()
    assert np.abs(exp.attribution).sum() > 0
    assert (exp.layer is not None) == (method in ("gradcam", "gradcam++"))
    assert exp.provenance["model_fingerprint"] == adapter.fingerprint
    assert exp.provenance["versions"]["captum"] and exp.elapsed_s > 0
    assert model.training and _hooks(model) == 0
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("case", ["case3d", "case2d"])
def test_integrated_gradients_completeness(case, request):
    adapter, image, target = request.getfixturevalue(case)
    exp = explain(adapter, image, target, "integrated_gradients", n_steps=64)
    with torch.no_grad():
        gap = float(target(adapter.logits(image)) - target(adapter.logits(np.zeros_like(image))))
    total = float(exp.channel_attribution.sum())
    assert abs(gap) > 1e-3
    assert total == pytest.approx(gap, rel=0.02, abs=1e-4)
    assert exp.convergence_delta == pytest.approx(abs(total - gap), abs=1e-3)


def test_integrated_gradients_batch_size_does_not_change_the_map(case3d):
    adapter, image, target = case3d
    a = explain(adapter, image, target, "integrated_gradients", n_steps=8)
    b = explain(adapter, image, target, "integrated_gradients", n_steps=8, batch_size=3)
    np.testing.assert_allclose(a.channel_attribution, b.channel_attribution, rtol=1e-4, atol=1e-6)


def test_saliency_is_the_gradient_of_the_target(case2d):
    adapter, image, target = case2d
    x = torch.from_numpy(image)[None].requires_grad_(True)
    adapter.model.eval()
    target(adapter.model(x)).sum().backward()
    exp = explain(adapter, image, target, "saliency", abs=False)
    np.testing.assert_allclose(exp.channel_attribution, x.grad[0].numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcam_equals_monai_gradcam_for_the_whole_class_channel(dims):
    torch.manual_seed(3)
    model = UNet(dims, 1, 2, (4, 8, 16), (2, 2), num_res_units=1)
    size = 32 if dims == 2 else 16
    image = np.random.default_rng(3).random((1, *(size,) * dims)).astype(np.float32)
    adapter = mx.SegmentationAdapter(model, spatial_dims=dims)
    layer = adapter.default_layer(image.shape)
    target = targets.region(1, np.ones((size,) * dims, bool))
    ours = explain(adapter, image, target, "gradcam", layer=layer).attribution
    assert ours.max() > ours.min()  # a degenerate (constant) map would compare trivially

    monai_model = copy.deepcopy(model)  # MONAI leaves its hooks on the module it wraps
    cam = GradCAM(nn_module=monai_model, target_layers=layer)
    theirs = cam(torch.from_numpy(image)[None], class_idx=1)[0, 0].numpy()
    # MONAI's default normaliser maps (min, max) to (1, 0); bring ours to the same scale
    ours_scaled = 1.0 - (ours - ours.min()) / (ours.max() - ours.min())
    np.testing.assert_allclose(ours_scaled, theirs, atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_signed_gradcam_keeps_negative_evidence_and_relu_of_it_is_the_default(method):
    torch.manual_seed(5)
    model = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1)
    image = np.random.default_rng(5).random((1, 16, 16, 16)).astype(np.float32)
    adapter = mx.SegmentationAdapter(model, spatial_dims=3)
    mask = np.zeros((16, 16, 16), bool)
    mask[4:8, 4:8, 4:8] = True
    target = targets.region(1, mask)
    signed = explain(adapter, image, target, method, relu=False)
    plain = explain(adapter, image, target, method)
    assert signed.params["relu"] is False and plain.params["relu"] is True
    assert signed.layer == plain.layer
    # Linear upsampling commutes with nothing non-linear, so compare on the layer's sign:
    # where the signed map is clearly positive the default map agrees, and the signed map
    # holds the negative evidence the ReLU drops.
    assert (signed.attribution < 0).any()
    pos = signed.attribution > 1e-6 * np.abs(signed.attribution).max()
    assert np.all(plain.attribution[pos] > 0)
    assert plain.attribution.min() >= 0
    with pytest.raises(ValueError, match="relu"):
        explain(adapter, image, target, method, relu="yes")


def test_default_gradcam_layer_is_after_the_normalisation():
    """Right after a conv feeding InstanceNorm the spatial-mean gradients are ~0 (the norm
    removes each channel's mean), so Grad-CAM there is numerical noise; the default layer must
    be the enclosing normalised, activated block."""
    torch.manual_seed(6)
    model = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1, norm="instance")
    image = np.random.default_rng(6).random((1, 16, 16, 16)).astype(np.float32)
    adapter = mx.SegmentationAdapter(model, spatial_dims=3)
    layer = adapter.default_layer(image.shape)
    module = adapter.get_layer(layer)
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    x = torch.from_numpy(image)[None]
    score = adapter.logits(x)[:, 1].mean()
    handle.remove()
    (grad,) = torch.autograd.grad(score, store["a"])
    weights = grad.mean(dim=(2, 3, 4))
    assert weights.abs().max() > 1e-3 * grad.abs().max()


def test_model_state_is_restored_after_an_exception_mid_explanation(case3d):
    adapter, image, _ = case3d
    model = adapter.model
    model.train()
    model.enc.bias.requires_grad_(False)

    def exploding(logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("exploding target")

    for method in ("gradcam", "gradcam++", "deeplift", "guided_backprop", "saliency"):
        with pytest.raises(RuntimeError, match="exploding"):
            explain(adapter, image, exploding, method=method)
        assert _hooks(model) == 0, method
        assert model.training and all(m.training for m in model.modules())
        assert not model.enc.bias.requires_grad and model.enc.weight.requires_grad
    model.enc.bias.requires_grad_(True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_model_input_methods_work_and_layer_methods_say_why_not(case2d):
    adapter, image, target = case2d
    scripted = torch.jit.script(copy.deepcopy(adapter.model).eval())
    sad = mx.SegmentationAdapter(scripted, spatial_dims=2)
    ref = explain(adapter, image, target, "saliency")
    got = explain(sad, image, target, "saliency")
    np.testing.assert_allclose(got.attribution, ref.attribution, rtol=1e-4, atol=1e-7)
    for method in ("gradcam", "gradcam++", "deeplift"):
        with pytest.raises(ValueError, match="TorchScript.*hooks.*unscripted"):
            explain(sad, image, target, method)
    with pytest.raises(ValueError, match="TorchScript"):
        activations(sad, image, "model.0")


def test_gradcam_under_sliding_window_and_slice_axis(case3d):
    adapter, image, target = case3d
    whole = explain(adapter, image, target, "gradcam", layer="dec").attribution
    # one window covering the image gives the plain Grad-CAM
    sw1 = mx.SegmentationAdapter(adapter.model, sliding_window=(12, 12, 12))
    np.testing.assert_allclose(
        explain(sw1, image, target, "gradcam", layer="dec").attribution, whole, rtol=1e-4,
        atol=1e-8)
    # smaller windows: only windows that contain the target region get a map
    sw = mx.SegmentationAdapter(adapter.model, sliding_window={"roi_size": 6, "overlap": 0.0})
    cam = explain(sw, image, target, "gradcam", layer="dec").attribution
    assert cam.shape == image.shape[1:] and np.isfinite(cam).all() and cam.max() > 0
    ig = explain(sw, image, target, "integrated_gradients", n_steps=4)
    assert np.isfinite(ig.attribution).all() and np.abs(ig.attribution).sum() > 0

    torch.manual_seed(0)
    model2d = Small(2, c_in=2)
    sl = mx.SegmentationAdapter(model2d, spatial_dims=3, slice_axis=1)
    cam = explain(sl, image, target, "gradcam", layer="dec").attribution
    assert cam.shape == image.shape[1:]
    # slice 0 along axis 1 lies outside the target: its own Grad-CAM weights are zero
    assert np.all(cam[:, 0, :] == 0) and cam[:, 5, :].max() > 0
    feats = activations(sl, image, "dec")
    assert feats.shape == (6, 12, 12, 12)


def test_occlusion_and_feature_ablation_measure_the_drop(case3d):
    adapter, image, target = case3d
    exp = explain(adapter, image, target, "occlusion", window=12, stride=12)
    with torch.no_grad():
        drop = float(target(adapter.logits(image)) - target(adapter.logits(np.zeros_like(image))))
    # one window covering everything: every voxel carries the whole drop
    np.testing.assert_allclose(exp.channel_attribution, drop, rtol=1e-4)
    fa = explain(adapter, image, target, "feature_ablation")
    for c in range(image.shape[0]):
        only = image.copy()
        only[c] = 0
        with torch.no_grad():
            d = float(target(adapter.logits(image)) - target(adapter.logits(only)))
        np.testing.assert_allclose(fa.channel_attribution[c], d, rtol=1e-4)


def test_arguments_are_checked(case2d):
    adapter, image, target = case2d
    with pytest.raises(ValueError, match="method"):
        explain(adapter, image, target, method="lime")
    with pytest.raises(ValueError, match="batch_size"):
        explain(adapter, image, target, "saliency", batch_size=0)
    with pytest.raises(ValueError, match="mask shape"):
        explain(adapter, image[:, :8], target, "saliency")
    with pytest.raises(ValueError, match="unknown keyword"):
        explain(adapter, image, target, "saliency", steps=3)
    with pytest.raises(ValueError, match="not a sub-module"):
        explain(adapter, image, target, "gradcam", layer="nope")
    with pytest.raises(ValueError, match="window"):
        explain(adapter, image, target, "occlusion", window=(40, 4))
    with pytest.raises(ValueError, match="one image"):
        explain(adapter, torch.from_numpy(np.stack([image, image])), target, "saliency")


def test_to_nifti_round_trip_keeps_the_affine(case3d, tmp_path):
    adapter, image, target = case3d
    exp = explain(adapter, image, target, "saliency")
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10, -5, 3]
    path = exp.to_nifti(tmp_path / "sal.nii.gz", affine=affine)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), exp.attribution)
    with pytest.raises(ValueError, match="affine"):
        exp.to_nifti(tmp_path / "x.nii", affine=np.eye(3))


def test_activations_return_the_layer_feature_maps(case2d):
    adapter, image, _ = case2d
    layer = adapter.default_layer(image.shape)
    feats = activations(adapter, image, layer)
    # The default layer may be a block enclosing a listed convolution: check against a
    # listed convolution too.
    conv = str(adapter.layers(image.shape)["name"].iloc[0])
    shape = adapter.layers(image.shape).set_index("name").loc[conv, "output_shape"]
    assert activations(adapter, image, conv).shape == tuple(shape[1:])
    store = {}
    handle = adapter.get_layer(layer).register_forward_hook(lambda m, i, o: store.update(o=o))
    try:
        adapter.logits(image)
    finally:
        handle.remove()
    np.testing.assert_allclose(feats, store["o"][0].numpy(), rtol=1e-5)


# --------------------------------------------------------------- miss-analysis defaults
def test_local_background_baseline_integrated_gradients_is_complete(case3d):
    adapter, image, _ = case3d
    lesion = np.zeros((12, 12, 12), bool)
    lesion[5:8, 5:8, 5:8] = True
    image = image.copy()
    image[:, lesion] += 1.0
    target = targets.region(1, lesion, margin=True)
    exp = explain(adapter, image, target, method="integrated_gradients",
                  baseline="local_background", n_steps=16)
    assert exp.params["baseline"] == "local_background"
    from medseg_xai.explain.probes import fill_lesion

    base = fill_lesion(image, lesion)
    with torch.no_grad():
        fx, fb = (float(v) for v in target(adapter.logits(torch.from_numpy(np.stack([image, base])))))
    # all attribution lies where the image differs from its lesion-free version
    assert np.abs(exp.attribution[~lesion]).max() == 0.0
    assert exp.attribution.sum() == pytest.approx(fx - fb, rel=0.05, abs=1e-3)
    with pytest.raises(ValueError, match="baseline"):
        explain(adapter, image, target, method="integrated_gradients", baseline="mean")


def test_localising_layer_is_the_first_block():
    from medseg_xai.explain.gradcam import localising_layer

    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1)
    adapter = mx.SegmentationAdapter(net)
    name = localising_layer(adapter, (1, 16, 16, 16))
    assert name == "model.0"  # the first residual unit, after its norm and activation
    assert localising_layer(adapter, (1, 16, 16, 16)) == name  # cached
    with pytest.raises(ValueError, match="no convolution"):
        localising_layer(mx.SegmentationAdapter(nn.Sequential(nn.Identity())), (1, 4, 4, 4))


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    manifest = mx.demo.make_cohort(root, n_cases=8, seed=0, shape=(24, 40, 40))
    return root, manifest


@pytest.mark.slow
def test_demo_detected_lesion_gradcam_is_enriched_and_passes_its_gates(demo_case):
    import pandas as pd

    from medseg_xai.metrics import label_lesions

    root, manifest = demo_case
    adapter = mx.demo.load_model()
    rows = pd.read_csv(manifest)
    found = None
    for r in rows[rows["n_lesions"] > 0].itertuples():
        image = np.asarray(nib.load(str(root / r.image)).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(root / r.label)).dataobj)
        p = adapter.probabilities(image[None]).numpy()[0, 1]
        lab, n = label_lesions(label > 0)
        for k in range(1, n + 1):
            if (p[lab == k] > 0.5).mean() > 0.5 and (lab == k).sum() >= 20:
                found = (image, label, f"ref-{k}")
                break
        if found:
            break
    assert found is not None
    image, label, lid = found
    a = mx.explain_miss(adapter, image, label, lid, settings=mx.MissSettings(probes=["contrast"]))
    ev = a.evidence.set_index("method")
    assert a.status == "detected"
    assert ev.loc["gradcam", "layer"] == "unet.model.0"
    assert ev.loc["gradcam", "enrichment"] > 1.0
    assert ev.loc["integrated_gradients", "completeness_error"] < 0.05
    assert ev.loc["gradcam", "passed"], ev.loc["gradcam", "reason"]
    # removing its contrast makes the detected lesion vanish: its detection depends on it
    assert "depends on contrast" in a.verdict


@pytest.mark.slow
def test_explain_command_miss_analysis_files_and_gate_warning(demo_case, capsys):
    import json

    import pandas as pd

    from medseg_xai.cli import main

    root, manifest = demo_case
    rows = pd.read_csv(manifest)
    row = rows[rows["n_lesions"] > 0].iloc[0]
    out = root / "exp"
    code = main(["explain", str(root / row["image"]), "--ref", str(root / row["label"]),
                 "--lesion", "ref-1", "--method", "gradcam", "--method", "feature_ablation",
                 "--signed", "--case-id", "c1", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "ref-1 was" in captured.out
    assert "warning: feature_ablation map fails its gates (constant map)" in captured.err
    data = json.loads((out / "c1_ref-1_miss.json").read_text())
    assert data["lesion_id"] == "ref-1" and data["settings"]["case_id"] == "c1"
    assert [e["method"] for e in data["evidence"]] == ["gradcam", "feature_ablation"]
    assert all(p.name.startswith("c1_") for p in out.iterdir())
    assert (out / "c1_ref-1_gradcam.png").read_bytes()[:4] == b"\x89PNG"
    saved = nib.load(str(out / "c1_ref-1_gradcam.nii.gz")).get_fdata()
    assert (saved < 0).any()  # --signed keeps negative evidence


def test_explain_png_has_outline_and_colour_bar(tmp_path):
    from medseg_xai.cli import _explain_png

    image = np.random.default_rng(0).random((8, 12, 12)).astype(np.float32)
    mask = np.zeros((8, 12, 12), bool)
    mask[3:5, 4:7, 4:7] = True
    fig = _explain_png(tmp_path / "x.png", image, mask, mask, image - 0.5, (1.0, 1.0, 1.0), "t")
    assert len(fig.axes) == 4  # three planes and the colour bar
    bar = fig.axes[3]
    assert bar.get_ylim() == pytest.approx((-0.5, 0.5), abs=0.02)  # signed map: symmetric
    outlines = [v.outlines.get_array() for v in fig.slice_views]
    assert any(np.asarray(o)[..., 3].any() for o in outlines)  # the target's outline is drawn
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
