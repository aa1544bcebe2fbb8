"""bitnode.supplier."""
