"""iceburg_daemon: a continuous-training daemon for ICEBURG's agents (ingest -> filter -> train -> publish)."""

__version__ = "0.1.0"

ROLES = ("surveyor", "dissident", "synthesist", "oracle", "general")
