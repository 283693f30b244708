"""The ZeroGPU adapter: on a ZeroGPU Space the job body runs under ``spaces.GPU``.

Only the GPU work crosses into the GPU window (the base model and the data are built before
it); the window asked for is the job's estimate, capped by ``Settings.zerogpu_max_s``. Off
ZeroGPU, ``gpu_wrapped`` returns the function itself and ``spaces`` is never imported.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterator

GPU_MARGIN = 1.5  # the estimate is rough: ask for half as much again


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space: ``spaces`` is importable and ``SPACES_ZERO_GPU`` is true."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def gpu_seconds(estimate_s: float, cap_s: int) -> int:
    """The GPU window to ask for a job estimated at ``estimate_s`` on the GPU."""
    return min(cap_s, math.ceil(GPU_MARGIN * estimate_s) + 10)


def gpu_wrapped(fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """``fn`` under ``spaces.GPU`` on ZeroGPU, its window read from the call's ``gpu_s``
    keyword; ``fn`` itself elsewhere. Call at import time: ``spaces`` must decorate before the
    app launches."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=lambda *args, gpu_s, **kwargs: gpu_s)(fn)
