"""What a session may use of the process that runs it: the session host.

A session (one client, from its first byte to the end of its relay) never
sees the node object.  It sees a :class:`SessionHost`: the settings and
limits it must honour, the egress policy and users it checks, the metrics it
counts into, the deadlines it waits against, the event loop and reactor it
runs on, and the network seam (:class:`~resistance.node.net.NodeNetwork`)
through which it resolves names, dials, listens and sends datagrams.  The
:class:`~resistance.node.server.Node` implements this protocol, and so does
any test double: with :class:`~resistance.node.fakenet.ScriptedNetwork` as
its network, a session runs without a single socket.

Theory of operation
-------------------
The node accepts a client, admits it (connection limits), and builds a
session with itself as the host.  From then on the session calls the host
only through the attributes below; when it ends it calls
:meth:`SessionHost.session_closed` once with the bytes it moved, and the host
accounts for them and for the client's slot.  Nothing in ``node/session.py``,
``node/udp.py`` or ``client/session.py`` imports ``node/server.py``.

Adding a session kind (for example MTProto)
-------------------------------------------
1. Put its protocol core, sans-IO, in ``proto/`` (bytes in, events out).
2. Write the session beside the others, taking a ``SessionHost`` (or a
   protocol that extends it with what that kind alone needs, as
   :class:`~resistance.client.session.ConnectHost` does for ``resist
   connect``).  Reach the network only through ``host.net``; count into
   ``host.metrics``; wait only against a host's :class:`Deadlines`; report
   the end with ``host.session_closed``.
3. Test it with a fake host and :class:`~resistance.node.fakenet.ScriptedNetwork`
   (see ``tests/unit/test_session_seam.py``), then with real clients over
   real sockets.
4. Let the node build it: a listener kind in ``node/server.py`` that admits
   the client and hands it to the new session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.config import NodeLimits, NodeSettings
    from resistance.net.deadlines import Deadlines
    from resistance.net.reactor import Reactor
    from resistance.net.relay import AnyPipePool
    from resistance.node.metrics import NodeMetrics
    from resistance.node.net import NodeNetwork
    from resistance.node.policy import EgressPolicy
    from resistance.node.users import UserDB


class Client(Protocol):
    """A session as its host sees it: whose it is, its relay, and how to end it."""

    @property
    def peer_ip(self) -> str: ...

    @property
    def user(self) -> str | None: ...

    @property
    def relay(self) -> Any:
        """The running relay (``bytes_up``, ``bytes_down``, ``idle``), or ``None``."""
        ...

    def close(self) -> None: ...


class Association(Protocol):
    """A UDP association (or forward) the host sweeps when idle."""

    idle: int

    @property
    def session(self) -> Client: ...

    def close(self) -> None: ...


class SessionHost(Protocol):
    """Everything a session may use, read-only; the node implements it.

    Deadlines hold sessions (``Deadlines[Session]``); they are typed ``Any``
    here so that this module needs no session type.
    """

    # -- settings and limits (read per request; replaced as a whole on reload) --
    @property
    def settings(self) -> NodeSettings: ...
    @property
    def limits(self) -> NodeLimits: ...
    @property
    def log_destinations(self) -> bool: ...
    @property
    def users(self) -> UserDB | None: ...
    @property
    def policy(self) -> EgressPolicy: ...
    @property
    def identity(self) -> Ed25519PrivateKey | None: ...

    # -- accounting --
    @property
    def metrics(self) -> NodeMetrics: ...
    @property
    def udp_associations(self) -> set[Association]: ...

    def session_closed(self, session: Client, up: int, down: int) -> None:
        """``session`` ended, having moved ``up``/``down`` bytes; called once."""
        ...

    # -- time: each session waits against one of these at a time --
    @property
    def handshake_deadlines(self) -> Deadlines[Any]: ...
    @property
    def connect_deadlines(self) -> Deadlines[Any]: ...
    @property
    def bind_deadlines(self) -> Deadlines[Any]: ...

    # -- I/O --
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def net(self) -> NodeNetwork: ...
    @property
    def reactor(self) -> Reactor | None:
        """The edge-triggered epoll of raw sockets (``None`` where epoll is missing)."""
        ...

    @property
    def pipes(self) -> AnyPipePool | None:
        """The splice relay's pipes (``None`` when relaying by copying)."""
        ...


__all__ = ["Association", "Client", "SessionHost"]
