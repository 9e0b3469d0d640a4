"""Download the public data sets kdlib reads: resumable (HTTP Range into a `.part` file),
checksum-verified, unpacked atomically (temporary folder, then rename) with path-traversal
protection, into the layout the readers expect.

- ``msd``: MSD Task09_Spleen (`download_msd`) -> `<out>/Task09_Spleen/`.
- ``ircadb``: 3D-IRCADb-01 patients (`download_ircadb`) -> `<out>/ircadb/3Dircadb1.<n>/`
  with `PATIENT_DICOM/` and `MASKS_DICOM/spleen/`. Licence CC BY-NC-ND 4.0, printed first.
- ``thesis-slices``: the thesis author's animated GIFs (`download_thesis_slices`) ->
  `<out>/thesis_slices/{gif_originals,images,masks}/`, one PNG per GIF frame.

Interrupting a download keeps `<name>.part`; running the same call again resumes it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import re
import tarfile
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ..errors import DataError
from ..io import atomic_dir, atomic_write_text
from ..progress import bar

DEFAULT_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
DEFAULT_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"  # published by MONAI's spleen tutorial
_RETRY = "run the same command again: the download resumes where it stopped"


# What one data set may unpack, whatever its archive declares (MSD Task09_Spleen unpacks to
# 1.6 GB, the two 3D-IRCADb patients to 0.2 GB): at most UNPACK_LIMIT bytes, and at most
# UNPACK_RATIO times the archive's own size (a 300 KB archive cannot fill the disk).
UNPACK_LIMIT = 32 << 30
UNPACK_RATIO = 100
COPY_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Rejected(DataError):
    """An archive refused for what it holds (unsafe, oversized, corrupt): deleted at once."""


def unpack_budget(archive: Path) -> int:
    """Bytes a data set may unpack from `archive` (UNPACK_LIMIT, UNPACK_RATIO)."""
    return min(UNPACK_LIMIT, UNPACK_RATIO * Path(archive).stat().st_size + (1 << 20))


def _too_big(declared: int, budget: int, archive: Path) -> DataError:
    return _Rejected(f"archive declares at least {declared:,} bytes to unpack, more than the "
                     f"{budget:,} allowed ({UNPACK_LIMIT >> 30} GiB per data set, "
                     f"{UNPACK_RATIO}x the archive's size); it was deleted", archive,
                     "check --url: this is not the data set's archive")


def check_url(url: str) -> None:
    """Only http(s) addresses are downloaded (a file:// or ftp:// URL reads elsewhere)."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DataError(f"only http:// and https:// addresses can be downloaded, not "
                        f"{scheme or 'a bare path'}://", url,
                        "give the archive's web address (copy a local archive into --out "
                        "instead)")


def check_sha256(sha256: str | None) -> None:
    if sha256 is not None and not _SHA256.match(str(sha256).strip()):
        raise DataError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}", None,
                        "give the archive's sha256 (e.g. from `sha256sum`), or leave it out")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


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


