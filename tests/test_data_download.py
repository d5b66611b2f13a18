"""Downloads (resume, checksums, file:// and loopback HTTP) and safe archive extraction."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adlib.data import AnomalyDataset, DownloadError, UnsafeArchiveError, download_dataset, download_file, extract_archive
from adlib.data.download import SOURCES

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A loopback HTTP server for one payload, honouring Range requests unless told not to."""

    def __init__(self, payload: bytes, ranges: bool = True, cut: float | None = None) -> None:
        """`cut`: send only this fraction of each response body (announcing all of it), then close."""
        self.payload, self.ranges, self.requests, self.cut = payload, ranges, [], cut
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                header = self.headers.get("Range")
                outer.requests.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header and outer.ranges else 0
                body = outer.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    body = body[: int(len(body) * outer.cut)]
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_resume_from_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    (tmp_path / "archive.bin.part").write_bytes(PAYLOAD[:123_456])
    with _Server(PAYLOAD) as server:
        download_file(server.url, dest, sha256=SHA, progress=False)
    assert server.requests == ["bytes=123456-"]
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "archive.bin.part").exists()


def test_server_without_range_restarts(tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    (tmp_path / "archive.bin.part").write_bytes(b"garbage that must not survive")
    with _Server(PAYLOAD, ranges=False) as server:
        download_file(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_removes_file(tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    with _Server(PAYLOAD) as server, pytest.raises(DownloadError, match="sha256 mismatch .* expected 0000"):
        download_file(server.url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "archive.bin.part").exists()


def test_file_url_and_unreachable(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    out = download_file(source.as_uri(), tmp_path / "out" / "copy.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="failed"):
        download_file((tmp_path / "nope.bin").as_uri(), tmp_path / "x.bin", progress=False)


def test_registry_entries_are_complete() -> None:
    assert set(SOURCES) == {"mvtec_ad", "visa", "btad", "mvtec_loco", "dtd_synthetic"}
    for source in SOURCES.values():
        assert source.page.startswith("https://")
        assert source.url is None or source.url.startswith("https://")
        assert source.sha256 is None or len(source.sha256) == 64
        if source.sha256 is None and source.md5 is None:
            assert "unknown" in source.note.lower()
    with pytest.raises(DownloadError, match="no direct download link"):
        download_dataset("dtd_synthetic", "/nonexistent")


def _png_bytes(value: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tar(path: Path, entries: list[tuple]) -> Path:
    """entries: (name, bytes) for files, (name, "sym", target) / (name, "hard", target) for links."""
    with tarfile.open(path, "w:gz") as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if len(entry) == 3:
                info.type = tarfile.SYMTYPE if entry[1] == "sym" else tarfile.LNKTYPE
                info.linkname = entry[2]
                archive.addfile(info)
            else:
                info.size = len(entry[1])
                archive.addfile(info, io.BytesIO(entry[1]))
    return path


def test_download_dataset_end_to_end_btad_layout(tmp_path: Path, capsys) -> None:
    """A BTAD-shaped archive wrapped in one top folder, served over loopback HTTP, read by the BTAD layout."""
    archive = _tar(tmp_path / "btad.tar.gz", [
        ("BTech_Dataset_transformed/01/train/ok/0000.png", _png_bytes(100)),
        ("BTech_Dataset_transformed/01/test/ok/0000.png", _png_bytes(100)),
        ("BTech_Dataset_transformed/01/test/ko/0000.png", _png_bytes(30)),
        ("BTech_Dataset_transformed/01/ground_truth/ko/0000.png", _png_bytes(255, "L")),
    ])
    payload = archive.read_bytes()
    from adlib.app.cli import main as adlib_main

    with _Server(payload) as server:
        rc = adlib_main(["data", "download", "btad", "--root", str(tmp_path / "data"), "--url", server.url,
                         "--sha256", hashlib.sha256(payload).hexdigest(), "--quiet"])
    assert rc == 0
    dataset = AnomalyDataset(tmp_path / "data" / "btad", "01", "test")
    assert dataset.layout.name == "btad" and dataset.labels == [1, 0]
    assert dataset[0]["mask"].sum() == 64
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads", "btad"]


MALICIOUS = {
    "absolute": lambda outside: [("ok.txt", b"fine"), (str(outside / "evil.txt"), b"evil")],
    "dotdot": lambda outside: [("ok.txt", b"fine"), ("a/../../outside/evil.txt", b"evil")],
    "symlink_abs": lambda outside: [("ok.txt", b"fine"), ("link", "sym", str(outside)), ("link/evil.txt", b"evil")],
    "symlink_rel": lambda outside: [("ok.txt", b"fine"), ("link", "sym", "../outside"), ("link/evil.txt", b"evil")],
    "symlink_chain": lambda outside: [("d/x", "sym", ".."), ("l1", "sym", "d/x/../../outside"),
                                      ("l1/evil.txt", b"evil")],
    "hardlink": lambda outside: [("ok.txt", b"fine"), ("hard", "hard", "../outside/secret.txt")],
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_malicious_tar_is_refused(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    archive = _tar(tmp_path / "evil.tar.gz", MALICIOUS[kind](outside))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, dest)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not dest.exists(), "nothing is written for a refused archive"


def test_malicious_zip_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, entries in {"dotdot": [("../outside/evil.txt", b"evil", 0)],
                          "absolute": [(str(outside / "evil.txt"), b"evil", 0)],
                          "symlink": [("link", b"../outside", 0o120777), ("link/evil.txt", b"evil", 0)]}.items():
        archive = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            for member, data, mode in entries:
                info = zipfile.ZipInfo(member)
                info.external_attr = mode << 16
                handle.writestr(info, data)
        with pytest.raises(UnsafeArchiveError):
            extract_archive(archive, tmp_path / f"dest_{name}")
        assert not (tmp_path / f"dest_{name}").exists()
    assert list(outside.iterdir()) == []


def test_safe_archives_extract(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", [("top/a.txt", b"A"), ("top/sub/b.txt", b"B"),
                                            ("top/link", "sym", "sub/b.txt"), ("top/hard", "hard", "top/a.txt")])
    dest = extract_archive(archive, tmp_path / "dest")
    assert (dest / "top/sub/b.txt").read_bytes() == b"B" and (dest / "top/link").read_bytes() == b"B"
    assert (dest / "top/hard").read_bytes() == b"A"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as handle:
        handle.writestr("dir/c.txt", b"C")
    assert (extract_archive(tmp_path / "ok.zip", tmp_path / "zdest") / "dir/c.txt").read_bytes() == b"C"
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(DownloadError, match="neither a tar nor a zip"):
        extract_archive(tmp_path / "plain.txt", tmp_path / "pdest")


def test_visa_download_extracts_and_converts(tmp_path: Path) -> None:
    mask = io.BytesIO()
    Image.fromarray(np.pad(np.ones((2, 2), np.uint8), ((0, 6), (0, 6)))).save(mask, format="PNG")
    csv = ("object,split,label,image,mask\n"
           "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
           "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
           "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n")
    archive = _tar(tmp_path / "VisA.tar", [
        ("split_csv/1cls.csv", csv.encode()),
        ("candle/Data/Images/Normal/0000.JPG", _png_bytes(90)),
        ("candle/Data/Images/Normal/0001.JPG", _png_bytes(91)),
        ("candle/Data/Images/Anomaly/000.JPG", _png_bytes(20)),
        ("candle/Data/Masks/Anomaly/000.png", mask.getvalue()),
    ])
    target = download_dataset("visa", tmp_path / "data", url=archive.as_uri(), sha256=_sha(archive), progress=False)
    assert target == tmp_path / "data" / "visa_raw" and (target / "split_csv" / "1cls.csv").is_file()
    test = AnomalyDataset(tmp_path / "data" / "visa", "candle", "test")
    assert test.labels == [1, 0] and test[0]["mask"].sum() == 4


def test_unsafe_download_leaves_no_dataset_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [("cat/train/good/0.png", _png_bytes(1)), ("../evil.png", b"x")])
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        download_dataset("mvtec_ad", tmp_path / "data", url=archive.as_uri(), sha256=_sha(archive), progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]
    assert not (tmp_path / "evil.png").exists()


# ------------------------------------------------------------------ issue 15: short reads, checksums, archives
def test_short_read_keeps_the_part_file_and_resumes_it(tmp_path: Path) -> None:
    """A server closing at half the Content-Length: the short file is never renamed into place, the `.part`
    file survives (a checksum is given: it must not be deleted for being short) and the next call resumes."""
    dest, part = tmp_path / "archive.bin", tmp_path / "archive.bin.part"
    with _Server(PAYLOAD, cut=0.5) as server, pytest.raises(DownloadError, match="stopped after 150000 of 300000"):
        download_file(server.url, dest, sha256=SHA, progress=False, attempts=1)
    assert not dest.exists() and part.stat().st_size == 150_000
    with _Server(PAYLOAD) as server:
        download_file(server.url, dest, sha256=SHA, progress=False)
    assert server.requests == ["bytes=150000-"] and dest.read_bytes() == PAYLOAD and not part.exists()


def test_short_reads_are_resumed_within_one_call(tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    with _Server(PAYLOAD, cut=0.6) as server:
        with pytest.raises(DownloadError, match="is kept: run the same command again"):
            download_file(server.url, dest, progress=False, attempts=2)  # no checksum: sizes alone decide
        assert len(server.requests) == 2 and server.requests[1] == "bytes=180000-"
        server.cut = None
        download_file(server.url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_cli_short_download_is_an_error_not_a_broken_archive(tmp_path: Path, capsys) -> None:
    from adlib.app.cli import main as adlib_main

    root = tmp_path / "R"
    with _Server(PAYLOAD, cut=0.5) as server:
        rc = adlib_main(["data", "download", "mvtec_ad", "--root", str(root), "--url", server.url,
                         "--sha256", SHA, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "stopped after" in err
    downloads = root / ".downloads"
    assert sorted(p.name for p in downloads.iterdir()) == ["mvtec_anomaly_detection.tar.xz.part"]
    assert not (root / "mvtec_ad").exists()


def test_a_url_override_keeps_the_registry_checksum(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "other.tar.gz", [("cat/train/good/0.png", _png_bytes(1))])
    with pytest.raises(DownloadError, match="sha256 mismatch.*pass its checksum with --sha256"):
        download_dataset("mvtec_ad", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert not (tmp_path / "data" / "mvtec_ad").exists()


def test_corrupt_archive_is_one_line_and_stays_in_place(tmp_path: Path, capsys) -> None:
    from adlib.app.cli import main as adlib_main

    good = _tar(tmp_path / "full.tar.gz", [(f"cat/train/good/{i}.png", bytes(np.random.default_rng(i).integers(
        0, 256, 50_000, dtype=np.uint8))) for i in range(4)]).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    sha = _sha(tmp_path / "cut.tar.gz")
    argv = ["data", "download", "mvtec_ad", "--root", str(tmp_path / "R"), "--url", (tmp_path / "cut.tar.gz").as_uri(),
            "--sha256", sha, "--quiet"]
    assert adlib_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    archive = tmp_path / "R" / ".downloads" / "mvtec_anomaly_detection.tar.xz"
    assert len([line for line in err if line.startswith("error:")]) == 1 and str(archive) in err[-1]
    assert "Traceback" not in "\n".join(err) and archive.is_file()
    assert sorted(p.name for p in (tmp_path / "R").iterdir()) == [".downloads"]


@pytest.mark.parametrize("entries, message", [
    ([("top", "sym", ".")], "holds no image files"),
    ([("readme.txt", b"hello")], "holds no image files"),
    ([("images/0.png", _png_bytes(3))], "does not contain the mvtec_ad dataset"),
])
def test_an_archive_without_a_dataset_is_not_a_success(tmp_path: Path, entries, message) -> None:
    archive = _tar(tmp_path / "a.tar.gz", entries)
    with pytest.raises(DownloadError, match=message):
        download_dataset("mvtec_ad", tmp_path / "data", url=archive.as_uri(), sha256=_sha(archive), progress=False)
    target = tmp_path / "data" / "mvtec_ad"
    assert not target.exists() and not target.is_symlink()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]


@pytest.mark.parametrize("entries", [
    [("a", b"file"), ("a/b.txt", b"inside")],
    [("a/b.txt", b"inside"), ("a", b"file")],
])
def test_a_file_and_a_folder_of_the_same_name_is_a_clear_error(tmp_path: Path, entries) -> None:
    from adlib.data.download import ArchiveError

    archive = _tar(tmp_path / "clash.tar.gz", entries)
    with pytest.raises(ArchiveError, match="'a'"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_refused_archive_leaves_no_partial_tree(tmp_path: Path) -> None:
    """Refused while writing (the link chain escapes only once `d/x` exists): nothing is left behind."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(tmp_path / "chain.tar.gz", [("ok.txt", b"fine"), ("d/x", "sym", ".."),
                                               ("l1", "sym", "d/x/../../outside")])
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "work" / "dest")
    assert list((tmp_path / "work").iterdir()) == []
    assert list(outside.iterdir()) == []


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_removed_on_the_next_download(tmp_path: Path) -> None:
    import subprocess
    import sys

    archive = _tar(tmp_path / "ok.tar.gz", [("cat/train/good/0.png", _png_bytes(1)),
                                            ("cat/test/good/0.png", _png_bytes(1))])
    root = tmp_path / "data"
    dead = _dead_pid()
    stale_staging = root / f".mvtec_ad.extract-{dead}-abc123"
    (stale_staging / "cat").mkdir(parents=True)
    (stale_staging / "cat" / "big.bin").write_bytes(b"x" * 1000)
    legacy_staging = root / ".mvtec_ad.extract-q1w2e3r4"  # named before the pid was part of the name
    legacy_staging.mkdir()
    os.utime(legacy_staging, (1, 1))
    (root / ".downloads").mkdir()
    stale_tmp = root / ".downloads" / f".x.csv.{dead}.abcdefgh.tmp"
    stale_tmp.write_text("half")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        live_staging = root / f".mvtec_ad.extract-{alive.pid}-zzz999"
        live_staging.mkdir()
        try:
            download_dataset("mvtec_ad", root, url=archive.as_uri(), sha256=_sha(archive), progress=False)
        finally:
            alive.kill()
    assert not stale_staging.exists() and not legacy_staging.exists() and not stale_tmp.exists()
    assert live_staging.exists(), "a staging folder of a running process is left alone"
    assert (root / "mvtec_ad" / "cat" / "train" / "good" / "0.png").is_file()


class _NoLength(_Server):
    """Sends no Content-Length and resets the connection half-way: only the broken transfer shows it."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                outer.requests.append(self.headers.get("Range"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(outer.payload[: len(outer.payload) // 2])
                self.wfile.flush()
                import socket
                import struct

                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()  # RST, not a clean end

            def log_message(self, *args) -> None:
                pass

        self.httpd.RequestHandlerClass = Handler


def test_a_reset_without_content_length_is_not_taken_as_complete(tmp_path: Path) -> None:
    dest = tmp_path / "archive.bin"
    with _NoLength(PAYLOAD) as server, pytest.raises(DownloadError, match="is kept"):
        download_file(server.url, dest, progress=False, attempts=1)
    assert not dest.exists() and (tmp_path / "archive.bin.part").exists()
