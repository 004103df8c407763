"""pyplot for the library's PNG files, without taking a notebook's plots away.

Library code draws figures only to save them (loss.png, report and probe figures). On a machine with
no display that needs matplotlib's file-only Agg backend. Inside Jupyter the kernel has already
chosen its inline backend, and `matplotlib.use("Agg")` would switch the whole process over, so that
no later plot in the notebook shows. So Agg is chosen only when nothing else asked for a backend.
"""

from __future__ import annotations

import os
import sys


def pyplot():
    """matplotlib.pyplot, on Agg unless a notebook kernel or $MPLBACKEND chose a backend."""
    import matplotlib

    if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
