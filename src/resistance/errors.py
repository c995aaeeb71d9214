"""One shallow exception tree for the whole package.

Protocol errors carry the bytes to answer before the connection closes, so
that the I/O layer never has to know which reply goes with which fault.
"""

from __future__ import annotations


class ResistanceError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ResistanceError):
    """Bad configuration: the service refuses to start and says why in one line."""


class ProtocolError(ResistanceError):
    """The peer broke the protocol.

    ``reply`` holds the bytes to send to the peer before closing (possibly
    empty, when the protocol has no way to say what went wrong).
    """

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


class BufferOverflow(ProtocolError):
    """The peer sent more than a message of this kind may hold."""
