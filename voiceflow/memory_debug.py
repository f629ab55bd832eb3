"""Memory reports of the web process, for soak tests; off unless configured.

With MEMORY_DEBUG_DIR set (VOICEFLOW_MEMORY_DEBUG_DIR), the process answers SIGUSR2:
it reads `request.json` from that directory, optionally runs a full collection and
`malloc_trim(0)`, and writes `<label>.json` there (RSS, glibc's malloc counters,
pymalloc's arenas, the collector's generations and, on request, live objects by type),
plus `<label>.tracemalloc` when TRACEMALLOC_FRAMES > 0 and a snapshot is asked for.
Nothing is served over HTTP; `bench/soak.py --memory-debug` drives it.
"""

import ctypes
import ctypes.util
import gc
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

REQUEST = "request.json"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc, or before 2.33
        return None


_LIBC = _libc()


def tracing_start(frames: int) -> None:
    """Trace Python allocations with `frames` frames each (0: no tracing)."""
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)


def install(loop, directory: str) -> None:
    """Answer SIGUSR2 on `loop` with a report in `directory`."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    loop.add_signal_handler(signal.SIGUSR2, _answer, directory)
    logger.warning(
        "memory debug reports on SIGUSR2 in %s (tracemalloc %s)",
        directory,
        "on" if tracemalloc.is_tracing() else "off",
    )


def _answer(directory):
    try:
        request = json.loads((Path(directory) / REQUEST).read_text())
        report_write(Path(directory), **request)
    except Exception:
        logger.exception("memory debug report failed")


def report_write(
    directory: Path,
    *,
    label: str,
    snapshot: bool = False,
    types: bool = False,
    collect: bool = False,
    trim: bool = False,
) -> dict:
    """Write `<label>.json` (and `<label>.tracemalloc`) to `directory`; the report."""
    if not re.fullmatch(r"[\w.-]{1,64}", label):
        raise ValueError(f"bad label {label!r}")
    report = {"label": label, "time": time.time(), "pid": os.getpid()}
    if collect:
        started = time.perf_counter()
        report["collected"] = gc.collect()
        report["collect_s"] = time.perf_counter() - started
    if trim and _LIBC is not None:
        report["trimmed"] = _LIBC.malloc_trim(0)
    report.update(proc_status())
    report["malloc"] = mallinfo()
    report["pymalloc"] = pymalloc_stats()
    report["allocated_blocks"] = sys.getallocatedblocks()
    report["gc"] = {
        "count": gc.get_count(),
        "threshold": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "generations": [len(gc.get_objects(n)) for n in range(3)],
        "collections": [s["collections"] for s in gc.get_stats()],
        "collected": [s["collected"] for s in gc.get_stats()],
    }
    if types:
        counts = Counter(_type_name(o) for o in gc.get_objects())
        report["types"] = dict(counts.most_common())
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        report["traced"] = {
            "current": current,
            "peak": peak,
            "overhead": tracemalloc.get_tracemalloc_memory(),
        }
        if snapshot:
            tracemalloc.take_snapshot().dump(str(directory / f"{label}.tracemalloc"))
    path = directory / f"{label}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(report))
    temporary.rename(path)  # the reader never sees half a report
    return report


def _type_name(obj):
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def proc_status() -> dict:
    """VmRSS, RssAnon and VmHWM of this process in bytes (Linux)."""
    fields = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


def mallinfo() -> dict:
    """glibc's counters: bytes in use (`uordblks`, plus mmapped `hblkhd`) and bytes
    held free (`fordblks`), which RSS keeps until they are trimmed."""
    if _LIBC is None:
        return {}
    info = _LIBC.mallinfo2()
    return {field[0]: getattr(info, field[0]) for field in _MallInfo2._fields_}


_PYMALLOC_FIELDS = {
    "# arenas allocated current": "arenas",
    "# arenas highwater mark": "arenas_highwater",
    "# bytes in allocated blocks": "allocated",
    "# bytes in available blocks": "available",
    "# bytes lost to pool headers": "pool_headers",
    "# bytes lost to quantization": "quantization",
}
_POOLS = re.compile(r"^(\d+) unused pools \* (\d+) bytes")
_ARENAS = re.compile(r"^(\d+) arenas \* (\d+) bytes/arena")


def pymalloc_stats() -> dict:
    """pymalloc's arenas (sys._debugmallocstats, which writes to fd 2): bytes in
    objects, free in partly used pools, and in unused pools of live arenas."""
    with tempfile.TemporaryFile(mode="w+") as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.rpartition("=")
        key = _PYMALLOC_FIELDS.get(name.strip())
        if key:
            stats[key] = int(value.replace(",", "").strip())
        elif match := _POOLS.match(line):
            stats["unused_pools"] = int(match[1]) * int(match[2])
        elif match := _ARENAS.match(line):
            stats["arena_bytes"] = int(match[1]) * int(match[2])
    return stats
