"""Benchmarks: timing goals measured on real processes, printed as tables.

Run `python -m bench.stop_latency` (see its docstring); results go to bench/results/.
"""
