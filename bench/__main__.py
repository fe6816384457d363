"""One entry point for every suite: ``python -m bench SUITE [options]``.

A suite is a module exposing ``main(argv: list[str]) -> int`` (argv without the suite name).
The registry is a plain table of module names, imported only when that suite is asked for, so a
suite whose module (or optional dependency) is missing never breaks the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

#: Suite name -> module implementing ``main(argv) -> int``.
SUITES: dict[str, str] = {
    "locomo": "bench.locomo.suite",
    "embedder": "bench.bench_embedder",
    "log": "bench.bench_log",
    "store": "bench.bench_store",
    "wrapper": "bench.bench_wrapper",
    "server": "bench.bench_server",
    "injection": "bench.bench_injection",
    "budget": "bench.bench_budget",
    "postgres": "bench.bench_postgres",
    "postgres-locomo": "bench.locomo.postgres",
    "queue": "bench.bench_queue",
    "footprint": "bench.bench_footprint",
    "cold": "bench.bench_cold",
}


def _available(module: str) -> bool:
    """True when the suite's module exists in this checkout (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _usage() -> str:
    names = "\n".join(
        f"  {name:10s} {module}{'' if _available(module) else '  (not in this checkout)'}"
        for name, module in SUITES.items()
    )
    return (
        f"usage: python -m bench SUITE [options]   (SUITE --help for its options)\nsuites:\n{names}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite named by ``argv[0]``; return its exit status (2 on a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    module_name = SUITES.get(name)
    if module_name is None:
        print(f"unknown suite {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"suite {name!r} is not available in this checkout ({module_name})", file=sys.stderr)
        return 2
    status: int = module.main(rest)
    return status


if __name__ == "__main__":
    sys.exit(main())
