"""JAX's persistent compilation cache, on by default for the experiments.

A second start of the same run (a resume, another seed, the same model on another dataset of the
same shapes) loads its compiled steps from disk instead of compiling them again. The cache holds
native code for this machine's CPU/GPU, so the default directory is keyed by the machine: a home
directory shared by cluster nodes with different CPUs never hands one node another's code.

    JAXCNN_COMPILATION_CACHE=0          # off
    JAXCNN_COMPILATION_CACHE=DIR        # this directory (used as it is)
    (unset)                             # $XDG_CACHE_HOME or ~/.cache, then jaxcnn/xla-<machine>

A directory set through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) wins over all of these.
"""

from __future__ import annotations

import hashlib
import os
import platform

__all__ = ["default_cache_dir", "enable_compilation_cache"]

_OFF = ("0", "off", "false", "no", "")


def _machine_key() -> str:
    """A short, stable name for this machine's instruction set: architecture + CPU flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    digest = hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]
    return f"{platform.machine()}-{digest}"


def default_cache_dir() -> str | None:
    """The directory :func:`enable_compilation_cache` uses when given none (None: disabled by
    ``JAXCNN_COMPILATION_CACHE=0``)."""
    env = os.environ.get("JAXCNN_COMPILATION_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF else env
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxcnn", f"xla-{_machine_key()}")


def enable_compilation_cache(
    path: str | None = None, min_compile_time_secs: float = 1.0
) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default
    :func:`default_cache_dir`) for programs that took at least ``min_compile_time_secs`` to
    compile (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``, when set, wins); call it before the
    first compilation. Returns the directory in use, or None when
    the cache is off. A directory already set through JAX is kept (and returned)."""
    import jax

    current = getattr(jax.config, "jax_compilation_cache_dir")  # not in its type stub
    if current:
        return current
    path = path or default_cache_dir()
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    return path
