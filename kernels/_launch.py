"""Launching compiled Triton kernels without ``JITFunction.run``'s per-call work.

``kernel[grid](*args, **constexprs)`` costs 25-40 us of host time per launch on the H100 host (session 7,
``results/bench/host-breakdown-*-cuda.log``), most of it in ``JITFunction.run`` before the launcher is reached:
reading knobs from the environment, binding and specializing every argument, and building the cache key
(``benchmarks/host_launch.py --device cpu`` measures that part without a GPU, on a 2-core EPYC: 9.2-12.1 us per
launch of the matrix-free products through ``JITFunction.run``, 5.2-6.8 us through the cache; 15-33 vs 7-16 us
for the scan's, which take ~60 arguments). At L = 512 a matrix-free product's forward and backward are 6 such
launches, a large part of the eager time (the GPU work is ~0.4 ms).

:func:`launch` keeps its own cache of the ``CompiledKernel`` objects that ``JITFunction.run`` returns, keyed by
what Triton specializes on, or finer (tensors: dtype and 16-byte alignment; everything else by type and value; see
:func:`key_parts`), the constexprs, the launch options and the device.
A hit calls the compiled kernel's launcher with the arguments ``JITFunction.run`` passes it (grid, stream, function,
packed metadata, launch metadata and the launch hooks, then every parameter in signature order), except that
tensors go as their addresses (ints, which the launcher takes without a driver call per pointer); a miss
goes through ``kernel[grid](...)``, which compiles or finds the kernel, launches it, and returns it for the cache.
``tests/kernels/test_launch.py`` checks both halves on Triton's own code without a GPU: the key is at least as fine
as Triton's specialization (``native_specialize_impl``) on a catalogue of values, and, with a recording stand-in
for the CUDA driver, a hit hands the launcher the same arguments as ``kernel[grid](...)``.

Not carried over from ``JITFunction.run``: its pre-run hooks (a kernel that has any is never cached), its check
that the module globals a kernel reads have not changed since it was compiled (our kernels read constexpr globals
only at compile time, and never change them), and its per-call reading of the debug and instrumentation knobs (a
kernel cached before ``TRITON_DEBUG`` changes at run time keeps its compiled form; ``clear_cache()`` drops them). The interpreter (``TRITON_INTERPRET=1``), autotuned kernels and
tracing by ``torch.compile`` take the ordinary path. ``MIXERZOO_DIRECT_LAUNCH=0`` turns the cache off (every
launch then goes through ``JITFunction.run``), for comparisons.
"""
from __future__ import annotations

import operator
import os

import torch
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import JITFunction

#: Read once: whether a cache hit may bypass ``JITFunction.run``.
DIRECT = os.environ.get("MIXERZOO_DIRECT_LAUNCH", "1").strip().lower() not in ("0", "off", "false", "")

_CACHE: dict = {}
_CACHE_MAX = 4096   # distinct (kernel, specialization) keys; cleared when exceeded (a miss then goes through
#                     JITFunction.run, whose own cache still holds the compiled kernel)
_Tensor = torch.Tensor


def key_parts(args):
    """(values, spec) of a launch's runtime arguments.

    values: what the launcher gets, plain tensors as their addresses (an int goes through as it is; given a tensor,
    the launcher calls data_ptr() and asks the driver to translate the address, cuPointerGetAttribute, once per
    pointer argument and launch; the products have checked that their tensors are on the GPU).
    spec: the cache key's part for them. Triton specializes a tensor on its dtype and whether its address is a
    multiple of 16, so that is its key; everything else is keyed by its value (ints with their type, so that
    True, 1 and 1.0 differ as Triton's specializations do). Keying an int by value is finer than Triton (which
    looks at == 1, divisibility by 16 and range): a new stride or length is one miss, which JITFunction.run
    serves from its own cache, and cheap to compute, the scan kernels take ~60 arguments, mostly strides.
    """
    # (exact type tests first: isinstance per argument costs twice as much, and plain tensors and ints are nearly
    # every argument; a tensor subclass, e.g. a Parameter, goes to the launcher as it is and is keyed in _other_key)
    values = tuple([a.data_ptr() if type(a) is _Tensor else a for a in args])
    spec = tuple([(a.dtype, v & 15 == 0) if type(a) is _Tensor else v if type(a) is int else _other_key(a)
                  for a, v in zip(args, values)])
    return values, spec


def _other_key(a):
    if isinstance(a, _Tensor):
        return (type(a), a.dtype, a.data_ptr() & 15 == 0)
    return (type(a), a)


def launch(fn, grid, *args, **kwargs):
    """``fn[grid](*args, **kwargs)``, through the cached compiled kernel where possible (see the module docstring).

    ``args`` are the kernel's leading runtime arguments, positionally; ``kwargs`` all its remaining parameters by
    name (constexprs included, no defaults) and the launch options (``num_warps``, ``num_stages``, ...). ``grid``
    is a tuple of 1-3 ints.
    """
    if not DIRECT or type(fn) is not JITFunction or fn.pre_run_hooks or torch.compiler.is_compiling():
        return fn[grid](*args, **kwargs)      # (under torch.compile: the form dynamo traces as a Triton kernel)
    active = driver.active
    device = active.get_current_device()
    values, spec = key_parts(args)
    key = (id(fn), device, spec, *kwargs.items())
    try:
        hit = _CACHE.get(key)
    except TypeError:                      # an unhashable argument: no cache for this launch
        return fn[grid](*args, **kwargs)
    if hit is None:
        kernel = fn[grid](*args, **kwargs)
        if kernel is not None:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key] = (kernel, _constexpr_getter(fn, args, kwargs))
        return kernel
    kernel, constexprs = hit
    stream = active.get_current_stream(device)
    # every parameter in signature order: the runtime arguments, then the rest (as JITFunction.run binds them)
    params = values + constexprs(kwargs)
    n = len(grid)
    kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream, kernel.function,
               kernel.packed_metadata, kernel.launch_metadata(grid, stream, *params), knobs.runtime.launch_enter_hook,
               knobs.runtime.launch_exit_hook, *params)
    return kernel


def _constexpr_getter(fn, args, kwargs):
    """kwargs -> the values of the parameters after the positional ones, in signature order (a tuple); each must be
    in kwargs (the direct path applies no defaults)."""
    names = fn.arg_names[len(args):]
    missing = [n for n in names if n not in kwargs]
    if missing:
        raise TypeError(f"launch({fn.__name__}): pass every parameter after the positional ones by name; "
                        f"missing {missing}")
    if not names:
        return lambda kw: ()
    get = operator.itemgetter(*names)
    return get if len(names) > 1 else (lambda kw: (get(kw),))


def clear_cache():
    """Forget every cached kernel (the next launch of each goes through ``JITFunction.run`` again)."""
    _CACHE.clear()
