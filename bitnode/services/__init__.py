"""bitnode.services."""
