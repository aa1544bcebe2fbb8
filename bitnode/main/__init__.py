"""bitnode.main."""
