"""bitnode.access."""
