"""bitnode.userid."""
