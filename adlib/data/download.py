"""Official dataset downloads: a registry of sources, resumable HTTP transfer, checksums, safe extraction.

`download_dataset(name, root)` fetches the archive into `root/.downloads/` (resuming a `.part` file with
an HTTP Range request), verifies its checksum where one is known, extracts it with every member
checked to stay inside the target, and moves the result to `root/<folder>`.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable


class DownloadError(RuntimeError):
    """A transfer failed, a checksum did not match, or a source cannot be fetched automatically."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (absolute path, '..', escaping link)."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from. Checksums are None where no published value is known to us."""

    name: str
    folder: str
    url: str | None
    filename: str
    page: str
    license: str
    sha256: str | None = None
    md5: str | None = None
    note: str = ""
    after: Callable[[Path, Path], None] | None = None  # (extracted folder, root) -> None


def _convert_visa_after(extracted: Path, root: Path) -> None:
    from .visa import convert_visa

    target = root / "visa"
    if target.exists() and any(target.iterdir()):
        print(f"{target} exists; skipping the VisA conversion", file=sys.stderr)
        return
    counts = convert_visa(extracted, target)
    print(f"converted VisA into {target}: {len(counts)} categories", file=sys.stderr)


SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    DatasetSource(
        name="mvtec_ad", folder="mvtec_ad",
        url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
            "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
        filename="mvtec_anomaly_detection.tar.xz",
        page="https://www.mvtec.com/company/research/datasets/mvtec-ad", license="CC BY-NC-SA 4.0",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        md5="eefca59f2cede9c3fc5b6befbfec275e",
        note="checksums as listed by anomalib; MVTec asks users to accept the licence on the page first"),
    DatasetSource(
        name="visa", folder="visa_raw",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        filename="VisA_20220922.tar",
        page="https://github.com/amazon-science/spot-diff", license="CC BY 4.0",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        md5="ef908989b6dc701fc218f643c127a4de",
        note="checksums as listed by anomalib; extracted to visa_raw/ and converted to visa/ (MVTec layout) "
             "with split_csv/1cls.csv",
        after=_convert_visa_after),
    DatasetSource(
        name="btad", folder="btad",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip", filename="btad.zip",
        page="https://github.com/pankajmishra000/VT-ADL", license="see the dataset page",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        note="sha256 as listed by anomalib; the archive's single top folder (BTech_Dataset_transformed) "
             "becomes btad/"),
    DatasetSource(
        name="mvtec_loco", folder="mvtec_loco",
        url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/"
            "430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz",
        filename="mvtec_loco_anomaly_detection.tar.xz",
        page="https://www.mvtec.com/company/research/datasets/mvtec-loco", license="CC BY-NC-SA 4.0",
        sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
        md5="d40f092ac6f88433f609583c4a05f56f",
        note="checksums as listed by anomalib"),
    DatasetSource(
        name="dtd_synthetic", folder="dtd_synthetic", url=None, filename="DTD-Synthetic.zip",
        page="https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1",
        license="see the dataset page",
        note="published as a Google Drive folder (Aota et al., WACV 2023) with no direct link; download the "
             "archive in a browser and pass --url file:///path/to/archive.zip. Checksum unknown."),
)}


# ------------------------------------------------------------------------------------------- transfer
def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None) -> bool:
    """True when the file matches the given checksum(s); False when none is given (not verified)."""
    checks = [(alg, want) for alg, want in (("sha256", sha256), ("md5", md5)) if want]
    for algorithm, expected in checks:
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            raise DownloadError(f"{algorithm} mismatch for {path}: expected {expected}, got {actual}")
    return bool(checks)


def download_file(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` with an HTTP Range request; verify the checksum.

    A server that ignores the Range header (status 200) restarts the transfer. On a checksum mismatch
    the file is deleted and DownloadError raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            verify(dest, sha256, md5)
            return dest
        except DownloadError:
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "adlib"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part file is already complete
            response = None
        else:
            raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"download of {url} failed: {error}") from error
    if response is not None:
        with response:
            status = getattr(response, "status", None) or 200
            resumed = offset > 0 and status == 206
            if resumed:
                content_range = response.headers.get("Content-Range", "")
                match = re.match(r"bytes (\d+)-", content_range)
                if not match or int(match.group(1)) != offset:
                    raise DownloadError(f"server answered Range bytes={offset}- with Content-Range "
                                        f"{content_range!r}; delete {part} to restart")
            length = response.headers.get("Content-Length")
            total = (int(length) + (offset if resumed else 0)) if length else None
            _copy_stream(response, part, "ab" if resumed else "wb", offset if resumed else 0, total,
                         progress, dest.name)
    try:
        verify(part, sha256, md5)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _copy_stream(response, part: Path, mode: str, start: int, total: int | None, progress: bool, label: str) -> None:
    from tqdm import tqdm

    with open(part, mode) as handle, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=label,
                                          disable=not progress, file=sys.stderr) as bar:
        for block in iter(lambda: response.read(1 << 20), b""):
            handle.write(block)
            bar.update(len(block))


# ----------------------------------------------------------------------------------------- extraction
def _member_path(root: Path, name: str) -> Path:
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(clean).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    if not parts:
        return root
    return root.joinpath(*parts)


def _inside(root: Path, path: str | Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def _link_target(name: str, link: str) -> str:
    """A link's target as an archive-relative path; UnsafeArchiveError when it leaves the archive."""
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(f"archive member {name!r} links to the absolute path {link!r}")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name.replace("\\", "/")), link))
    if joined == ".." or joined.startswith("../"):
        raise UnsafeArchiveError(f"archive member {name!r} links to {link!r}, outside the extraction folder")
    return joined


