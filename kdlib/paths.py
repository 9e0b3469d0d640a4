"""Where things live: the repository, the results of a profile, the shared real data."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import KdlibError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES_DIR = NOTEBOOKS_DIR / "profiles"


def shared_data_dir() -> Path:
    """The read-only real CT folder: `$KDLIB_SHARED_DATA`, else `<repo>/../shared/data`."""
    env = os.environ.get("KDLIB_SHARED_DATA")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def results_dir(profile: str, out: str | Path | None = None) -> Path:
    """Absolute output folder of a profile: `out` if given, else `<repo>/results/<profile>`.

    Always absolute, because papermill and nbval run kernels in other working folders.
    """
    if out:
        return Path(out).expanduser().resolve()
    return REPO_ROOT / "results" / profile


def publish_path(publish_dir: str | Path | None) -> Path | None:
    """A profile's `publish_dir` (relative to the repository, e.g. figures/real-mini) as an
    absolute folder; None when the profile publishes nothing."""
    if not publish_dir:
        return None
    path = Path(publish_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def stale_records(out: str | Path, publish: str | Path | None) -> list[str]:
    """Run folders under `<publish>/runs` and `<publish>/models` that the results folder `out`
    did not make (an earlier invocation's): publishing beside them would mix two runs in one
    table. Empty when nothing is published or everything there is `out`'s."""
    if publish is None:
        return []
    runs = Path(out) / "runs"
    mine = {p.name for p in runs.iterdir() if p.is_dir()} if runs.is_dir() else set()
    found = []
    for sub in ("runs", "models"):
        folder = Path(publish) / sub
        if folder.is_dir():
            found += [f"{sub}/{p.name}" for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in mine]
    return found


def check_no_stale_records(out: str | Path, publish: str | Path | None) -> None:
    """One clear error before a profile publishes beside another invocation's records."""
    stale = stale_records(out, publish)
    if stale:
        raise KdlibError(f"the publish folder holds {len(stale)} run records that this results folder did not "
                         f"make (e.g. {stale[0]}): another invocation's, which would be mixed into its tables",
                         publish, "move them away first (e.g. `git mv figures/real-mini "
                         "figures/real-mini-<commit>`), or publish elsewhere")


def resolve_data(spec: str | Path) -> Path:
    """Resolve a data path; `shared:<sub>` means a folder below the shared real-data folder."""
    text = str(spec)
    if text.startswith("shared:"):
        return shared_data_dir() / text[len("shared:"):]
    path = Path(text).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()
