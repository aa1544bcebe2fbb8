"""bitnode.crypt."""
