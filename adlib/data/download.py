"""Official dataset downloads: a registry of sources, resumable HTTP transfer, checksums, safe extraction.

`download_dataset(name, root)` fetches the archive into `root/.downloads/` (resuming a `.part` file with
an HTTP Range request), verifies its checksum where one is known, extracts it with every member
checked to stay inside the target, and moves the result to `root/<folder>`.
"""
from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from adlib.io import remove_stale, staging_folder

from .layout import IMAGE_EXTENSIONS, DatasetError, list_categories


class DownloadError(RuntimeError):
    """A transfer failed, a checksum did not match, or a source cannot be fetched automatically."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (absolute path, '..', escaping link)."""


class ArchiveError(DownloadError):
    """An archive cannot be extracted (corrupt or truncated data, conflicting members) or holds no dataset."""


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
    layout: bool = True  # the extracted folder is read in place (category folders); False: converted by `after`


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
        after=_convert_visa_after, layout=False),
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
                  progress: bool = True, timeout: float = 60.0, attempts: int = 3) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming it with HTTP Range requests; verify the checksum.

    The bytes received are checked against the server's Content-Length and Content-Range: a transfer that
    ends early (the connection closed or reset) keeps `dest.part` and is resumed, up to `attempts` times in
    this call while each attempt makes progress, and on the next call otherwise. A short file is never
    renamed to `dest`. A server that ignores the Range header (status 200) restarts the transfer. A
    complete file whose checksum does not match is deleted and DownloadError raised.
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
    for attempt in range(max(1, attempts)):
        before = part.stat().st_size if part.is_file() else 0
        total, interrupted = _fetch(url, part, timeout, progress, dest.name)
        size = part.stat().st_size if part.is_file() else 0
        if not interrupted and (total is None or size == total):
            break
        if total is not None and size > total:
            part.unlink()
            raise DownloadError(f"download of {url} gave {size} bytes, more than the {total} the server announced; "
                                f"the partial file was deleted, run again to restart")
        of = f" of {total}" if total is not None else ""
        if size <= before or attempt == attempts - 1:
            raise DownloadError(f"download of {url} stopped after {size}{of} bytes; the partial file "
                                f"{part} is kept: run the same command again to resume it")
        print(f"download of {url} stopped after {size}{of} bytes; resuming", file=sys.stderr)
    try:
        verify(part, sha256, md5)
    except DownloadError:
        part.unlink()  # complete as far as the server says, and wrong: resuming it cannot help
        raise
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout: float, progress: bool, label: str) -> tuple[int | None, bool]:
    """One request appending to (or restarting) `part`; returns the file's expected full size (None when
    the server does not say) and whether the transfer broke off. What arrived stays in `part`."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "adlib"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after `offset`: the part file should be complete
            total = _range_total(error.headers.get("Content-Range", ""))
            return (offset if total is None else total), False
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"download of {url} failed: {error}") from error
    with response:
        status = getattr(response, "status", None) or 200
        resumed = offset > 0 and status == 206
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if resumed:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
            if not match or int(match.group(1)) != offset:
                raise DownloadError(f"server answered Range bytes={offset}- with Content-Range "
                                    f"{content_range!r}; delete {part} to restart")
            end = int(match.group(2)) + 1
            total = int(match.group(3)) if match.group(3) != "*" else end
            if length is not None and length != end - offset:
                raise DownloadError(f"server answered Range bytes={offset}- with Content-Range {content_range!r} "
                                    f"but Content-Length {length}; delete {part} to restart")
        else:
            offset, total = 0, length
        try:
            _copy_stream(response, part, "ab" if resumed else "wb", offset, total, progress, label)
        except (OSError, http.client.HTTPException) as error:  # reset, timeout, IncompleteRead: keep the bytes
            print(f"download of {url} interrupted: {error}", file=sys.stderr)
            return total, True
    return total, False


def _range_total(content_range: str) -> int | None:
    match = re.match(r"bytes \*/(\d+)", content_range)
    return int(match.group(1)) if match else None


def _copy_stream(response, part: Path, mode: str, start: int, total: int | None, progress: bool, label: str) -> None:
    from tqdm import tqdm

    with open(part, mode) as handle, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=label,
                                          disable=not progress, file=sys.stderr) as bar:
        for block in iter(lambda: response.read(1 << 20), b""):
            try:
                handle.write(block)
            except OSError as error:  # a full disk is not a broken connection: stop, keep what was written
                raise DownloadError(f"cannot write {part}: {error.strerror or error}; free space and run again "
                                    "to resume") from None
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


def _check_members(members: list[_Member]) -> None:
    """Refuse, before anything is written, members that escape the folder or cannot coexist.

    A path given as a file or link that another member needs as a folder (``a`` then ``a/b``), or a
    folder that is also given as a file, is an ArchiveError; a member written through a link is refused.
    """
    kinds: dict[tuple[str, ...], str] = {}
    for member in members:
        parts = _member_path(Path("."), member.name).parts
        if member.kind == "symlink":
            _link_target(member.name, member.link)
        elif member.kind == "hardlink":
            _member_path(Path("."), member.link)
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            if kinds.get(parent, "dir") != "dir":
                what = "link" if kinds[parent] == "symlink" else "file"
                if what == "link":
                    raise UnsafeArchiveError(f"archive member {member.name!r} would be written through the link "
                                             f"{'/'.join(parent)!r}")
                raise ArchiveError(f"archive member {member.name!r} needs {'/'.join(parent)!r} to be a folder, but "
                                   f"the archive has it as a {what}")
            kinds[parent] = "dir"
        if not parts:
            continue
        kind = "dir" if member.kind == "dir" else member.kind
        if parts in kinds and (kinds[parts] == "dir") != (kind == "dir"):
            raise ArchiveError(f"archive member {member.name!r} is a {'folder' if kind == 'dir' else 'file'}, but "
                               f"the archive also has {member.name.rstrip('/')!r} as a "
                               f"{'folder' if kinds[parts] == 'dir' else 'file'}")
        kinds[parts] = kind


READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, lzma.LZMAError, zlib.error, EOFError,
               OSError, ValueError, NotImplementedError, RuntimeError)  # corrupt or truncated data, unsupported compression


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar (any compression) or zip archive into `dest`, refusing anything that would escape it.

    Every member is checked before anything is written: absolute paths, '..' components and links
    pointing outside `dest` raise UnsafeArchiveError; members that cannot coexist (a file `a` and a member
    `a/b`) raise ArchiveError. Hard links are materialized as copies; while writing, each target's real
    path (following links already extracted) must stay inside the folder. The archive is extracted into a
    staging folder beside `dest` and moved into place only when all of it succeeded, so a refused,
    truncated or corrupt archive leaves nothing behind (`dest` must be absent or an empty folder).
    Unreadable data raises ArchiveError naming the archive; the archive itself is never touched.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        opener, lister = zipfile.ZipFile, _zip_members
    elif tarfile.is_tarfile(archive):
        opener, lister = tarfile.open, _tar_members
    else:
        raise ArchiveError(f"{archive} is neither a tar nor a zip archive (or it is truncated); it is left in "
                           "place: delete it to download it again")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"cannot extract {archive} into {dest}: it exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale([dest.parent], recursive=False)  # staging folders of killed extractions
    staging = None
    try:
        with opener(archive) as handle:
            members = lister(handle)
            _check_members(members)
            staging = staging_folder(dest)
            _write_members(members, staging)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.chmod(staging, _folder_mode())  # a staging folder is private (0700); the dataset folder is not
        os.replace(staging, dest)
        staging = None
    except (UnsafeArchiveError, ArchiveError):
        raise
    except READ_ERRORS as error:
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ArchiveError(f"cannot extract {archive}: {detail}. The archive is left in place; if it is "
                           "truncated or corrupt, delete it and download it again") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder under this process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _write_members(members: list[_Member], dest: Path) -> None:
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
            if not _inside(dest, os.path.join(target.parent, member.link)):  # follows links already made
                raise UnsafeArchiveError(f"archive member {member.name!r} links outside the extraction folder")
            os.symlink(member.link, target)
        else:
            source_path = _member_path(dest, member.link)
            if not _inside(dest, source_path) or not source_path.is_file():
                raise UnsafeArchiveError(f"hard link {member.name!r} -> {member.link!r} does not point to a "
                                         "file extracted inside the folder")
            shutil.copy2(source_path, target)


def _single_folder(folder: Path) -> Path:
    """The lone sub-folder of `folder` when the archive wrapped everything in one, else `folder`.

    A link is never taken as that folder (an archive holding only `top -> .` must not become the dataset)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if (len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink()
            and not (entries[0] / "train").is_dir()):
        return entries[0]
    return folder


