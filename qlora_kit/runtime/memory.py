"""Peak memory of this process.

Why not `resource.getrusage(...).ru_maxrss` alone: on Linux it survives fork+exec, so a child started by a big
parent (a test runner or a benchmark driver that built a model) reports the parent's RSS as its own peak.
VmHWM in /proc/self/status belongs to the address space, which exec replaces, so it is this program's own peak.
"""

from __future__ import annotations

import resource


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM:")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux (bytes on macOS: rarely used)


def current_rss_bytes() -> int | None:
    """Resident memory now (Linux; None elsewhere)."""
    return _status_bytes("VmRSS:")
