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


def test_stale_records_are_the_published_runs_this_results_folder_did_not_make(tmp_path):
    from kdlib.errors import KdlibError
    from kdlib.paths import check_no_stale_records, stale_records

    out, publish = tmp_path / "out", tmp_path / "published"
    for folder in (out / "runs" / "mine", publish / "runs" / "mine", publish / "runs" / "older",
                   publish / "models" / "older-student"):
        folder.mkdir(parents=True)
    (publish / "runs" / "DATA.json").write_text("{}")  # a file, not a run
    assert stale_records(out, publish) == ["runs/older", "models/older-student"]
    assert stale_records(out, None) == [] and stale_records(out, tmp_path / "nothing") == []
    with pytest.raises(KdlibError, match="2 run records .* runs/older"):
        check_no_stale_records(out, publish)
    (publish / "runs" / "older").rmdir()
    (publish / "models" / "older-student").rmdir()
    check_no_stale_records(out, publish)  # only this folder's own records: fine
