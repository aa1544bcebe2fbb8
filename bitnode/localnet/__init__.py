"""bitnode.localnet."""
