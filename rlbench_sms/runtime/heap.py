"""Keep freed heap memory in an inference process for the next call (glibc malloc settings).

Every policy call allocates and frees the same few-MB tensors: the frames as float, the resized and
padded images, the vision activations. With glibc's defaults those blocks go back to the kernel as
they are freed (blocks above the mmap threshold are unmapped, and the top of the heap is trimmed
past the trim threshold), so the next call page-faults all of them in again: about 9 ms of a 50 ms
tiny-policy chunk on this 2-core CPU (benchmarks/policy_latency.py). Raising both thresholds keeps that memory in the process,
where the next call reuses it. The price is that the process keeps up to ``TRIM_THRESHOLD_BYTES``
of freed memory instead of returning it. It changes no value that is computed.

The setting is process-wide and applied once. Where the C library is not glibc (macOS, musl) it
does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused: glibc's largest allowed value on 64-bit
# (half its 64 MiB heap size), far above a policy's per-call tensors.
MMAP_THRESHOLD_BYTES = 32 * 2**20
# Free memory at the top of the heap kept for reuse before glibc returns it to the kernel.
TRIM_THRESHOLD_BYTES = 256 * 2**20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc took both (False elsewhere)."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; fixing the mmap threshold also ends glibc's own adjusting of both.
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD_BYTES))
    if not applied:
        log.debug("glibc refused the malloc thresholds; freed memory goes back to the kernel as before")
    return applied


__all__ = ["retain_freed_memory", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES"]
