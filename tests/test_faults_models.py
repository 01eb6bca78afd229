"""Models that misbehave (issue 28): code that never returns under ``case_timeout`` (killable
workers), output channels against the activation and labels, non-determinism."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from medseg_xai.audit import audit, runner
from medseg_xai.audit.isolated import KILL_MARGIN_S
from medseg_xai.cohort import Cohort

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import FAST, write_cohort  # noqa: E402

LIMIT = 2.0


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("models") / "c", n=4)


def _native_hang(case: str, seconds: float):
    """``_compute_case`` that, for ``case``, sits in a call no signal interrupts (SIGALRM
    blocked, as in a native loop) for ``seconds``."""
    real = runner._compute_case

    def compute(cid, *args, **kwargs):
        if cid == case:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(seconds)
        return real(cid, *args, **kwargs)

    return compute


@pytest.mark.parametrize("executor, kw", [("serial", {}), ("process", {"workers": 2})])
def test_a_case_that_never_returns_times_out_within_the_margin(manifest, monkeypatch,
                                                                executor, kw):
    monkeypatch.setattr(runner, "_compute_case", _native_hang("c1", 3600))  # fork inherits it
    t0 = time.perf_counter()
    r = audit(Cohort.from_csv(manifest), executor=executor, case_timeout=LIMIT,
              mp_context="fork", **kw, **{k: v for k, v in FAST.items() if k != "workers"})
    wall = time.perf_counter() - t0
    assert (r.n_evaluated, r.n_failed) == (3, 1)
    err = r.cases.set_index("case_id").loc["c1", "error"]
    assert "timeout" in err and "2 s" in err and "worker process was stopped" in err
    elapsed = float(err.split("stopped after ")[1].split(" s")[0])
    assert LIMIT + KILL_MARGIN_S <= elapsed < LIMIT + KILL_MARGIN_S + 1.5
    assert wall < 60  # was: never ends


def test_a_slow_native_case_is_a_timeout_when_it_passes_the_limit(manifest, monkeypatch):
    monkeypatch.setattr(runner, "_compute_case", _native_hang("c2", 30))
    t0 = time.perf_counter()
    r = audit(Cohort.from_csv(manifest), executor="serial", case_timeout=LIMIT,
              mp_context="fork", **{k: v for k, v in FAST.items() if k != "workers"})
    assert time.perf_counter() - t0 < 25  # recorded at ~3 s, not after the 30 s call
    assert "timeout" in r.cases.set_index("case_id").loc["c2", "error"]


def test_a_worker_crash_fails_only_its_row(manifest, monkeypatch):
    import os

    real = runner._compute_case

    def crash(cid, *args, **kwargs):
        if cid == "c0":
            os._exit(139)  # as a segfault in native code would end the process
        return real(cid, *args, **kwargs)

    monkeypatch.setattr(runner, "_compute_case", crash)
    r = audit(Cohort.from_csv(manifest), executor="serial", case_timeout=60,
              mp_context="fork", **{k: v for k, v in FAST.items() if k != "workers"})
    assert (r.n_evaluated, r.n_failed) == (3, 1)
    err = r.cases.set_index("case_id").loc["c0", "error"]
    assert "worker process running this case ended (exit code 139)" in err


# -- output channels, activation and labels; stochastic models --------------------------------


def _adapter(channels: int, activation: str, dropout: bool = False):
    import torch
    from torch import nn

    from medseg_xai.adapters import SegmentationAdapter

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, channels, 1)

        def forward(self, x):
            y = self.conv(x)
            return nn.functional.dropout(y, 0.5, training=True) if dropout else y

    torch.manual_seed(0)
    return SegmentationAdapter(Net(), spatial_dims=3, activation=activation, divisor=1)


@pytest.mark.parametrize("channels, activation, labels, expected", [
    (1, "softmax", None, "1 channel with activation 'softmax'"),
    (3, "softmax", None, "3 channels with activation 'softmax', but the audit's labels are "
                         "binary {0, 1}; expected 2"),
    (2, "softmax", [1, 2], "2 channels with activation 'softmax', but the audit's labels are "
                           "labels [1, 2]; expected 3"),
    (2, "sigmoid", None, "2 channels with activation 'sigmoid'"),
])
def test_output_channels_against_activation_and_labels(manifest, channels, activation, labels,
                                                       expected):
    r = audit(Cohort.from_csv(manifest), adapter=_adapter(channels, activation), labels=labels,
              feature_layer=None, **FAST)
    assert r.n_failed == 4
    err = r.cases["error"].iloc[0]
    assert "model output" in err and expected in err, err


@pytest.mark.parametrize("channels, activation, labels", [
    (1, "sigmoid", None), (2, "softmax", None), (3, "softmax", [1, 2])])
def test_matching_outputs_run(manifest, channels, activation, labels):
    r = audit(Cohort.from_csv(manifest), adapter=_adapter(channels, activation), labels=labels,
              feature_layer=None, **FAST)
    assert r.n_failed == 0, r.cases["error"].tolist()
    assert r.provenance["model_determinism"]["deterministic"] is True


def test_stochastic_model_is_reported_and_seeded(manifest):
    import warnings

    adapter = _adapter(1, "sigmoid", dropout=True)
    with pytest.warns(UserWarning, match=r"two passes on case 'c0' differ"):
        a = audit(Cohort.from_csv(manifest), adapter=adapter, feature_layer=None, seed=3, **FAST)
    assert a.provenance["model_determinism"]["deterministic"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = audit(Cohort.from_csv(manifest), adapter=adapter, feature_layer=None, seed=3, **FAST)
        c = audit(Cohort.from_csv(manifest), adapter=adapter, feature_layer=None, seed=4, **FAST)
    cols = ["dice", "volume_pred_mm3"]
    assert a.cases[cols].equals(b.cases[cols])  # same seed, same audit
    assert not a.cases[cols].equals(c.cases[cols])  # the seed reaches the model


# -- from the command line: TorchScript models --------------------------------------------


class _Constant(__import__("torch").nn.Module):
    """One output channel of logit -10 everywhere: empty under sigmoid, all foreground under a
    softmax over the single channel."""

    def forward(self, x):
        return x[:, :1] * 0.0 - 10.0


class _Forever(__import__("torch").nn.Module):
    """Never returns: a TorchScript loop (native code, no signal reaches it)."""

    def forward(self, x):
        y = x
        while bool(y.sum() > -1.0e30):
            y = y * 1.0
        return y


def _script(module, path: Path) -> Path:
    import torch

    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_one_channel_model_from_the_cli_is_not_softmaxed(manifest, tmp_path, capsys):
    import pandas as pd

    from medseg_xai.cli import main

    model = _script(_Constant(), tmp_path / "one.pt")
    base = ["audit", str(manifest), "--model", str(model), "--quiet", "--no-html",
            "--workers", "1", "--feature-layer", "none", "--gallery", "0"]
    with pytest.warns(UserWarning, match="one output channel: activation 'sigmoid'"):
        assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    cases = pd.read_csv(tmp_path / "auto" / "cases.csv")
    assert (cases["volume_pred_mm3"] == 0).all()  # was: every voxel foreground
    assert main([*base, "--out", str(tmp_path / "soft"), "--activation", "softmax"]) == 3
    cases = pd.read_csv(tmp_path / "soft" / "cases.csv")
    assert cases["error"].str.contains("1 channel with activation 'softmax'").all()


@pytest.mark.slow
def test_a_torchscript_model_that_never_returns_from_the_cli(manifest, tmp_path):
    import json
    import os
    import subprocess

    model = _script(_Forever(), tmp_path / "forever.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "medseg_xai", "audit", str(manifest), "--model", str(model),
         "--out", str(tmp_path / "o"), "--case-timeout", "2", "--quiet", "--no-html",
         "--workers", "1", "--feature-layer", "none", "--gallery", "0"],
        capture_output=True, text=True, env=env, timeout=240)
    wall = time.perf_counter() - t0
    assert proc.returncode == 3, proc.stderr[-2000:]  # every row a timeout; was: hung
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    cases = doc["tables"]["cases"]
    errors = [row[cases["columns"].index("error")] for row in cases["data"]]
    assert all("timeout: expected the case to finish within 2 s" in e for e in errors), errors
    assert doc["provenance"]["model_determinism"]["error"] == "timeout"
    assert wall < 200
