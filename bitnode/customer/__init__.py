"""bitnode.customer."""
