"""The censorship lab: a small world in network namespaces for the end-to-end story.

``resist lab up`` builds it (a censored network, a censor router with an
nftables blocklist, a free network with nodes, the registry, probes and a
stand-in Telegram data centre), ``resist lab demo`` tells the story in it and
``resist lab down`` removes every namespace and process it made.
"""
