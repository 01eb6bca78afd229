"""Devices and TorchScript (issue #22): tensors never meet NumPy on the wrong device, the adapter
moves the model, every method and the miss analysis run on a traced network."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from fake_device import OffCPU, on_fake_device
from monai.networks.nets import UNet
from torch import nn

import medseg_xai as mx
from medseg_xai.adapters import resolve_device
from medseg_xai.explain import explain
from medseg_xai.explain.miss import MissSettings, explain_miss


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 2, (4, 8, 8), (2, 2), num_res_units=0).eval()


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    img = rng.rand(1, 16, 16, 16).astype(np.float32)
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[5:9, 5:9, 5:9] = 1
    img[0][ref > 0] += 1.0
    return img, ref


def test_fake_device_refuses_numpy_like_cuda() -> None:
    ad = mx.SegmentationAdapter(_unet())
    with on_fake_device(ad):
        x = torch.zeros(3, device=ad.device)
        assert isinstance(x, OffCPU) and x.device.type == "cuda"
        with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
            np.asarray(x)
        with pytest.raises(TypeError, match="to numpy"):
            (x + 1).numpy()
        assert type(x.cpu()) is torch.Tensor and x.cpu().numpy().shape == (3,)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "gradcam",
                                    "feature_ablation", "deeplift"])
def test_every_method_on_a_fake_accelerator(case, method: str) -> None:
    img, ref = case
    ad = mx.SegmentationAdapter(_unet())
    target = mx.targets.region(1, ref > 0)
    kw = {"baseline": "local_background"} if method in ("integrated_gradients", "occlusion",
                                                         "deeplift") else {}
    if method == "integrated_gradients":
        kw["n_steps"] = 4
    if method == "occlusion":
        kw["window"] = 8
    with on_fake_device(ad):
        exp = explain(ad, img, target, method=method, **kw)
    ref_exp = explain(ad, img, target, method=method, **kw)
    np.testing.assert_allclose(exp.attribution, ref_exp.attribution, rtol=1e-4, atol=1e-6)


def test_miss_analysis_on_a_fake_accelerator(case) -> None:
    """The GPU crash of #22: the local-background baseline (a tensor on the adapter's device)
    went through np.asarray in captum_methods._baseline."""
    img, ref = case
    ad = mx.SegmentationAdapter(_unet())
    with on_fake_device(ad):
        a = explain_miss(ad, img, ref, "ref-1",
                         settings=MissSettings(
                             methods=("integrated_gradients", "gradcam", "occlusion"),
                             probes=("contrast",),
                             method_kwargs={"integrated_gradients": {"n_steps": 4},
                                            "occlusion": {"window": 8}}))
    ev = a.evidence.set_index("method")
    assert not ev["reason"].str.contains("could not run").any(), ev["reason"].tolist()
    assert np.isfinite(ev.loc["integrated_gradients", "completeness_error"])


def test_adapter_moves_the_model() -> None:
    seen: list = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1)

        def to(self, *args, **kwargs):  # noqa: D102
            seen.append(args[0] if args else kwargs.get("device"))
            return super().to(*args, **kwargs)

        def forward(self, x):  # noqa: D102
            return self.conv(x)

    ad = mx.SegmentationAdapter(Recorder(), device="cpu")
    assert seen == [torch.device("cpu")] and ad.device == torch.device("cpu")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda'"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.fixture(scope="module")
def traced() -> torch.jit.ScriptModule:
    return torch.jit.trace(_unet(), torch.zeros(1, 1, 16, 16, 16))


def test_torchscript_divisor_is_inferred(traced) -> None:
    ad = mx.SegmentationAdapter(traced)
    assert ad.divisor == (4, 4, 4)  # two stride-2 levels
    assert tuple(ad.logits(np.zeros((1, 18, 13, 10), np.float32)).shape) == (1, 2, 18, 13, 10)


def test_torchscript_layer_methods_refuse_naming_the_working_ones(case, traced) -> None:
    img, ref = case
    ad = mx.SegmentationAdapter(traced)
    with pytest.raises(ValueError, match="methods that work: 'saliency', 'integrated_gradients'"):
        explain(ad, img, mx.targets.region(1, ref > 0), method="gradcam")


def test_torchscript_miss_analysis_and_randomisation_gate(case, traced) -> None:
    """`explain --lesion` on a traced UNet used to exit 1 ("you can only change requires_grad
    flags of leaf variables"): deepcopy of a ScriptModule clones parameters through autograd."""
    img, ref = case
    ad = mx.SegmentationAdapter(traced)
    a = explain_miss(ad, img, ref, "ref-1",
                     settings=MissSettings(probes=("contrast",),
                                           method_kwargs={"integrated_gradients": {"n_steps": 4}}))
    ev = a.evidence.set_index("method")
    assert list(ev.index) == ["integrated_gradients"]  # the default without hooks
    assert np.isfinite(ev.loc["integrated_gradients", "randomisation_spearman"])
    assert "could not run" not in ev.loc["integrated_gradients", "reason"]
    for method in ("saliency", "smoothgrad", "input_x_gradient", "occlusion"):
        kw = {"n_samples": 2} if method == "smoothgrad" else {}
        exp = explain(ad, img, mx.targets.region(1, ref > 0), method=method, **kw)
        assert np.abs(exp.attribution).sum() > 0


def test_fingerprint_of_a_parameterless_model_is_not_the_empty_hash() -> None:
    empty = hashlib.sha256().hexdigest()[:16]

    class Identity2(nn.Module):
        def forward(self, x):  # noqa: D102
            return torch.cat([-x, x], 1)

    a = mx.SegmentationAdapter(Identity2(), divisor=None)
    s = mx.SegmentationAdapter(torch.jit.script(Identity2()), divisor=None)
    assert empty not in (a.fingerprint, s.fingerprint)
    assert a.fingerprint != s.fingerprint
