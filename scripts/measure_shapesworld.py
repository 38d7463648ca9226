"""Thin command-line wrapper of :mod:`conceptattention.evaluation.shapesworld_measure` (``segment``, ``grid``,
``plot``, ``unprompted``); the per-kind protocol with baselines is ``conceptattention evaluate --protocol per-kind``.

Example::

    python scripts/measure_shapesworld.py grid --data test:100 --out runs/grid
"""

from conceptattention.evaluation.shapesworld_measure import main


if __name__ == "__main__":
    raise SystemExit(main())
