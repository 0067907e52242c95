"""What every network-namespace test needs (tests/gateway, tests/ike and bench/): running
commands, waiting for a condition, and whether this machine can run them at all. Registered as
module ``nslib`` by tests/conftest.py; loaded by path where that conftest does not run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path


def sh(*cmd, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a command (text mode, output captured); raise AssertionError with its output when it
    fails and *check*. *kw* goes to subprocess.run (input, env, ...)."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def until(predicate, timeout: float, what: str, interval: float = 0.02):
    """predicate()'s first true value, polled until *timeout* seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_text(read, regex: str, timeout: float, start: int, what: str) -> re.Match:
    """The first match of *regex* (re.M) in read() from character offset *start*, polled (a
    log file that grows); AssertionError naming *what* on timeout."""
    pattern = re.compile(regex, re.M)
    deadline = time.monotonic() + timeout
    while True:
        m = pattern.search(read(), start)
        if m:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{regex!r} not in {what} within {timeout:g} s")
        time.sleep(0.02)


def unavailable(prefix: str) -> str | None:
    """None when this process can make network namespaces with veth links and TUN devices
    (tried with a probe namespace named from *prefix*), else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, TUN)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        return f"needs /dev/net/tun: {exc}"
    probe = f"{prefix}{os.getpid()}-probe"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name: str) -> None:
    # whatever still runs inside keeps the namespace alive: stop it first, by pid
    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", name, check=False)


def delete_stale(prefix: str, tmp: str = "/tmp") -> list[str]:
    """Namespaces <prefix><pid>-<role> and directories /tmp/<prefix><pid>-* of earlier runs
    whose process is gone (a run killed before its teardown)."""
    gone = []
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)-[\w.-]+", name)
        if m and int(m[1]) != os.getpid() and not alive(int(m[1])):
            delete_namespace(name)
            gone.append(name)
    for d in Path(tmp).glob(f"{prefix}*-*"):
        m = re.match(rf"{re.escape(prefix)}(\d+)-", d.name)
        if m and d.is_dir() and int(m[1]) != os.getpid() and not alive(int(m[1])):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(str(d))
    return gone


def free_udp_ports(n: int) -> int:
    """The first of *n* consecutive UDP ports free on 127.0.0.1 now (the test skips if none)."""
    import socket

    import pytest

    for port in range(31000, 60000, 11):
        try:
            for p in range(port, port + n):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    pytest.skip("no free UDP ports")
