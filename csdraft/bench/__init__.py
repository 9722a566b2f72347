"""``csdraft bench``: honest side-by-side speed of csdraft's methods and transformers' own.

``data`` finds datasets and scores answers, ``methods`` holds the compared methods, ``metrics``
the arithmetic, ``report`` the tables, charts and comparison, ``quality`` quality against speed
(runs that reach answers), ``run`` the loop (``run_bench``, ``run_report``).
"""

from csdraft.bench.run import run_bench, run_compare, run_report

__all__ = ["run_bench", "run_compare", "run_report"]
