"""bitnode.transport."""
