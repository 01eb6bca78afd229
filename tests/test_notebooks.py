"""Execute the three notebooks top to bottom with nbval.

Each notebook runs in a fresh kernel of this Python (``--nbval-current-env``) through pytest's
nbval plugin in a subprocess; ``--nbval-lax`` compares the stored outputs of the cells marked
``# NBVAL_CHECK_OUTPUT`` (deterministic key numbers) and fails on any error in any cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
TIMEOUT_S = 900


def test_the_three_notebooks_are_there_and_check_key_numbers() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_why_was_the_lesion_missed.ipynb",
        "02_regulatory_audit_report.ipynb",
        "03_subgroup_comparison_before_deployment.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        checked = [c for c in nb["cells"] if c["cell_type"] == "code"
                   and "# NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
        assert checked, f"{path.name}: no '# NBVAL_CHECK_OUTPUT' cell"
        # Checked cells carry their expected output; other cells are stored without outputs.
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            if cell in checked:
                assert cell["outputs"], f"{path.name}: a checked cell has no stored output"
            else:
                assert not cell["outputs"], f"{path.name}: unchecked cell stored with output"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_nbval(notebook: Path, tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", IPYTHONDIR=str(tmp_path))
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
        "--nbval-current-env", f"--nbval-cell-timeout={TIMEOUT_S}", "-o", "addopts=",
        "-o", "testpaths=", "--rootdir", str(tmp_path), str(notebook),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"nbval failed on {notebook.name}:\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1], tail
