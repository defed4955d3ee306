"""Legation's benchmarks, run as ``python -m bench NAME [options]`` from the repository root.

Each scenario is one module (``bench.ratelimit``, ``bench.authz``, ``bench.controller``,
``bench.controller_live``); what they share (processes, CPU pinning and accounting, h2load and wrk,
the report) is in ``bench.harness``. Not run as tests; see ``bench/README.md``.
"""
