"""Where a stage's time and memory went: one `time:` line and one `peak memory:` line per run."""
import contextlib
import os
import re
import resource
import time
from collections import defaultdict

import torch


def process_age():
    """Seconds since this process started (Linux /proc; None elsewhere): interpreter start-up and
    imports included, which an in-process timer cannot see."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PhaseClock:
    """Wall-clock seconds per phase of a run (load, train, val, ...), summed over calls."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds = defaultdict(float)
        self.last = 0.0  # duration of the most recent timed block, for per-epoch lines
        self.t0 = time.perf_counter()
        self.startup = process_age()  # interpreter + imports, up to this reset (a stage's setup())

    @contextlib.contextmanager
    def __call__(self, phase):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.last = time.perf_counter() - t
            self.seconds[phase] += self.last

    def line(self):
        total = time.perf_counter() - self.t0
        parts = [f"{k} {v:.2f}s" for k, v in self.seconds.items()]
        parts.append(f"other {max(total - sum(self.seconds.values()), 0.0):.2f}s")
        head = f"time: start-up {self.startup:.2f}s, " if self.startup is not None else "time: "
        total += self.startup or 0.0
        return head + ", ".join(parts) + f"; total {total:.2f}s"

    @staticmethod
    def parse(text):
        """The phases of the last `time:` line in `text` (a stage's output), as {phase: seconds}."""
        lines = re.findall(r"^time: (.*)$", text, flags=re.M)
        return {k: float(v) for k, v in re.findall(r"([a-z][a-z -]*?) ([\d.]+)s", lines[-1])} if lines else {}


clock = PhaseClock()


def memory_line(device):
    """Peak resident memory of this process, and peak GPU memory when on CUDA."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    line = f"peak memory: RSS {rss:.2f} GiB"
    if device.type == "cuda":
        line += f", GPU {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return line