def _image_files(folder: Path) -> int:
    """Image files under `folder`, not following links (what an archive really brought)."""
    count = 0
    for dirpath, _, filenames in os.walk(folder):
        count += sum(1 for name in filenames if name.lower().endswith(IMAGE_EXTENSIONS)
                     and not os.path.islink(os.path.join(dirpath, name)))
    return count


def check_extracted(source: DatasetSource, folder: Path, archive: Path) -> None:
    """ArchiveError unless the extracted `folder` holds a dataset: image files, and (for sources read in
    place, `source.layout`) at least one category folder."""
    if _image_files(folder) == 0:
        raise ArchiveError(f"{archive} holds no image files; it is not the {source.name} dataset "
                           "(the archive is left in place: delete it and download again)")
    if source.layout:
        try:
            list_categories(folder)
        except DatasetError as error:
            raise ArchiveError(f"{archive} does not contain the {source.name} dataset: {error} "
                               "(the archive is left in place)") from None


def download_dataset(name: str, root: str | Path, url: str | None = None, sha256: str | None = None,
                     progress: bool = True) -> Path:
    """Download, verify and extract a registered dataset into `root/<folder>`; returns that folder.

    `url` overrides the address (a mirror or a local `file://` archive); the registry's checksum is still
    checked unless `sha256` gives another one. The result must be a dataset (`check_extracted`), or
    nothing is moved into `root/<folder>`.
    """
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    url = url or source.url
    if url is None:
        raise DownloadError(f"{name} has no direct download link: {source.note} Page: {source.page}")
    root = Path(root)
    target = root / source.folder
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DownloadError(f"{target} exists and is not a folder; remove it to download {name}")
    if target.exists() and any(target.iterdir()):
        print(f"{target} already exists; not downloading {name}", file=sys.stderr)
    else:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale([root], recursive=False)                     # staging folders of killed runs
        remove_stale([root / ".downloads"], recursive=False)      # temporary files of killed runs
        checksum = sha256 or source.sha256
        md5 = None if sha256 else source.md5
        if not (checksum or md5):
            print(f"warning: no checksum known for {url}; the download is not verified", file=sys.stderr)
        try:
            archive = download_file(url, root / ".downloads" / source.filename, checksum, md5, progress)
        except DownloadError as error:
            if "mismatch" in str(error) and url != source.url and not sha256:
                raise DownloadError(f"{error}. {url} is not the registry's archive for {name}; if it is meant "
                                    "to differ, pass its checksum with --sha256") from None
            raise
        staging = root / f".{source.folder}.extract-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            extract_archive(archive, staging)
            found = _single_folder(staging)
            check_extracted(source, found, archive)
            if target.exists():
                target.rmdir()  # empty, checked above
            os.replace(found, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if source.after is not None:
        source.after(target, root)
    return target
