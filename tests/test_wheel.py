"""The package as users install it: `python -m build` makes an sdist and, from it, a wheel holding the compiled
extension and the Triton kernels; the wheel, installed into a fresh virtual environment with no checkout in
sight, imports mlkd_fast._C, runs the fused op against the eager reference and passes the op tests.

The fresh environment borrows this one's dependencies (torch, transformers, ...) through a path entry, which
adds the directory to sys.path without running its .pth files: the checkout's editable install stays out.
"""
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import os, sys, torch, mlkd_fast, mlkd_fast._C
from mlkd_fast import relation_kl
from mlkd_fast.ops import backends
assert mlkd_fast.__file__.startswith(sys.prefix), mlkd_fast.__file__   # the wheel's copy, not the checkout
assert "cpp" in mlkd_fast.available_backends(), mlkd_fast.available_backends()
import mlkd_fast.kernels  # the Triton kernels ship in the wheel
g = torch.Generator().manual_seed(0)
t, s = torch.randn(2, 7, 24, generator=g, dtype=torch.float64), torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
a, b = relation_kl(t, s, 3, mask, backend="cpp"), relation_kl(t, s, 3, mask, backend="torch")
assert torch.allclose(a, b, rtol=1e-10), (a, b)
print("isa", backends.cpp_module().cpu_isa(), "ok")
"""


def _run(cmd, cwd, env=None):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


@pytest.mark.slow
def test_sdist_and_wheel_build_install_and_run_in_a_fresh_environment(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), REPO], cwd=tmp_path)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("csrc/kernels_api.h") for n in names) and any(n.endswith("csrc/bindings.cpp") for n in names)
    with zipfile.ZipFile(wheel) as whl:
        files = whl.namelist()
        requires = whl.read(next(f for f in files if f.endswith("METADATA"))).decode()
    assert any(f.startswith("mlkd_fast/_C") and f.endswith(".so") for f in files)
    assert "mlkd_fast/kernels/relation_kl.py" in files and "mlkd_fast/hf.py" in files
    runtime = [line for line in requires.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any("pybind11" in r or "ninja" in r for r in runtime), runtime  # build-time only

    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = str(env_dir / "bin" / "python")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    with open(os.path.join(purelib, "borrowed_dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], cwd=tmp_path)
    assert "ok" in _run([python, "-c", CHECK], cwd=tmp_path)

    # the op tests, from a copy of the tests outside any checkout, against the installed wheel
    tests = tmp_path / "tests"
    shutil.copytree(os.path.join(REPO, "tests"), tests, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    _run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(tests / "ops" / "test_relation_kl.py"),
          str(tests / "ops" / "test_soft_cross_entropy.py")], cwd=tmp_path, env=env)


def test_the_kernels_folder_never_shadows_the_pypi_kernels_package():
    """kernels/ is installed as mlkd_fast.kernels; at the checkout root (on sys.path under python -m / -c) it must
    not be a regular package called `kernels`, which transformers >= 5.25 imports from PyPI."""
    assert not os.path.exists(os.path.join(REPO, "kernels", "__init__.py"))
    probe = ("import importlib.metadata as md, importlib.util as u, os, sys\n"
             "spec = u.find_spec('kernels')\n"
             "try:\n    md.version('kernels'); installed = True\nexcept md.PackageNotFoundError:\n    installed = False\n"
             "ours = spec is not None and (spec.origin or '').startswith(os.path.join(os.getcwd(), 'kernels'))\n"
             "assert not ours, spec\n"
             "assert not installed or spec.origin and 'site-packages' in spec.origin, spec\n"
             "import mlkd_fast.kernels._common\n"
             "print('ok', installed)\n")
    assert "ok" in _run([sys.executable, "-c", probe], cwd=REPO)
