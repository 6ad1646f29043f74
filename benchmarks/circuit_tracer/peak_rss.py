"""Peak resident memory of this process while a block runs, sampled from /proc (both sides of the circuit-tracer
comparison import this file: torch's CPU allocations are invisible to tracemalloc, so RSS it is).

    with PeakRSS() as mem:
        work()
    mem.peak_mb - mem.base_mb   # the block's peak above what the process held when it started
"""
from __future__ import annotations

import threading


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


class PeakRSS:
    """Samples RSS every `interval` seconds in a thread while the block runs (torch releases the GIL in its ops)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.base_mb, self.peak_mb = interval, 0.0, 0.0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.base_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        return False

    @property
    def added_mb(self) -> float:
        return self.peak_mb - self.base_mb
