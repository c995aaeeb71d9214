"""Digital Resistance: proxies through censorship, measured and paid in Bitcoin."""

__version__ = "0.1.0"
