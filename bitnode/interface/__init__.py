"""bitnode.interface."""
