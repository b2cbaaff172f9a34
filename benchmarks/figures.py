"""Redraw every speed figure of the README and docs/results.md from the JSON in benchmarks/results (no timing):

    python benchmarks/figures.py

the cost study (``sweep.py --grid study``: ``sweep_study_{ratio,remat,throughput,fraction}.{png,svg}``) and the
comparisons with the PyTorch references (``compare.py``: ``compare.{png,svg}``, ``compare_sparse_2dev.{png,svg}``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402
import sweep  # noqa: E402


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    for name in ("sweep_study",):
        if (sweep.RESULTS / f"{name}.json").exists():
            sweep.main(["--out", name, "--plot-only"])
    for name in ("compare", "compare_sparse_2dev"):
        if (compare.RESULTS / f"{name}.json").exists():
            compare.main(["--out", name, "--table-only"])


if __name__ == "__main__":
    main()
