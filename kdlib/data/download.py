"""Download MSD Task09_Spleen: resumable (HTTP Range into a `.part` file), checksum-verified,
unpacked atomically (temporary folder, then rename) with tar path-traversal protection.

Interrupting a download keeps `<name>.part`; running the same call again resumes it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ..errors import DataError
from ..progress import bar

DEFAULT_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
DEFAULT_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"  # published by MONAI's spleen tutorial
_RETRY = "run the same command again: the download resumes where it stopped"


def _archive_name(url: str) -> tuple[str, str]:
    name = Path(urlparse(url).path).name or "download.tar"
    stem = name
    for ext in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return name, stem or "download"


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None, md5: str | None) -> None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.strip().lower():
                raise DataError(f"{algorithm} checksum mismatch (expected {expected}, got "
                                f"{actual}); the download is corrupt or the URL serves another "
                                "file", path,
                                "the bad file was deleted; run the command again to download "
                                "it afresh, or check --url/--sha256")


def _fetch(url: str, part: Path, timeout: float, chunk: int) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "kdlib-download"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return  # nothing left to fetch: the .part file is complete
        raise DataError(f"download failed: HTTP {exc.code} {exc.reason}", url,
                        "check the URL; " + _RETRY) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"download failed: {getattr(exc, 'reason', exc)}", url,
                        "check the network connection; " + _RETRY) from None
    with response:
        resumed = start > 0 and response.status == 206
        if resumed:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                resumed = False
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        written = start
        with open(part, "ab" if resumed else "wb") as handle, \
                bar(total=total, initial=start, desc="download", unit="B", unit_scale=True,
                    unit_divisor=1024) as progress:
            try:
                while block := response.read(chunk):
                    handle.write(block)
                    written += len(block)
                    progress.update(len(block))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                raise DataError(f"download interrupted after {written} bytes ({exc})", url,
                                _RETRY) from None
    if total is not None and written != total:
        raise DataError(f"download interrupted: got {written} of {total} bytes", url, _RETRY)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"unsafe path in archive: {name!r} (points outside the target folder)",
                        archive, "do not unpack this archive; check where it came from")
    if member.issym() or member.islnk():
        raise DataError(f"archive contains a link ({name!r} -> {member.linkname!r}); refusing "
                        "to unpack links", archive, "check where the archive came from")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive contains a special file ({name!r})", archive,
                        "check where the archive came from")


def safe_extract(archive: Path, out: Path, dest: Path) -> Path:
    """Unpack `archive` into a temporary folder in `out`, then rename its MSD task folder
    (the folder holding dataset.json) to `dest`."""
    archive, out, dest = Path(archive), Path(out), Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=out))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                root = tmp.resolve()
                for member in members:
                    target = (tmp / member.name).resolve()
                    if target != root and root not in target.parents:
                        raise DataError(f"unsafe path in archive: {member.name!r}", archive,
                                        "check where the archive came from")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"cannot unpack the archive ({exc}); it is corrupt or truncated",
                            archive, "delete it and run the command again") from None
        found = [p.parent for p in tmp.rglob("dataset.json")
                 if not p.name.startswith(".")]
        if len(found) != 1:
            raise DataError(f"expected one MSD task folder (with dataset.json) in the archive, "
                            f"found {len(found)}", archive, "check --url")
        os.replace(found[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_msd(out: str | Path, url: str | None = None, sha256: str | None = None,
                 md5: str | None = None, timeout: float = 60.0, chunk: int = 1 << 20,
                 keep_archive: bool = False) -> Path:
    """Download and unpack an MSD task tar into `out`; return the task folder.

    Defaults to MSD Task09_Spleen from MONAI's public mirror, verified with its published
    md5. Give `sha256` (or `md5`) to verify another URL; without either, a custom URL is not
    verified. If the task folder already exists, nothing is downloaded.
    """
    out = Path(out)
    if url is None:
        url = DEFAULT_URL
        if sha256 is None and md5 is None:
            md5 = DEFAULT_MD5
    name, stem = _archive_name(url)
    dest = out / stem
    if dest.exists():
        if (dest / "dataset.json").is_file():
            return dest
        raise DataError("folder exists but is not an MSD task folder (no dataset.json)", dest,
                        "delete it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / name
    part = out / (name + ".part")
    if not archive.exists():
        _fetch(url, part, timeout, chunk)
        os.replace(part, archive)  # complete: only a checksum check remains
    try:
        _verify(archive, sha256, md5)
    except DataError:
        archive.unlink(missing_ok=True)
        raise
    safe_extract(archive, out, dest)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest
