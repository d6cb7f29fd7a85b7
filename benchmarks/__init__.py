"""The benchmark suite (`./dev bench` = `python benchmarks/run.py`); not part of the test suite."""
