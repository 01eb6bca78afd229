"""explain.weights: layer statistics against direct computation; kernel montages in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medseg_xai as mx
from medseg_xai.explain.weights import compare_weights, kernels, weights
from medseg_xai.viz_model import (
    kernel_montage,
    kernel_tiles,
    weight_comparison,
    weight_distribution,
)


def _net(dims: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.BatchNorm2d
    up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
    return nn.Sequential(conv(1, 4, 3, padding=1), norm(4, affine=True), nn.ReLU(),
                         conv(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         up(6, 4, 2, stride=2), conv(4, 2, 1))


def test_statistics_match_direct_computation():
    net = _net(2)
    with torch.no_grad():  # plant two dead output channels and some zeros
        net[3].weight[1].zero_()
        net[3].weight[4].zero_()
        net[3].weight[0, 0, 0, 0] = 1e-9
    df = weights(mx.SegmentationAdapter(net, spatial_dims=2))
    assert list(df["name"]) == ["0", "1", "3", "5", "6"]
    for name, module in net.named_modules():
        if not hasattr(module, "weight") or module.weight is None or not name:
            continue
        row = df.set_index("name").loc[name]
        w = module.weight.detach().double().numpy()
        assert row["n_params"] == sum(p.numel() for p in module.parameters())
        assert row["weight_norm"] == pytest.approx(np.sqrt((w ** 2).sum()))
        assert row["weight_std"] == pytest.approx(w.std())
        small = np.abs(w) <= 1e-3 * np.abs(w).max()
        assert row["near_zero_share"] == pytest.approx(small.mean())
        assert row["weight_shape"] == w.shape
    conv3 = df.set_index("name").loc["3"]
    assert conv3["dead_channels"] == 2 and conv3["n_out_channels"] == 6
    assert conv3["near_zero_share"] >= 2 / 6
    # transposed conv: output channels are axis 1 of its weight
    assert df.set_index("name").loc["5", "n_out_channels"] == 4
    with torch.no_grad():
        net[5].weight[:, 2].zero_()
    assert weights(net).set_index("name").loc["5", "dead_channels"] == 1


def test_compare_weights_relative_change():
    a, b = _net(3, seed=0), _net(3, seed=0)
    with torch.no_grad():
        b[3].weight.mul_(1.5)
    cmp = compare_weights(a, b).set_index("name")
    assert (cmp["status"] == "matched").all()
    assert cmp.loc["3", "relative_change"] == pytest.approx(0.5)
    assert cmp.loc["0", "relative_change"] == 0.0
    assert cmp.loc["3", "cosine"] == pytest.approx(1.0)
    c = nn.Sequential(*list(_net(3))[:3])
    assert set(compare_weights(a, c).query("status == 'only_a'")["name"]) == {"3", "5", "6"}
    fig = weight_comparison(compare_weights(a, b))
    assert len(fig.axes) == 2


@pytest.mark.parametrize("dims", [2, 3])
def test_kernel_montage_shape(dims):
    net = _net(dims)
    k = kernels(net, "3")  # (6, 4, 3, 3[, 3])
    assert k.shape == (6, 4) + (3,) * dims
    tiles = kernel_tiles(k)
    n_slices = 3 if dims == 3 else 1  # small 3D kernels: every slice
    assert tiles.shape == (6 * 4 - 1, 4 * n_slices * 4 - 1)
    # a tile holds its kernel exactly, the gaps are NaN
    np.testing.assert_array_equal(tiles[4:7, 0:3], k[1, 0] if dims == 2 else k[1, 0, 0])
    assert np.isnan(tiles[3]).all()
    if dims == 3:
        central = kernel_tiles(k, slices="central")
        assert central.shape == (23, 4 * 4 - 1)
        np.testing.assert_array_equal(central[0:3, 0:3], k[0, 0, 1])
    # transposed conv reordered to (out, in, ...)
    assert kernels(net, "5").shape == (4, 6) + (2,) * dims
    fig = kernel_montage(k, title="conv 3")
    assert fig.axes[0].images[0].get_array().shape == tiles.shape
    assert len(weight_distribution(net).axes[0].get_yticklabels()) == 5


def test_bad_input():
    with pytest.raises(ValueError, match="layer 'nope'"):
        kernels(_net(2), "nope")
    with pytest.raises(ValueError, match="near_zero"):
        weights(_net(2), near_zero=2)
    with pytest.raises(ValueError, match="kernel"):
        kernel_tiles(np.zeros((3, 3)))
