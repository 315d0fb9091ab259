"""A stand-in for Triton's CUDA driver on a machine without a GPU, for host-side measurements and tests.

Kernels compile for ``GPUTarget("cuda", 90, 32)`` (an H100) with the Triton wheel's own ptxas, exactly as the JIT
would on the device; loading a binary returns dummy handles, and a launch is counted (and, with :data:`record`
set, its launcher arguments appended to :data:`calls`) instead of reaching a GPU. Tensors stay on the CPU (their
``data_ptr`` is all a launcher reads).

    from benchmarks import fake_cuda
    fake_cuda.install()          # before the first launch; TRITON_INTERPRET must not be set

What it measures is everything Python does per launch up to the compiled launcher (``JITFunction.run``: binding,
specialization, the cache key; or ``kernels._launch.launch``'s cache): the launcher itself (a C function,
``cuLaunchKernelEx``) and the CUDA caching allocator are not included.
"""
from __future__ import annotations

import torch

#: One tuple per launch while :data:`record` is true: the arguments the compiled kernel's launcher received.
calls: list = []
#: Whether launches keep their arguments in :data:`calls` (off for timing: a kept tensor reference changes what
#: the autograd engine does with a gradient, it clones instead of taking it). :data:`launches` counts either way.
record = False
launches = 0


class _Launcher:
    """Takes the place of ``CudaLauncher``: records instead of launching."""

    def __init__(self, src, metadata):
        self.global_scratch_size = self.profile_scratch_size = 0
        self.global_scratch_align = self.profile_scratch_align = 1

    def __call__(self, *args):
        global launches
        launches += 1
        if record:
            calls.append(args)


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        return (1, 2, 32, 0, 1024)          # module, function, registers, spills, max threads: dummies

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


class FakeCudaDriver:
    def __init__(self):
        self.utils = _Utils()
        self.launcher_cls = _Launcher

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def is_active(self):
        return True

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import CudaDriver
        return CudaDriver.map_python_to_cpp_type(self, ty)


def install():
    """Make the stand-in Triton's active driver (for this process)."""
    import os
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("fake_cuda.install(): unset TRITON_INTERPRET (the interpreter never reaches a driver)")
    from triton.runtime import driver
    driver.set_active(FakeCudaDriver())
