"""``resist vpn``: a WireGuard server volunteers can run and hand out safely.

``noise`` and ``keys`` are pure (the handshake as bytes in, bytes out);
``peers``, ``clientconf`` and ``firewall`` are pure data and text;
``device`` is the only module that runs ``ip``, ``wg``, ``nft`` and
``wireguard-go``; ``server`` ties them together for the command line.
"""
