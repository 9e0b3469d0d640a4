"""Where things live: a profile's publish folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdlib.paths import REPO_ROOT, publish_path


@pytest.mark.parametrize("given, expected", [
    ("figures/real-mini", REPO_ROOT / "figures" / "real-mini"),
    (Path("figures/x"), REPO_ROOT / "figures" / "x"),
    ("/tmp/elsewhere", Path("/tmp/elsewhere")),
    ("", None),
    (None, None),
])
def test_publish_path_is_absolute_and_relative_to_the_repository(given, expected):
    assert publish_path(given) == expected
