"""Backends behind the fan-out core: in memory (one process) and Redis (many workers)."""
