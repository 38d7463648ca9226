"""Thin command-line wrapper of :mod:`conceptattention.cli.measure_shapesworld` (``segment``, ``grid``, ``plot``,
``unprompted``, functions of :mod:`conceptattention.evaluation.shapesworld_measure`); the per-kind protocol with
baselines is ``conceptattention evaluate --protocol per-kind``.

Example::

    python scripts/measure_shapesworld.py grid --data test:100 --out runs/grid
"""

from conceptattention.cli.measure_shapesworld import main


if __name__ == "__main__":
    raise SystemExit(main())
