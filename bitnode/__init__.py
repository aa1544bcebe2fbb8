"""bitnode: a peer-to-peer node for private, encrypted, distributed storage and messaging."""

__version__ = "0.1.0"
