"""servd benchmarks: overhead against a bare Tornado echo server and an in-process model.

`python -m benchmarks [echo|mlp|all] [--quick]`; see benchmarks/README.md and docs/design/benchmarks/.
"""
