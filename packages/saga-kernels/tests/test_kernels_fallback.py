"""Without a compiler the build still yields a working pure-Python wheel (the twins), and
`native_status` says why — scikit-build-core's ``if.failed`` override, exercised for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv builds the wheel")
def test_no_compiler_gives_a_pure_python_wheel(tmp_path: Path) -> None:
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-cc"),
           "CUDACXX": str(tmp_path / "no-nvcc")}
    # --offline: the build backend comes from uv's cache (the workspace's sync put it there);
    # the test run has no network beyond loopback.
    subprocess.run(["uv", "build", "--offline", "--wheel", "--no-config", "-o", str(tmp_path),
                    str(PACKAGE)],
                   env=env, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("saga_kernels-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "saga/kernels/walru.py" in names and not any(n.endswith(".so") for n in names)
    assert "saga/kernels/experimental/prefix.py" in names
    assert "saga/kernels/cache_core.py" in names
    # Import from the wheel alone (-S: no .pth, so not this checkout's editable install).
    code = ("from saga.kernels import native_status, walru_select; "
            "rows = native_status(); assert {r.backend for r in rows} == {'twin'}, rows; "
            "assert 'no compiled module' in rows[0].detail, rows[0]; "
            "print(walru_select([1.0, 2.0], [0.5, 0.5], [1.0, 1.0], [0, 0], 3.0, 1, "
            "0.3, 0.5, 0.2).order.tolist()); "
            "from saga.kernels.experimental import prefix_overlap; "
            "assert prefix_overlap([1, 2], [1, 3], [0, 2]).tolist() == [1]; "
            "from saga.kernels.cache_core import cache_core, have_cache_core; "
            "assert not have_cache_core(); "
            "assert cache_core(1, 0, 16, ('access', False, 0, 0, 0), "
            "('access', False, 0, 0, 0), {}) is None")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    path = os.pathsep.join([str(unpacked), sysconfig.get_paths()["purelib"]])
    out = subprocess.run([sys.executable, "-S", "-c", code], env={**env, "PYTHONPATH": path},
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "[0]"
