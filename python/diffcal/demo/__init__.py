"""``diffcal demo``: an end-to-end run of every capability on synthetic data with known truth.

Importing this package registers the demo steps of each feature module, in order.
"""

from __future__ import annotations

from ._framework import DEMO_STEPS, DemoContext, DemoOptions, DemoReport, DemoStep, demo_step, run_demo
from . import foundation  # noqa: E402,F401  (registers its steps)
from . import mapreduce  # noqa: E402,F401  (registers its steps)
from . import decorrelation  # noqa: E402,F401  (registers its steps)
from . import jointcal  # noqa: E402,F401  (registers its steps)

__all__ = ["DEMO_STEPS", "DemoContext", "DemoOptions", "DemoReport", "DemoStep", "demo_step", "run_demo"]
