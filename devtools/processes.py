"""A TorchServe's processes (the Java frontend and its Python model workers), their CPU seconds and memory."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from urllib.parse import urlsplit

import psutil

WORKER_SCRIPT = "ts/model_service_worker.py"  # what every TorchServe model worker runs
PID_FILE = ".model_server.pid"  # the frontend's pid, which TorchServe writes into $TMPDIR


def frontend_pid(workdir: Path) -> int:
    """The Java frontend of the TorchServe started with ``TMPDIR=workdir`` (as devtools.torchserve does)."""
    return int((Path(workdir) / PID_FILE).read_text().strip())


def is_worker(process: psutil.Process) -> bool:
    try:
        return any(WORKER_SCRIPT in part for part in process.cmdline())
    except psutil.Error:
        return False


def workers_of(frontend: int) -> list[psutil.Process]:
    """The model worker processes a TorchServe frontend started, by pid."""
    try:
        children = psutil.Process(frontend).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return sorted((p for p in children if is_worker(p)), key=lambda p: p.pid)


def worker_pids(workdir: Path) -> list[int]:
    """The model workers of the TorchServe started in ``workdir``."""
    return [p.pid for p in workers_of(frontend_pid(workdir))]


def worker_pids_serving(url: str) -> list[int]:
    """The model workers of the TorchServe whose inference address is ``url`` (one not started here)."""
    port = urlsplit(url).port
    listeners = [
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    if not listeners or listeners[0] is None:
        return []
    return [p.pid for p in workers_of(listeners[0])]


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of one running process."""
    times = process.cpu_times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU seconds of the finished children of this process (a client command run as one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_seconds(pid: int, prefix: str = "") -> float:
    """CPU seconds of a process's threads whose name starts with ``prefix`` (all threads: "")."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(prefix):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except OSError:
            pass
    return total


def own_and_machine_cpu_seconds() -> tuple[float, float]:
    """(this process, whole machine) CPU seconds used so far: the difference is what others used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return usage.ru_utime + usage.ru_stime, (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The most resident memory a process has had, in bytes (VmHWM: a child's own, unlike getrusage)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pids: list[int]) -> int:
    """Resident memory of these processes now, in bytes; those that ended count 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total
