"""The host side of a gateway: the TUN device, its routes and the sockets, through the
interfaces every Linux system has (/dev/net/tun, iproute2's `ip`, /proc/sys, sockets).

Nothing here touches packets. Every function raises :class:`NetError` with a message that
says what failed and what to check.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess

from fastpath import netio

__all__ = ["NetError", "Tun", "Routes", "outer_socket", "raw_ip_socket", "icmp_watch_socket", "device_of",
           "is_local", "sysctl", "set_sysctl"]

log = logging.getLogger("ipsp.gateway")

# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUNSETOFFLOAD = 0x400454D0          # _IOW('T', 208, unsigned int)
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6 = 0x01, 0x02, 0x04
_SOL_RAW = 255
_ICMP_FILTER = 1                 # linux/icmp.h: a bit set per ICMP type to drop
_ICMP_DEST_UNREACH = 3
_IPPROTO_ESP = 50
_SO_ATTACH_FILTER = 26
_SOCKBUF = 4 << 20               # room for bursts on the outer socket


class NetError(OSError):
    """Setting up the host's side failed; the message says what and why."""


def _ip(*args: str) -> str:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NetError("the `ip` command (iproute2) is not installed") from None
    if r.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def sysctl(path: str) -> str | None:
    """A /proc/sys value ('net/ipv4/ip_forward'), None if it does not exist."""
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def set_sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise NetError(f"cannot set {path.replace('/', '.')} = {value}: {exc.strerror}") from None


class Tun:
    """A TUN device (IFF_TUN | IFF_NO_PI: bare IP packets), created if absent, up with *mtu*;
    its descriptor is non-blocking. Closing a device this process created removes it.

    With *offload* (the default) it is opened with IFF_VNET_HDR and TUNSETOFFLOAD
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, as wireguard-go does: every read and write carries
    a struct virtio_net_hdr, and a read may be a TCP super-packet that netio.tun_read_burst
    splits (``vnet_hdr`` True; pass it and ``scratch`` to the netio TUN calls). A kernel
    that refuses the offloads gets a plain device (``vnet_hdr`` False)."""

    def __init__(self, name: str, mtu: int, *, txqueuelen: int = 1000, offload: bool = True):
        self.name = name
        self.vnet_hdr = False
        self.scratch = netio.TunScratch()
        existed = os.path.exists(f"/sys/class/net/{name}")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise NetError(f"cannot open /dev/net/tun: {exc.strerror} (the tun module, and root or CAP_NET_ADMIN)") from None
        flags = _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if offload else 0)
        try:
            fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        except OSError as exc:
            os.close(self.fd)
            why = {errno.EBUSY: "another process has it open", errno.EINVAL: "it exists and is not a TUN device",
                   errno.EPERM: "permission denied (root or CAP_NET_ADMIN)"}.get(exc.errno, exc.strerror)
            raise NetError(f"cannot attach TUN device {name}: {why}") from None
        if offload:
            try:
                fcntl.ioctl(self.fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6)
                self.vnet_hdr = True
            except OSError as exc:
                # the header stays (IFF_VNET_HDR is set), only without offloads: reads are
                # then never super-packets, and the header is still parsed and written
                log.warning("TUN %s: TUNSETOFFLOAD refused (%s): one packet per read", name, exc.strerror)
                self.vnet_hdr = True
        self.created = not existed
        try:
            # no IPv6 link-local address: the kernel then sends no DAD or router
            # solicitations into the tunnel (netio.tun_read_burst skips its MLD reports)
            _ip("link", "set", "dev", name, "addrgenmode", "none")
        except NetError:
            pass                      # IPv6 off on this host: nothing to keep quiet
        try:
            _ip("link", "set", "dev", name, "mtu", str(mtu), "txqueuelen", str(txqueuelen), "up")
        except NetError:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Routes:
    """The routes that send the remote protected prefixes into the TUN device. Only the ones
    this object installed are removed again."""

    def __init__(self, device: str):
        self.device = device
        self.installed: dict[str, str | None] = {}     # prefix -> preferred source

    def apply(self, prefixes, sources: dict[int, str | None]) -> None:
        """Make the installed routes exactly *prefixes*: add the new ones (`ip route
        replace`: an older route to the same prefix is taken over), then remove the rest.
        sources: a preferred source per IP version (the inner-side address, if this host
        has it), so the host's own packets into the tunnel match the policies."""
        wanted = {str(p): sources.get(ipaddress.ip_network(p).version) for p in prefixes}
        for prefix, src in wanted.items():
            if self.installed.get(prefix, ...) != src:
                _ip("route", "replace", prefix, "dev", self.device, *(["src", src] if src else []))
                self.installed[prefix] = src
        for prefix in [p for p in self.installed if p not in wanted]:
            self._delete(prefix)

    def remove_all(self) -> None:
        for prefix in list(self.installed):
            try:
                self._delete(prefix)
            except NetError as exc:
                log.warning("%s", exc)

    def _delete(self, prefix: str) -> None:
        self.installed.pop(prefix, None)
        if not os.path.exists(f"/sys/class/net/{self.device}"):
            return                    # the device is gone, and its routes with it
        _ip("route", "del", prefix, "dev", self.device)


