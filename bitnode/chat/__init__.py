"""bitnode.chat."""
