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

    def __init__(self, payload: bytes, ranges: bool = True) -> None:
        self.payload, self.ranges, self.requests = payload, ranges, []
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
    from adlib.cli import main as adlib_main

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
    leftovers = [p for p in dest.rglob("*")] if dest.exists() else []
    assert all(not p.is_symlink() or os.path.realpath(p).startswith(str(dest.resolve())) for p in leftovers)


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
    target = download_dataset("visa", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert target == tmp_path / "data" / "visa_raw" and (target / "split_csv" / "1cls.csv").is_file()
    test = AnomalyDataset(tmp_path / "data" / "visa", "candle", "test")
    assert test.labels == [1, 0] and test[0]["mask"].sum() == 4


def test_unsafe_download_leaves_no_dataset_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [("cat/train/good/0.png", _png_bytes(1)), ("../evil.png", b"x")])
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        download_dataset("mvtec_ad", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]
    assert not (tmp_path / "evil.png").exists()
