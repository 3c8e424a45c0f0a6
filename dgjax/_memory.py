"""How much memory a run may use, and refusing sizes that cannot fit up front (core layer).

An array too large for memory otherwise fails deep inside XLA: after minutes of work, or with an abort
("Check failed", SIGABRT) that no Python code can catch (issue 24, item 10). The checks here compare a
*lower bound* on the bytes a computation needs with the memory of the device it runs on, so they refuse
only what certainly cannot fit.
"""

from __future__ import annotations

import os

import jax

from .errors import InvalidArgument

GiB = float(1 << 30)


def _host_memory() -> tuple[int | None, int | None]:
    """(total, available) physical memory of this machine in bytes (psutil if installed, else sysconf)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        try:
            avail = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            avail = None
        return total, avail
    except (ValueError, OSError, AttributeError):
        return None, None


def memory_limit() -> tuple[int | None, str]:
    """The memory the default device can hold, in bytes (None if unknown), and a description of it: the
    accelerator's ``bytes_limit`` (``memory_stats``), or the host's physical memory on the CPU backend."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # backends without memory statistics
            stats = {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]), f"{stats['bytes_limit'] / GiB:.1f} GiB on {device.device_kind}"
    total, avail = _host_memory()
    if total is None:
        return None, "unknown"
    return total, (f"{total / GiB:.1f} GiB of memory on this machine"
                   + (f", {avail / GiB:.1f} GiB of it available now" if avail is not None else ""))


def check_fits_in_memory(nbytes: float, what: str, fix: str) -> None:
    """Raise ``InvalidArgument`` when ``nbytes`` (a lower bound on what ``what`` needs) exceeds the memory
    of the device (``memory_limit``); the message gives both figures and ``fix``."""
    limit, desc = memory_limit()
    if limit is not None and nbytes > limit:
        raise InvalidArgument(f"{what} needs at least {nbytes / GiB:,.1f} GiB of memory, more than there is "
                              f"({desc}); {fix}")
