"""bitnode.storage."""