def _check_name(name: str, archive: Path) -> tuple[str, ...]:
    """The path parts of an archive member; DataError for absolute or `..` paths."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise _Rejected(f"unsafe path in archive: {name!r} (points outside the target folder)",
                        archive, "do not unpack this archive; check where it came from")
    return parts


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    _check_name(name, archive)
    if member.issym() or member.islnk():
        raise _Rejected(f"archive contains a link ({name!r} -> {member.linkname!r}); refusing "
                        "to unpack links", archive, "check where the archive came from")
    if not (member.isfile() or member.isdir()):
        raise _Rejected(f"archive contains a special file ({name!r})", archive,
                        "check where the archive came from")


def safe_extract(archive: Path, out: Path, dest: Path) -> Path:
    """Unpack `archive` into a temporary folder in `out`, then rename its MSD task folder
    (the folder holding dataset.json) to `dest`."""
    archive, out, dest = Path(archive), Path(out), Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=out))
    try:
        try:
            budget, declared = unpack_budget(archive), 0
            with tarfile.open(archive) as tar:
                members = []
                for member in tar:  # declared sizes, before anything is extracted
                    _check_member(member, archive)
                    declared += member.size
                    if declared > budget:
                        raise _too_big(declared, budget, archive)
                    members.append(member)
                root = tmp.resolve()
                for member in members:
                    target = (tmp / member.name).resolve()
                    if target != root and root not in target.parents:
                        raise _Rejected(f"unsafe path in archive: {member.name!r}", archive,
                                        "check where the archive came from")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(f"cannot unpack the archive ({_one_line(exc)}); it is corrupt or "
                            "truncated", archive, "it was deleted: run the command again")\
                from None
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
    check_url(url)
    check_sha256(sha256)
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
    try:
        safe_extract(archive, out, dest)
    except DataError:
        archive.unlink(missing_ok=True)  # a rejected archive does not stay behind
        raise
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest


def _fetch_verified(url: str, dest: Path, sha256: str | None, timeout: float, chunk: int) -> Path:
    """Fetch `url` to `dest` (resuming `dest.part`), then check its sha256; a file that fails
    the check is deleted so that the next run downloads it afresh."""
    if not dest.exists():
        part = dest.with_name(dest.name + ".part")
        _fetch(url, part, timeout, chunk)
        os.replace(part, dest)
    try:
        _verify(dest, sha256, None)
    except DataError:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # stderr: stdout stays machine-readable JSON


# ------------------------------------------------------------------ the thesis's own slices
THESIS_REPOSITORY = "https://github.com/RisabBiswas/MTMS-Med-Seg-KD"
THESIS_GIF_URL = "https://raw.githubusercontent.com/RisabBiswas/MTMS-Med-Seg-KD/main/assets/"
# sha256 of the GIFs as held in the project's shared data (`thesis_slices/gif_originals/`).
THESIS_GIF_SHA256 = {
    "GIF_1_IM_3_01_3_26.gif": "d99a4fbcd96865b243ca9f5fcfcf9f52de4acebaf0b87a37e3ad9393b5640dfc",
    "GIF_1_M_3_01_3_26.gif": "8bff30de192ae5d1d4be81b2974fa00045216067d0d3e08cb58c434ab95345ce",
    "GIF_1_IM_6_60_6_82.gif": "a9812b28d7337168d238dda4c95a96fc3aa62352b39881a7648e6a9e693e7aa9",
    "GIF_1_M_6_60_6_82.gif": "5628484455b7e9576def62b6d696f717449fd4637419d8fe05a6ab3108752686",
    "GIF_1_IM_8_01_8_24.gif": "3a4d19f69f7087f75bbaf02b157700d3bf41a0075eb62bbef888011f7405c293",
    "GIF_1_M_8_01_8_24.gif": "b29649d520c784afc81060dc70ee0e19156cd24beca6a247f83bbc2108e29574",
    "GIF_1_IM_22_40_22_70.gif": "41d2cb5029ccc79311cadace843dcc659eb97e6de112be2ee9d8ac0582b4e315",
    "GIF_1_M_22_40_22_70.gif": "5de3ab171f2c6046c567bd1e1ad7940b744da5ad66fe699f26fcea80693ad4f0",
}
THESIS_SLICES_NOTICE = (
    "thesis-slices: 8 animated GIFs (1.3 MB) from the thesis author's public repository "
    f"{THESIS_REPOSITORY} (assets/), made from MSD Task09_Spleen (licence CC BY-SA 4.0).")
_GIF_NAME = re.compile(r"^GIF_1_(?P<kind>IM|M)_(?P<range>\d+_\d+_\d+_\d+)\.gif$")


def _has_slices(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def unpack_thesis_gif(gif: Path, out: Path) -> int:
    """Write each frame of a thesis GIF as a PNG: image frames as 8-bit grey
    (`images/spleen_<range>_fNN.png`), mask frames thresholded at 127 to 0/255 (`masks/...`),
    the layout `readers.SlicesSource` pairs by name. Returns the number of frames."""
    from PIL import Image, ImageSequence

    match = _GIF_NAME.match(gif.name)
    if not match:
        raise DataError("not a thesis GIF name (expected GIF_1_IM_<range>.gif or "
                        "GIF_1_M_<range>.gif)", gif, "check --url")
    is_mask = match["kind"] == "M"
    folder = out / ("masks" if is_mask else "images")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(gif) as img:
            count = 0
            for count, frame in enumerate(ImageSequence.Iterator(img), start=1):
                grey = frame.convert("L")
                if is_mask:  # the GIF's palette blurs mask edges into grey levels
                    grey = grey.point(lambda v: 255 if v > 127 else 0)
                grey.save(folder / f"spleen_{match['range']}_f{count - 1:02d}.png")
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read the GIF ({exc})", gif,
                        "delete it and run the command again") from None
    return count


def download_thesis_slices(out: str | Path, url: str | None = None,
                           checksums: dict[str, str] | None = None, timeout: float = 60.0,
                           chunk: int = 1 << 20, notify=_notice) -> Path:
    """Download the thesis's GIFs into `<out>/thesis_slices/` and unpack every frame.

    `url`: folder URL holding the GIFs (default: the author's repository). `checksums`:
    GIF name -> sha256 (default: the eight known GIFs). GIFs are fetched one by one into
    `<out>/thesis_slices.download/` (kept across interruptions) and the finished folder
    appears only when every GIF is verified and unpacked.
    """
    out = Path(out)
    dest = out / "thesis_slices"
    if _has_slices(dest):
        return dest
    if dest.exists():
        raise DataError("folder exists but has no images/ and masks/", dest,
                        "delete it or choose another --out")
    checksums = dict(THESIS_GIF_SHA256 if checksums is None else checksums)
    base = (url or THESIS_GIF_URL).rstrip("/") + "/"
    check_url(base)
    notify(THESIS_SLICES_NOTICE)
    staging = out / "thesis_slices.download"
    staging.mkdir(parents=True, exist_ok=True)
    for name, sha256 in checksums.items():
        _fetch_verified(base + name, staging / name, sha256, timeout, chunk)
    with atomic_dir(dest) as tmp:
        frames = {}
        for name in checksums:
            frames[name] = unpack_thesis_gif(staging / name, tmp)
        for name, count in frames.items():
            partner = name.replace("GIF_1_IM_", "GIF_1_M_") if "_IM_" in name else \
                name.replace("GIF_1_M_", "GIF_1_IM_")
            if frames.get(partner, count) != count:
                raise DataError(f"{name} has {count} frames but {partner} has "
                                f"{frames[partner]}", staging / name,
                                "images and masks must have one frame each; check --url")
        os.replace(staging, tmp / "gif_originals")
    return dest


# ------------------------------------------------------------------ 3D-IRCADb-01
IRCADB_PAGE = "https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/"
IRCADB_URL = "https://cloud.ircad.fr/index.php/s/JN3z7EynBiwYyjy/download"
IRCADB_ARCHIVE = "3Dircadb1.zip"
IRCADB_LICENCE = "CC BY-NC-ND 4.0 (https://creativecommons.org/licenses/by-nc-nd/4.0/)"
IRCADB_PATIENTS = (1, 7)  # the two patients of the real-mini profile
IRCADB_PARTS = ("PATIENT_DICOM", "MASKS_DICOM/spleen")
# sha256 over the sorted lines "<relative path>\t<file sha256>" of IRCADB_PARTS (`tree_sha256`),
# computed on the project's shared copies of these patients.
IRCADB_TREE_SHA256 = {
    1: "2388697092c3b7c72bab22044419415f89f6cd568f0c936ca8e73789d2334619",
    7: "a1644d3a54b4cfbb2a89479a8e1588b699efad640b22c06546854a02e5e94a7b",
}
IRCADB_NOTICE = (
    "3D-IRCADb-01 (IRCAD, Strasbourg; " + IRCADB_PAGE + ") is licensed " + IRCADB_LICENCE +
    ": non-commercial use only, no redistribution of modified data, credit IRCAD. "
    "By downloading you accept these terms. The archive holds all 20 patients; kdlib keeps "
    "the CT series and spleen masks of the patients asked for.")


def tree_sha256(folder: str | Path, parts: tuple[str, ...] = IRCADB_PARTS) -> str:
    """One sha256 for the files below `folder/<part>` (names and contents, sorted by path)."""
    folder = Path(folder)
    lines = []
    for part in parts:
        base = folder / part
        files = [p for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
        lines += [f"{p.relative_to(folder).as_posix()}\t{file_digest(p, 'sha256')}\n"
                  for p in files]
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def _patient_complete(folder: Path) -> bool:
    return all((folder / part).is_dir() and any((folder / part).iterdir())
               for part in IRCADB_PARTS)


def _kept_path(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """The path inside a patient folder to keep, or None (other organs, meshes, etc.)."""
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) == 2 and parts[0] == "PATIENT_DICOM":
        return parts
    if len(parts) == 3 and parts[:2] == ("MASKS_DICOM", "spleen"):
        return parts
    return None


class _Budget:
    """Bytes left to unpack for one data set; declared sizes are charged before copying."""

    def __init__(self, archive: Path):
        self.archive, self.limit, self.used = archive, unpack_budget(archive), 0

    def charge(self, size: int) -> None:
        self.used += int(size)
        if self.used > self.limit:
            raise _too_big(self.used, self.limit, self.archive)


def _copy_member(archive_zip: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                 budget: _Budget) -> None:
    """One zip member to `target` in chunks, its declared size charged first (zipfile reads
    no more than the declared size, so memory and disk stay bounded)."""
    budget.charge(info.file_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive_zip.open(info) as source, open(target, "wb") as handle:
        shutil.copyfileobj(source, handle, COPY_CHUNK)


def _unpack_patient(archive_zip: zipfile.ZipFile, patient: int, out: Path, archive: Path,
                    budget: _Budget | None = None) -> int:
    """Copy one patient's CT series and spleen mask out of the 3D-IRCADb archive.

    The archive nests a zip per part (`3Dircadb1.<n>/PATIENT_DICOM.zip`, `MASKS_DICOM.zip`);
    already unpacked folders are accepted as well. Every member is copied in chunks, its
    declared size charged to `budget` first (nested zips go through a temporary file, not
    memory). Returns the number of files written."""
    folder_name = f"3Dircadb1.{patient}"
    budget = budget or _Budget(archive)
    written = 0

    def keep(source: zipfile.ZipFile, info: zipfile.ZipInfo, parts: tuple[str, ...]) -> None:
        nonlocal written
        kept = _kept_path(parts)
        if kept:
            _copy_member(source, info, out.joinpath(*kept), budget)
            written += 1

    for info in archive_zip.infolist():
        parts = _check_name(info.filename, archive)
        if info.is_dir() or folder_name not in parts:
            continue
        inner = parts[parts.index(folder_name) + 1:]
        if len(inner) == 1 and inner[0] in ("PATIENT_DICOM.zip", "MASKS_DICOM.zip"):
            with tempfile.TemporaryDirectory(prefix=".nested.", dir=out) as scratch:
                nested_path = Path(scratch) / inner[0]
                _copy_member(archive_zip, info, nested_path, budget)
                with zipfile.ZipFile(nested_path) as nested:
                    for item in nested.infolist():
                        item_parts = _check_name(item.filename, archive)
                        if not item.is_dir():
                            keep(nested, item, item_parts)
        else:
            keep(archive_zip, info, inner)
    if not _patient_complete(out):
        raise DataError(f"the archive has no CT series and spleen mask for {folder_name}",
                        archive, "choose patients that have a spleen mask, or check --url")
    return written


def download_ircadb(out: str | Path, url: str | None = None,
                    patients=IRCADB_PATIENTS, digests: dict[int, str] | None = None,
                    timeout: float = 60.0, chunk: int = 1 << 20, keep_archive: bool = False,
                    notify=_notice) -> Path:
    """Download 3D-IRCADb-01 and unpack `patients` into `<out>/ircadb/3Dircadb1.<n>/`.

    Prints the licence first. Patients already present are not downloaded again. Each
    patient is verified against `digests` (default: known tree digests of patients 1 and 7;
    other patients are unverified: IRCAD publishes no checksums).
    """
    out = Path(out)
    root = out / "ircadb"
    wanted = sorted({int(p) for p in patients})
    if not wanted or any(p < 1 or p > 20 for p in wanted):
        raise DataError(f"3D-IRCADb-01 has patients 1..20, not {wanted}", None,
                        "choose patient numbers from 1 to 20")
    missing = [p for p in wanted if not _patient_complete(root / f"3Dircadb1.{p}")]
    if not missing:
        return root
    for p in missing:
        if (root / f"3Dircadb1.{p}").exists():
            raise DataError("incomplete patient folder (no PATIENT_DICOM/ or "
                            "MASKS_DICOM/spleen/)", root / f"3Dircadb1.{p}",
                            "delete it and run the command again")
    url = url or IRCADB_URL
    check_url(url)
    digests = IRCADB_TREE_SHA256 if digests is None else digests
    notify(IRCADB_NOTICE)
    root.mkdir(parents=True, exist_ok=True)
    archive = out / IRCADB_ARCHIVE
    if not archive.exists():
        part = out / (IRCADB_ARCHIVE + ".part")
        _fetch(url, part, timeout, chunk)
        os.replace(part, archive)
    try:
        archive_zip = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        archive.unlink(missing_ok=True)
        raise DataError(f"not a zip archive ({exc}); the download is corrupt or the URL "
                        "serves another file", archive,
                        "the bad file was deleted; run the command again, or check --url") from None
    budget = _Budget(archive)
    try:
        with archive_zip:
            for p in missing:
                with atomic_dir(root / f"3Dircadb1.{p}") as tmp:
                    try:
                        _unpack_patient(archive_zip, p, tmp, archive, budget)
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                        raise _Rejected(f"cannot unpack 3Dircadb1.{p} ({_one_line(exc)})",
                                        archive, "it was deleted: run the command again") \
                            from None
                    expected = digests.get(p)
                    if expected and tree_sha256(tmp) != expected:
                        raise _Rejected(f"3Dircadb1.{p} does not match its known checksum; the "
                                        "archive is corrupt or has changed", archive,
                                        "it was deleted: run the command again")
    except DataError as exc:  # noqa: TRY203
        # the archive's own fault (unsafe, oversized, corrupt, changed): deleted at once; a
        # patient it lacks is the caller's choice, and the archive is kept for other patients
        if isinstance(exc, _Rejected):
            archive.unlink(missing_ok=True)
        raise
    licence = root / "LICENSE.txt"
    if not licence.exists():
        atomic_write_text(licence, f"3D-IRCADb-01, IRCAD ({IRCADB_PAGE})\n"
                                   f"Licence: {IRCADB_LICENCE}\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return root


# ------------------------------------------------------------------ one entry point
DATASETS = ("msd", "ircadb", "thesis-slices")
# What `download --list` shows (facts as in the README's data table; nothing is fetched).
DATASET_INFO = {
    "msd": {"what": "MSD Task09_Spleen: 41 labelled CT volumes (NIfTI)",
            "download": "about 1.5 GB", "on_disk": "about 1.5 GB", "licence": "CC BY-SA 4.0",
            "url": DEFAULT_URL},
    "ircadb": {"what": "3D-IRCADb-01 patients 1 and 7: CT DICOM series + manual spleen masks",
               "download": "the whole 20-patient archive (size not measured)",
               "on_disk": "221 MB", "licence": IRCADB_LICENCE, "url": IRCADB_URL},
    "thesis-slices": {"what": "the thesis author's 8 animated GIFs -> 85 PNG image/mask pairs",
                      "download": "1.3 MB", "on_disk": "2.8 MB",
                      "licence": "derived from MSD Task09 (CC BY-SA 4.0)",
                      "url": THESIS_GIF_URL},
}


def dataset_lines() -> list[str]:
    """One line per data set: size, licence and address (`download --list`)."""
    return [f"{name}: {info['what']}; download {info['download']}, on disk {info['on_disk']}; "
            f"licence {info['licence']}; {info['url']}" for name, info in DATASET_INFO.items()]


def download_dataset(name: str, out: str | Path, url: str | None = None,
                     sha256: str | None = None, **kwargs) -> Path:
    """`python -m kdlib download --dataset NAME`: one of DATASETS into `out`."""
    if url is not None:
        check_url(url)
    check_sha256(sha256)
    if name == "msd":
        return download_msd(out, url=url, sha256=sha256, **kwargs)
    if sha256:
        raise DataError(f"--sha256 applies to --dataset msd only, not {name!r}", None,
                        f"{name} is verified against its built-in checksums")
    if name == "ircadb":
        return download_ircadb(out, url=url, **kwargs)
    if name == "thesis-slices":
        return download_thesis_slices(out, url=url, **kwargs)
    raise DataError(f"unknown dataset {name!r}", None, f"use one of {', '.join(DATASETS)}")
