"""Child processes of a training job (DataLoader workers) must start in any sweep launcher.

A multiprocessing child adopts the start method its parent started it with (``BaseProcess._bootstrap``
forces it), so its own children start the same way. joblib's loky workers (``hydra/launcher=joblib``)
are started with loky's own method, ``"loky"``, whose ``Popen`` only handles loky's process class:
a plain ``multiprocessing.Process`` started there (every DataLoader worker) fails with
``AttributeError: 'Process' object has no attribute 'env'``, and a spawn/forkserver child is told to
use a start method it cannot find. The other joblib backends are no way out: ``multiprocessing``
workers are daemonic (no children allowed) and ``threading`` would run Hydra jobs, which change
process-wide state, side by side in one process.
"""

from __future__ import annotations

import logging
import multiprocessing

log = logging.getLogger(__name__)
# The standard library's start methods (not `get_all_start_methods()`: newer Pythons list every
# registered context there, loky's included).
STANDARD_START_METHODS = ("fork", "spawn", "forkserver")


def restore_standard_start_method() -> str | None:
    """Reset this process's default start method to the platform's when a launcher left it set to
    one the standard library does not know (loky's); returns the replaced method, else ``None``.

    A no-op in a plain run, where the method is unset or one the user chose (fork, spawn, forkserver).
    """
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None or current in STANDARD_START_METHODS:
        return None
    multiprocessing.set_start_method(None, force=True)   # None: the platform default, chosen lazily
    log.debug("multiprocessing start method %r (set by the launcher) reset to the platform default %r",
              current, multiprocessing.get_start_method())
    return current
