"""nskernel's benchmarks against the tools people would otherwise use.

``python benchmarks/run.py [--quick]``; ``run.py``'s docstring says how to run and read it.
"""
