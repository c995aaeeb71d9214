"""The signed directory: the document clients trust, whatever host served it.

A directory lists proxies with their endpoints and credentials.  It is signed
with Ed25519 by one or more registry keys so that any mirror can carry it: a
client checks the signatures against keys it pinned, the validity window
against its clock, and the serial against the last one it accepted, never the
transport it came over.
"""
