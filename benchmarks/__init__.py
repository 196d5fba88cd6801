"""Fan-out benchmarks: ``python -m benchmarks`` (full) or ``python -m benchmarks --quick``.

How to measure fairly on a shared two-core machine is explained in ``BENCHMARKS.md``; the
short version: server CPU per delivery is the headline, latency only at light rates, and
every figure is a ratio to the ceilings and peers measured in the same run.
"""
