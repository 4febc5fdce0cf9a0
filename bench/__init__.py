"""Benchmarks (`make bench`). Each `bench/bench_*.py` module has a `main() -> None` that runs
its comparison side by side in one process and writes a Markdown table under bench/results/."""
