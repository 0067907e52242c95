"""What every network-namespace test needs (tests/gateway, tests/ike and bench/): running
commands, waiting for a condition, and whether this machine can run them at all. Registered as
module ``nslib`` by tests/conftest.py; loaded by path where that conftest does not run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time


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
