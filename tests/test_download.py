"""Downloads against a real HTTP server on 127.0.0.1; the internet is never contacted."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import socket
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from melu import download as dl
from melu import movielens
from melu.errors import DataError, MeluError

U_DATA = "1\t1\t5\t874965758\n2\t1\t3\t876893171\n2\t2\t4\t878542960\n"
U_ITEM = "".join(
    f"{i}|Film {i} (199{i})|01-Jan-199{i}||http://example.org/{i}|" + "|".join("0" * 18) + "|1\n"
    for i in (1, 2)
)
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"


class Server:
    """Serves the files of ``root`` and records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(urllib.parse.urlsplit(self.path).path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fetched(self, name: str) -> int:
        return sum(path.endswith("/" + name) for path in self.requests)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any URL outside 127.0.0.1 fails the test instead of reaching the internet."""
    real = urllib.request.urlopen

    def guarded(url: str, *args: Any, **kwargs: Any) -> Any:
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"test tried to reach {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def make_zip(path: Path, files: dict[str, str]) -> str:
    """Write a zip of ``files`` and return its sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/", "")  # the GroupLens zips list their folder too
        for name, text in files.items():
            zf.writestr(name, text)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def ml100k_zip(server: Server, monkeypatch: pytest.MonkeyPatch) -> str:
    digest = make_zip(
        server.root / "ml-100k.zip",
        {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM, "ml-100k/u.user": U_USER,
         "ml-100k/README": "fake\n"},
    )  # fmt: skip
    monkeypatch.setitem(dl.SHA256, "ml-100k.zip", digest)
    return digest


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_download_extracts_and_verifies(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = ml100k_zip(server, monkeypatch)
    data_dir = tmp_path / "data"
    paths = dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
    folder = data_dir / "ml-100k"
    assert sorted(paths) == sorted(folder / n for n in ("u.data", "u.item", "u.user", "README"))
    assert (folder / "u.data").read_text() == U_DATA
    assert dl.sha256_of(data_dir / "ml-100k.zip") == digest
    assert not [p for p in all_files(data_dir) if p.name.endswith(".part")]
    ml = movielens.load("ml-100k", data_dir)
    assert len(ml.ratings) == 3 and len(ml.items) == 2 and len(ml.users) == 2

    # A second run finds the verified zip and the extracted files, and rewrites nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in all_files(data_dir)}
    again = dl.download("ml-100k", data_dir, progress=True, urls={"ml-100k": server.url})
    assert sorted(again) == sorted(paths)
    assert server.fetched("ml-100k.zip") == 1
    assert {p: p.stat().st_mtime_ns for p in all_files(data_dir)} == mtimes

    # An edited extracted file is restored from the zip without a new download.
    (folder / "u.data").write_text("damaged\n")
    dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
    assert (folder / "u.data").read_text() == U_DATA
    assert server.fetched("ml-100k.zip") == 1


def test_checksum_mismatch_leaves_nothing(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = ml100k_zip(server, monkeypatch)
    monkeypatch.setitem(dl.SHA256, "ml-100k.zip", "0" * 64)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
    assert info.value.path == data_dir / "ml-100k.zip"
    assert str(info.value) == (
        f"{data_dir / 'ml-100k.zip'}: sha256 mismatch: expected {'0' * 64}, got {digest}"
    )
    assert all_files(data_dir) == []


def test_stale_file_is_replaced(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ml100k_zip(server, monkeypatch)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "ml-100k.zip").write_bytes(b"half a zip")
    dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
    assert server.fetched("ml-100k.zip") == 1
    assert (data_dir / "ml-100k" / "u.user").read_text() == U_USER


@pytest.mark.parametrize(
    ("dataset", "where"),
    [("ml-100k", ["ml-100k/", "u.data", "u.item", "u.user"]),
     ("ml-1m", ["ml-1m/", "ratings.dat", "users.dat", "movies.dat"]),
     ("melu", ["melu/", "movies_extrainfos.dat", "ml-1m/", "users.dat"])],
)  # fmt: skip
def test_unreachable_server(tmp_path: Path, dataset: str, where: list[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    data_dir = tmp_path / "data"
    with pytest.raises(MeluError) as info:
        dl.download(dataset, data_dir, progress=False, urls={dataset: url})  # type: ignore[arg-type]
    message = str(info.value)
    assert not isinstance(info.value, DataError)
    assert "\n" not in message
    assert "failed" in message and "no network?" in message and url in message
    for part in where:
        assert part in message, part
    assert str(data_dir) in message
    assert all_files(tmp_path) == []
    # No folder either: a mistyped DATA_DIR used to leave an empty data/melu/ behind.
    assert not data_dir.exists()
    data_dir.mkdir()
    with pytest.raises(MeluError):
        dl.download(dataset, data_dir, progress=False, urls={dataset: url})  # type: ignore[arg-type]
    assert list(data_dir.iterdir()) == []


def test_missing_file_on_server(server: Server, tmp_path: Path) -> None:
    with pytest.raises(MeluError, match=r"HTTP 404") as info:
        dl.download("ml-1m", tmp_path / "data", progress=False, urls={"ml-1m": server.url})
    assert "\n" not in str(info.value)
    assert "ratings.dat" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_unsafe_zip_member(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = make_zip(server.root / "ml-100k.zip", {"ml-100k/../../evil": "x"})
    monkeypatch.setitem(dl.SHA256, "ml-100k.zip", digest)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="unsafe member name"):
        dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
    assert [p.name for p in all_files(tmp_path) if p.parent != server.root] == ["ml-100k.zip"]


def test_melu_files_match_pinned_checksums(
    server: Server, tmp_path: Path, shared_data: Path
) -> None:
    """The real MeLU files served locally pass the pinned sha256 table, users.dat included."""
    for name in dl.MELU_FILES:
        (server.root / name).symlink_to(shared_data / "melu" / name)
    (server.root / "users.dat").symlink_to(shared_data / "ml-1m" / "users.dat")
    data_dir = tmp_path / "data"
    paths = dl.download("melu", data_dir, progress=False, urls={"melu": server.url})
    assert paths == [data_dir / "melu" / n for n in dl.MELU_FILES] + [
        data_dir / "ml-1m" / "users.dat"
    ]
    assert set(all_files(data_dir)) == set(paths)
    assert (data_dir / "melu" / "warm_state.json").read_bytes() == (
        shared_data / "melu" / "warm_state.json"
    ).read_bytes()

    # Everything present and verified: nothing is fetched again.
    count = len(server.requests)
    assert dl.download("melu", data_dir, progress=False, urls={"melu": server.url}) == paths
    assert len(server.requests) == count


def test_default_urls_point_at_the_public_sources() -> None:
    assert (
        dl.URLS["ml-1m"] == dl.URLS["ml-100k"] == "https://files.grouplens.org/datasets/movielens"
    )
    assert dl.URLS["melu"].startswith(
        "https://raw.githubusercontent.com/hoyeoplee/MeLU/f70c8ff91471193cd598bc241c6b0f22665f6375/"
    )
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in dl.SHA256.values())
    assert set(dl.MELU_FILES) | {"users.dat", "ml-1m.zip", "ml-100k.zip"} == set(dl.SHA256)
