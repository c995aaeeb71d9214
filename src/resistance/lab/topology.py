"""The lab's map: four namespaces, three links, and every address in 198.18.0.0/15.

::

    censored                censor (router, nftables)              free
    198.18.1.2 ──veth── 198.18.1.1 | 198.18.2.1 ──veth── 198.18.2.2
    user, resist connect,           | 198.18.4.1          registry  198.18.3.1
    two probes (RU)                 |                     nodes     198.18.10.1, .11.1, .12.1
                                  veth                    WireGuard 198.18.13.1 (resist vpn)
                                    |                     probe (control, NL)
                              198.18.4.2 domestic         data centre 198.18.100.1 (blocked)
                              (a bridge on domestic hosting, inside the censored country)

The domestic hosting network is inside the censored country: its traffic to
the user and to the free side crosses the censor like the user's does, and a
whitelist lists its prefix (as real whitelists list large domestic clouds).

198.18.0.0/15 is the benchmarking range (RFC 2544): never routed on the
internet, so nothing here can reach or impersonate a real host.  Each node
sits in its own /24 so the grant rule's per-network cap sees four networks.
Every address of the free side is a /32 on that namespace's loopback; the
censor routes the whole range to it, except the censored /24 it is on.

The functions here are pure: they say which commands build the world, and
:mod:`resistance.lab.world` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

LAB_RANGE = "198.18.0.0/15"
CENSORED_NET = "198.18.1.0/24"
USER_ADDR = "198.18.1.2"
CENSOR_INSIDE = "198.18.1.1"
CENSOR_OUTSIDE = "198.18.2.1"
FREE_UPLINK = "198.18.2.2"
REGISTRY_ADDR = "198.18.3.1"
REGISTRY_PORT = 8080
CANARY_PORT = 9900
NODE_ADDRS = ("198.18.10.1", "198.18.11.1", "198.18.12.1")
NODE_PORT = 1080
#: Each node's SOCKS5-inside-TLS listener (its certificate pinned through the directory).
NODE_TLS_PORT = 443
#: A fourth volunteer runs WireGuard (resist vpn) instead of SOCKS5.
VPN_ADDR = "198.18.13.1"
#: The probes' control proxy (registry --probe-control): up, unregistered, on no list.
CONTROL_ADDR = "198.18.14.1"
VPN_PORT = 51820
#: Domestic hosting inside the censored country (a whitelist lists it) and its bridge.
DOMESTIC_NET = "198.18.4.0/24"
CENSOR_DOMESTIC = "198.18.4.1"
BRIDGE_ADDR = "198.18.4.2"
DATACENTRE_ADDR = "198.18.100.1"
DATACENTRE_PORT = 443
#: The stand-in Telegram range: blocked from the start, as Telegram's own ranges were.
DATACENTRE_RANGE = "198.18.100.0/22"
CONNECT_PORT = 1080
TARGET_COUNTRY = "RU"
CONTROL_COUNTRY = "NL"
MAX_NAME = 8


@dataclass(frozen=True, slots=True)
class Topology:
    """One lab's names.  Several labs may exist at once: all addresses live inside
    their own namespaces, so only the namespace names must differ."""

    name: str = "rlab"

    def __post_init__(self) -> None:
        if not (
            1 <= len(self.name) <= MAX_NAME
            and self.name[0].isalpha()
            and all(c.isalnum() or c == "-" for c in self.name)
            and self.name.isascii()
        ):
            raise ValueError(
                f"lab name must be 1-{MAX_NAME} letters, digits or '-', starting with a letter"
            )

    @property
    def censored(self) -> str:
        return f"{self.name}-censored"

    @property
    def censor(self) -> str:
        return f"{self.name}-censor"

    @property
    def free(self) -> str:
        return f"{self.name}-free"

    @property
    def domestic(self) -> str:
        return f"{self.name}-domestic"

    @property
    def namespaces(self) -> tuple[str, str, str, str]:
        return (self.censored, self.censor, self.free, self.domestic)

    @property
    def wg_interface(self) -> str:
        """The WireGuard server's interface: per lab, since wireguard-go's control
        socket (/var/run/wireguard/NAME.sock) is shared by every namespace."""
        return f"wg-{self.name}"

    @property
    def registry_url(self) -> str:
        return f"http://{REGISTRY_ADDR}:{REGISTRY_PORT}"

    @property
    def directory_url(self) -> str:
        return f"{self.registry_url}/api/v1/directory"

    def build_commands(self) -> list[list[str]]:
        """``ip`` commands that make the namespaces, links, addresses and routes."""
        ns_censored, ns_censor, ns_free, ns_domestic = self.namespaces
        cmds: list[list[str]] = [["ip", "netns", "add", ns] for ns in self.namespaces]
        cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in self.namespaces]
        # veths are made directly inside their namespaces: the host never sees them.
        cmds += [
            ["ip", "link", "add", "eth0", "netns", ns_censored, "type", "veth",
             "peer", "name", "inside", "netns", ns_censor],
            ["ip", "link", "add", "outside", "netns", ns_censor, "type", "veth",
             "peer", "name", "eth0", "netns", ns_free],
            ["ip", "link", "add", "domestic", "netns", ns_censor, "type", "veth",
             "peer", "name", "eth0", "netns", ns_domestic],
            ["ip", "-n", ns_censored, "addr", "add", f"{USER_ADDR}/24", "dev", "eth0"],
            ["ip", "-n", ns_censor, "addr", "add", f"{CENSOR_INSIDE}/24", "dev", "inside"],
            ["ip", "-n", ns_censor, "addr", "add", f"{CENSOR_OUTSIDE}/30", "dev", "outside"],
            ["ip", "-n", ns_free, "addr", "add", f"{FREE_UPLINK}/30", "dev", "eth0"],
            ["ip", "-n", ns_censor, "addr", "add", f"{CENSOR_DOMESTIC}/24", "dev", "domestic"],
            ["ip", "-n", ns_domestic, "addr", "add", f"{BRIDGE_ADDR}/24", "dev", "eth0"],
        ]  # fmt: skip
        for ns, dev in ((ns_censored, "eth0"), (ns_censor, "inside"), (ns_censor, "outside"),
                        (ns_free, "eth0"), (ns_censor, "domestic"),
                        (ns_domestic, "eth0")):  # fmt: skip
            cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
        for addr in (REGISTRY_ADDR, *NODE_ADDRS, VPN_ADDR, CONTROL_ADDR, DATACENTRE_ADDR):
            cmds.append(["ip", "-n", ns_free, "addr", "add", f"{addr}/32", "dev", "lo"])
        cmds += [
            ["ip", "-n", ns_censored, "route", "add", "default", "via", CENSOR_INSIDE],
            ["ip", "-n", ns_domestic, "route", "add", "default", "via", CENSOR_DOMESTIC],
            ["ip", "-n", ns_free, "route", "add", "default", "via", CENSOR_OUTSIDE],
            ["ip", "-n", ns_censor, "route", "add", LAB_RANGE, "via", FREE_UPLINK],
            ["ip", "netns", "exec", ns_censor, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
        return cmds
