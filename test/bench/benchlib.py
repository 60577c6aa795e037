"""What the Python benchmarks share: waiting for a quiet machine before a
timing is taken (a benchmark prints figures; on a shared machine the
neighbours' load is what moves them most)."""
import time


def cpu_idle(window=0.5):
    """Fraction of CPU time idle over `window` seconds, all cores."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = sample()
    time.sleep(window)
    i1, t1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def settle(limit=5.0, idle=0.9, window=0.5):
    """Waits (at most `limit` seconds) until the machine is at least `idle`
    idle; returns the last reading."""
    start = time.monotonic()
    now = cpu_idle(window)
    while now < idle and time.monotonic() - start < limit:
        now = cpu_idle(window)
    return now
