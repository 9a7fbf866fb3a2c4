"""Other machines: syncing records, pins and branches with a remote; the remote queue of `gitar try --remote`."""
