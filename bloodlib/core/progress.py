"""Progress bars: tqdm's notebook widget where ipywidgets is installed, its text bar elsewhere.

In a notebook without ipywidgets ``tqdm.auto`` warns "IProgress not found" and falls
back to the text bar anyway: nothing the user must act on, so the warning is hidden.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
