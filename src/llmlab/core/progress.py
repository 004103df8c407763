"""One progress helper for long loops: a tqdm bar that shows rates and an ETA.

It writes to stderr so that stdout stays clean for generated text and --json output,
and it disables itself when stderr is not a terminal unless `force=True`.
"""

from __future__ import annotations

import sys

# Plain text bars, not tqdm.auto: in a notebook without ipywidgets tqdm.auto warns on every import.
from tqdm import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             disable: bool | None = None, **kwargs) -> tqdm:
    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                dynamic_ncols=True, file=sys.stderr, **kwargs)
