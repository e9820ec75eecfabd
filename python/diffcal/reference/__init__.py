"""Plain numpy implementations of the reference algorithms.

They follow the specs line by line, favour clarity over speed, and serve two purposes: the
test suite checks the C++ core against them, and ``bench/`` uses them as the baselines that
speed-ups are quoted against. They are public so users can audit what the core computes.
"""

from .decorrelation import decorrelate_numpy
from .mapreduce import generate_grid_numpy, image_reduce_numpy
from .statistics import clipped_statistics_numpy

__all__ = ["clipped_statistics_numpy", "decorrelate_numpy", "generate_grid_numpy", "image_reduce_numpy"]
