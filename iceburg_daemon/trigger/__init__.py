"""Triggers: decide when a role is retrained (pure decisions, probes, store state and the daemon step)."""
