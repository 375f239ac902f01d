"""The notebooks' own defaults are the classroom recipe (the `sample` profile).

`make notebooks` executes the notebooks with their parameters cells as written, and those
outputs are what a student sees on GitHub and what nbval checks; `make run` executes them
with the `sample` profile. If the two drifted apart, the committed notebooks would show
another recipe, and other numbers, than the classroom run.
"""

from __future__ import annotations

import pytest

from bloodlib.study import planning, profiles

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("path", planning.find_notebooks(), ids=lambda p: p.stem)
def test_notebook_defaults_match_the_sample_profile(path) -> None:
    profile = profiles.load_profiles()["sample"]
    wanted = {**(profile.get("common") or {}), **(profile["notebooks"].get(path.stem) or {})}
    defaults = planning.notebook_defaults(path)
    differ = {
        key: (defaults[key], value)
        for key, value in wanted.items()
        if key in defaults and defaults[key] != value
    }
    assert not differ, (
        f"{path.name}: parameters cell vs sample profile (default, profile): {differ}"
    )
