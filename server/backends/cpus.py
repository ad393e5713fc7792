"""How many CPUs the server's process may use, for the thread pools of the tensor backends.

ONNX Runtime and torch size their pools from the machine: ONNX Runtime counts every physical
core and pins a thread to each whatever the process's CPU set (under ``taskset -c 0`` a pool
thread ran on CPU 1; in a container's cpuset the pins fail with errors), and both ignore the
CPU quota of a container (a pod limited to 4 CPUs on a node with 32 physical cores gets 32
threads per pool). Here a process limited by its CPU set or its cgroup's quota, as joblib
counts them, gets that many threads.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def limited_cpus() -> int | None:
    """The CPUs this process may use when its CPU set or its cgroup's CPU quota (or joblib's
    ``LOKY_MAX_CPU_COUNT``) allows fewer than the machine has; None when nothing limits it."""
    from joblib import cpu_count

    usable = max(1, cpu_count())
    return usable if usable < (os.cpu_count() or usable) else None


@functools.cache
def default_intra_op_threads() -> int:
    """An intra-op pool's size when the model gives none: the CPUs this process may use when
    it is limited, otherwise the machine's physical cores, as ONNX Runtime and torch count."""
    import psutil

    return limited_cpus() or psutil.cpu_count(logical=False) or os.cpu_count() or 1
