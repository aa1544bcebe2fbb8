"""bitnode.dht."""