def device_of(address) -> str | None:
    """The interface that holds *address*, if any."""
    for link in json.loads(_ip("-j", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local") == str(address):
                return link.get("ifname")
    return None


def is_local(address) -> bool:
    """Whether this host has *address* (a bind to it succeeds)."""
    family = socket.AF_INET6 if ipaddress.ip_address(str(address)).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(address), 0))
            return True
        except OSError:
            return False


def outer_socket(kind: str, local, port: int, *, df: bool = False, shared: bool = False) -> socket.socket:
    """The outer socket, bound to *local*: UDP on *port* (ESP in UDP) or raw IP protocol 50.
    DF clear (with *df*: DF set, IP_PMTUDISC_PROBE), IP_RECVERR on (netio.setup_outer_socket);
    blocking, so sends wait for room (receives use MSG_DONTWAIT). *shared*: SO_REUSEPORT, so
    the DF-set UDP socket can share the port with the DF-clear one (the gateway reads both).
    A DF-set raw socket gets a filter that drops every packet: the DF-clear one already
    receives a copy of each, its error queue is all that is read."""
    address = ipaddress.ip_address(str(local))
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    if kind == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
    else:
        s = socket.socket(family, socket.SOCK_RAW, _IPPROTO_ESP)
    try:
        if shared and kind == "udp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if df and kind != "udp":
            _drop_all(s)
            while True:             # what arrived before the filter
                try:
                    s.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        if kind == "udp":
            s.bind((str(address), port))
        else:
            s.bind((str(address), 0))
        netio.setup_outer_socket(s.fileno(), family, kind == "udp", df)
        for opt, forced in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):    # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            try:
                s.setsockopt(socket.SOL_SOCKET, forced, _SOCKBUF)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
    except OSError as exc:
        s.close()
        what = f"UDP port {port} on {address}" if kind == "udp" else f"raw ESP (protocol 50) on {address}"
        hint = " (is the address configured on an interface?)" if exc.errno == errno.EADDRNOTAVAIL else ""
        raise NetError(f"cannot open {what}: {exc.strerror}{hint}") from None
    return s


def _drop_all(s: socket.socket) -> None:
    # SO_ATTACH_FILTER with classic BPF "ret #0": nothing reaches the receive queue
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))     # BPF_RET | BPF_K
    prog = struct.pack("HL", 1, ctypes.addressof(insn))                        # struct sock_fprog
    s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)


def raw_ip_socket(version: int, device: str | None) -> socket.socket | None:
    """An IPPROTO_RAW socket for whole IP packets (BYPASS traffic), bound to the outer
    *device*: a route lookup that ignored the device would find the route into the TUN and
    loop the packet. None if the host has no such family."""
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as exc:
        log.debug("no raw IPv%d socket: %s", version, exc.strerror)
        return None
    try:
        if device:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    except OSError as exc:
        s.close()
        raise NetError(f"cannot bind a raw IPv{version} socket to {device}: {exc.strerror}") from None
    return s


def icmp_watch_socket() -> socket.socket:
    """A raw ICMP socket that sees only "destination unreachable" (ICMP_FILTER): with DF
    clear the kernel does not queue "fragmentation needed" on a UDP socket (it reports it
    only where DF was set), so the gateway reads such reports here. Non-blocking."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << _ICMP_DEST_UNREACH) & 0xFFFFFFFF))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s
