"""What both sides of the circuit-tracer comparison measure, the same way (each side imports this file):
wall and CPU seconds per graph, and the peak resident memory of the first graph, sampled from /proc (torch's CPU
allocations are invisible to tracemalloc, so RSS it is).

    with PeakRSS() as mem:
        work()
    mem.added_mb   # the block's peak above what the process held when it started
    graph, meta = timed(run, repeats=3)
"""
from __future__ import annotations

import statistics
import threading
import time


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


def timed(run, repeats: int):
    """(the first call's result, {seconds, cpu_seconds and their medians over `repeats` more calls, the first
    call's peak memory}): the first call is cold and gives the memory; the medians are of the warm ones."""
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    seconds, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, {"first_seconds": first, "seconds": seconds, "median_seconds": statistics.median(seconds or [first]),
                 "first_cpu_seconds": first_cpu, "cpu_seconds": cpu,
                 "median_cpu_seconds": statistics.median(cpu or [first_cpu]),
                 "peak_rss_mb": mem.peak_mb, "added_rss_mb": mem.added_mb}
