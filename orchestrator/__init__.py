"""Plans and enqueues work, and hosts the `badnet-prune` command line; it never computes."""
