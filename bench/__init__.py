"""The benchmark harness of headroom.memory: ``python -m bench SUITE [options]`` from a checkout.

Each suite is a module with ``main(argv: list[str]) -> int`` registered in
:data:`bench.__main__.SUITES`. Results go to ``bench/results/`` (gitignored); see
``bench/README.md`` for what each figure means.
"""
