"""bitnode.p2p."""
