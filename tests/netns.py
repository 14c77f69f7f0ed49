"""Hosts for multi-host tests: network namespaces on one bridge, or this machine's loopback.

A :class:`Host` is where a process runs; ``host.command(argv)`` is the command
line that runs ``argv`` there. On a namespace host that is ``ip netns exec NS
unshare --uts sh -c 'hostname NAME && exec "$@"' …``: its own network (one
veth on the bridge, its own ``lo``) and its own host name, so ``socket.gethostname()``
differs per host the way it does on real machines. Pids stay shared with the
test (one pid namespace), so the test can check a host's processes by pid and
create time with psutil.

:class:`Network` builds the topology with iproute2 only: a bridge in a
namespace of its own, one namespace per host with a veth pair into the bridge,
and addresses from a private /24 picked at random among those this machine
does not route. The test process itself reaches the hosts through one more veth
pair, from this machine's own namespace into the bridge (``sn-op-…``, the
operator's leg); it is the only thing outside the namespaces, and it goes away
with the bridge's namespace. Nothing is routed off the machine.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "sn"  # every namespace and link this module makes starts with it
IP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Host:
    """Where processes run: a namespace with its address and host name, or loopback (``namespace`` None)."""

    label: str
    address: str
    namespace: str | None = None
    hostname: str | None = None  # the UTS name processes there see; None: this machine's own

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host (unchanged on loopback)."""
        if self.namespace is None:
            return list(argv)
        # "$0" is the name and "$@" the command: no quoting of argv needed. Every step execs, so the
        # Popen's pid is the command's own pid.
        inner = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname or self.label, *argv]
        return ["ip", "netns", "exec", self.namespace, *inner]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run namespace hosts (None: it can): the reason a skip prints."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "network namespaces unavailable: iproute2 `ip` or util-linux `unshare` is not installed"
    if os.geteuid() != 0:
        return "network namespaces unavailable: `ip netns add` needs root (CAP_SYS_ADMIN)"
    probe = f"{PREFIX}-probe-{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"network namespaces unavailable: `ip netns add` failed: {made.stderr.strip()}"
        inside = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "true"], capture_output=True,
                                text=True, timeout=IP_TIMEOUT_S)
        if inside.returncode != 0:
            return f"network namespaces unavailable: `ip netns exec … unshare --uts` failed: {inside.stderr.strip()}"
        return None
    finally:
        _ip("netns", "del", probe, check=False)


def free_subnet() -> str:
    """``10.231.X`` for a random X whose /24 this machine neither routes nor holds an address in."""
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    taken = {int(x) for x in re.findall(r"\b10\.231\.(\d+)\.", used)}
    choices = [x for x in range(1, 255) if x not in taken]
    if not choices:
        raise RuntimeError("no free 10.231.X.0/24 subnet on this machine")
    return f"10.231.{random.choice(choices)}"


@dataclass
class Network:
    """Namespace hosts ``sn-<label>-<tag>`` on one bridge; the test reaches them from ``operator_address``.

    ``create()`` builds everything (and undoes what it built if a step fails);
    ``destroy()`` deletes it all and never raises, so a finalizer can always call it.
    Stop the processes in the namespaces first: deleting a namespace only
    removes its name while processes still live in it.
    """

    labels: Sequence[str]
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge_namespace(self) -> str:
        return f"{PREFIX}-br-{self.tag}"

    @property
    def operator_link(self) -> str:
        return f"{PREFIX}-op-{self.tag}"  # at most 15 characters, the kernel's limit for a link name

    @property
    def operator_address(self) -> str:
        return f"{self.subnet}.1"

    def namespaces(self) -> list[str]:
        return [self.bridge_namespace] + [host.namespace for host in self.hosts.values() if host.namespace]

    def create(self) -> Network:
        self.subnet = self.subnet or free_subnet()
        try:
            self._create_bridge()
            for number, label in enumerate(self.labels, start=2):
                self._create_host(label, f"{self.subnet}.{number}")
        except BaseException:
            self.destroy()
            raise
        return self

    def _create_bridge(self) -> None:
        bridge = self.bridge_namespace
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")  # STP off (the default): ports forward at once
        _ip("-n", bridge, "link", "set", "br0", "up")
        _ip("link", "add", self.operator_link, "type", "veth", "peer", "name", "op", "netns", bridge)
        self._attach("op")
        _ip("addr", "add", f"{self.operator_address}/24", "dev", self.operator_link)
        _ip("link", "set", self.operator_link, "up")

    def _create_host(self, label: str, address: str) -> None:
        namespace = f"{PREFIX}-{label}-{self.tag}"
        _ip("netns", "add", namespace)
        self.hosts[label] = Host(label, address, namespace, hostname=f"{label}-{self.tag}")
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", label,
            "netns", self.bridge_namespace)
        self._attach(label)
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")

    def _attach(self, port: str) -> None:
        _ip("-n", self.bridge_namespace, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_namespace, "link", "set", port, "up")

    def destroy(self) -> None:
        # The operator's veth goes with its peer in the bridge namespace; deleting it first is for
        # the case where the bridge namespace was never made.
        _ip("link", "del", self.operator_link, check=False)
        for namespace in reversed(self.namespaces()):
            _ip("netns", "del", namespace, check=False)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this network that still exist (empty after ``destroy()``)."""
        listed = set(_ip("netns", "list").stdout.split())
        links = _ip("-o", "link", "show").stdout
        left = [namespace for namespace in self.namespaces() if namespace in listed]
        return left + ([self.operator_link] if f" {self.operator_link}@" in links else [])
