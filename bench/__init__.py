"""Benchmarks of the gateway on its embedded stack, beside the floor of its own database writes.

``python -m bench`` starts the stack the way production runs it (the Temporal dev server, the
worker and the API as separate processes), measures the figures of issue 7 over several runs and
writes their medians to ``docs/benchmarks.md``. Performance is measured here, never in timed tests.
"""
