"""Helpers shared by the tests and the benchmarks (not part of the installed package).

- ``tools.ports``: free loopback TCP ports.
- ``tools.redis_servers``: throwaway redis-server processes, a Redis Cluster, Sentinel, and
  the Redis a test session uses.
- ``tools.processes``: server processes run until healthy, uvicorn workers, and signals to a
  whole process tree (pause, resume, kill -9).
"""