@dataclass
class _Member:
    name: str
    kind: str                # "dir", "file", "symlink", "hardlink"
    link: str = ""
    open: Callable | None = None
    mode: int = 0o644


def _tar_members(archive: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in archive.getmembers():
        if info.isdir():
            members.append(_Member(info.name, "dir"))
        elif info.isfile():
            members.append(_Member(info.name, "file", open=lambda info=info: archive.extractfile(info),
                                   mode=info.mode & 0o755 | 0o600))
        elif info.issym():
            members.append(_Member(info.name, "symlink", info.linkname))
        elif info.islnk():
            members.append(_Member(info.name, "hardlink", info.linkname))
        else:
            raise UnsafeArchiveError(f"archive member {info.name!r} is a device, FIFO or other special file")
    return members


def _zip_members(archive: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            members.append(_Member(info.filename, "symlink", archive.read(info).decode("utf-8")))
        elif info.is_dir():
            members.append(_Member(info.filename, "dir"))
        else:
            members.append(_Member(info.filename, "file", open=lambda info=info: archive.open(info)))
    return members


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar (any compression) or zip archive into `dest`, refusing anything that would escape it.

    Every member is checked before anything is written: absolute paths, '..' components and links
    pointing outside `dest` raise UnsafeArchiveError. Hard links are materialized as copies; while
    writing, each target's real path (following links already extracted) must stay inside `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        opener, lister = zipfile.ZipFile, _zip_members
    elif tarfile.is_tarfile(archive):
        opener, lister = tarfile.open, _tar_members
    else:
        raise DownloadError(f"{archive} is neither a tar nor a zip archive")
    with opener(archive) as handle:
        members = lister(handle)
        for member in members:  # validate everything first: nothing is written for a bad archive
            _member_path(dest, member.name)
            if member.kind == "symlink":
                _link_target(member.name, member.link)
            elif member.kind == "hardlink":
                _member_path(dest, member.link)
        dest.mkdir(parents=True, exist_ok=True)
        for member in members:
            target = _member_path(dest, member.name)
            if not _inside(dest, target.parent):
                raise UnsafeArchiveError(f"archive member {member.name!r} would be written through a link "
                                         "outside the extraction folder")
            if member.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()
            if member.kind == "file":
                with member.open() as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(target, member.mode)
            elif member.kind == "symlink":
                _link_target(member.name, member.link)
                if not _inside(dest, os.path.join(target.parent, member.link)):  # follows links already made
                    raise UnsafeArchiveError(f"archive member {member.name!r} links outside the extraction folder")
                os.symlink(member.link, target)
            else:
                source_path = _member_path(dest, member.link)
                if not _inside(dest, source_path) or not source_path.is_file():
                    raise UnsafeArchiveError(f"hard link {member.name!r} -> {member.link!r} does not point to a "
                                             "file extracted inside the folder")
                shutil.copy2(source_path, target)
    return dest


def _single_folder(folder: Path) -> Path:
    """The lone sub-folder of `folder` when the archive wrapped everything in one, else `folder`."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / "train").is_dir():
        return entries[0]
    return folder


def download_dataset(name: str, root: str | Path, url: str | None = None, sha256: str | None = None,
                     progress: bool = True) -> Path:
    """Download, verify and extract a registered dataset into `root/<folder>`; returns that folder.

    `url` and `sha256` override the registry (e.g. a mirror or a local `file://` archive).
    """
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    url = url or source.url
    if url is None:
        raise DownloadError(f"{name} has no direct download link: {source.note} Page: {source.page}")
    root = Path(root)
    target = root / source.folder
    if target.exists() and any(target.iterdir()):
        print(f"{target} already exists; not downloading {name}", file=sys.stderr)
    else:
        overridden = url != source.url
        checksum = sha256 or (None if overridden else source.sha256)
        md5 = None if (overridden or sha256) else source.md5
        if not (checksum or md5):
            print(f"warning: no checksum known for {url}; the download is not verified", file=sys.stderr)
        archive = download_file(url, root / ".downloads" / source.filename, checksum, md5, progress)
        staging = Path(tempfile.mkdtemp(prefix=f".{source.folder}.extract-", dir=root))
        try:
            extract_archive(archive, staging)
            if target.exists():
                target.rmdir()  # empty, checked above
            os.replace(_single_folder(staging), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if source.after is not None:
        source.after(target, root)
    return target
