"""Build script for the compiled parts of mlkd_fast.

`mlkd_fast._C` (CPU relation kernels, csrc/*.cpp) is always built with
torch's C++ extension machinery (pybind11 + ninja). A CUDA extension
(`mlkd_fast._C_cuda`, csrc/cuda/*.cu) is built only when the installed torch is
a CUDA build *and* a CUDA toolkit is found; it is imported optionally.
The Triton kernels live in the top-level `kernels/` folder and are installed
as the subpackage `mlkd_fast.kernels`.
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
    cuda_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    import torch

    if cuda_sources and torch.version.cuda and cpp_extension.CUDA_HOME:
        exts.append(
            cpp_extension.CUDAExtension(
                "mlkd_fast._C_cuda",
                cuda_sources,
                extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3"]},
            )
        )
    return exts


setup(
    packages=["mlkd_fast", "mlkd_fast.ops", "mlkd_fast.kernels"],
    package_dir={"mlkd_fast.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
