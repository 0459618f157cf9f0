"""airlock's benchmarks: each compares airlock with a baseline measured in the same run.

Run them all with `python -m bench` (add `--quick` for a shorter run); the results land in
BENCHMARKS.md at the top of the repository. See docs/benchmarks.md.
"""
