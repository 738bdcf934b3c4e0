"""How many CPUs this process may use: its affinity mask, capped by the cgroup CPU quota
(v2 ``cpu.max`` at every level up to the root, or v1 ``cpu.cfs_quota_us``)."""
import math
import os

__all__ = ["usable_cpus", "cgroup_cpu_limit", "cgroup_v1_limit", "cgroup_v2_limit"]

def cgroup_v2_limit(cpu_max_text):
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), or None."""
    parts = cpu_max_text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def cgroup_v1_limit(quota_text, period_text):
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_paths(proc_cgroup_text):
    """{controller or "" (v2): path} from /proc/self/cgroup."""
    paths = {}
    for line in proc_cgroup_text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPU quota of this process's cgroup (walking up to the root), or None."""
    try:
        with open(proc_cgroup) as f:
            paths = _own_cgroup_paths(f.read())
    except OSError:
        paths = {}
    limits = []
    if "" in paths:  # cgroup v2: every level's cpu.max caps the ones below it
        path = paths[""]
        while True:
            text = _read(os.path.join(root, path.lstrip("/"), "cpu.max"))
            if text is not None:
                limits.append(cgroup_v2_limit(text))
            if path in ("/", ""):
                break
            path = os.path.dirname(path)
    for controller in ("cpu", "cpu,cpuacct"):
        if controller in paths:
            for base in (os.path.join(root, "cpu,cpuacct"), os.path.join(root, "cpu")):
                here = os.path.join(base, paths[controller].lstrip("/"))
                for directory in (here, base):
                    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
                    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
                    if quota is not None and period is not None:
                        limits.append(cgroup_v1_limit(quota, period))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def usable_cpus(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """min(affinity, ceil(cgroup quota)), never below 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
