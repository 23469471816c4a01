"""Build script for the compiled part of mlkd_fast.

`mlkd_fast._C`, the fused CPU relation kernels (csrc/*.cpp), is built with
torch's C++ extension machinery (pybind11 + ninja, build-time only).
Build flags: -O3 -fopenmp -std=c++17 -g0, and no -march: the AVX2+FMA kernels
are compiled in their own translation unit under `#pragma GCC target` and
chosen at run time, so a wheel built on an AVX2 machine runs on one without.
The Triton kernels live in the top-level `kernels/` folder and are installed
as the subpackage `mlkd_fast.kernels`. The folder has no __init__.py on purpose:
a regular package named `kernels` at the checkout root would shadow the PyPI
package `kernels` (which transformers >= 5.25 imports) whenever the root is on
sys.path; a namespace portion never shadows a regular package.
"""
import glob
import os

from setuptools import setup

from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def extensions():
    exts = []
    cpp_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
    if cpp_sources:
        exts.append(
            cpp_extension.CppExtension(
                "mlkd_fast._C",
                cpp_sources,
                include_dirs=[os.path.join(HERE, "csrc")],
                # -g0: without it the build is slower and the .so 50x larger.
                extra_compile_args=["-O3", "-fopenmp", "-g0", "-std=c++17"],
                extra_link_args=["-fopenmp"],
            )
        )
    return exts


setup(
    packages=["mlkd_fast", "mlkd_fast.ops", "mlkd_fast.data", "mlkd_fast.train", "mlkd_fast.kernels"],
    package_dir={"mlkd_fast.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
