"""Downloads against a real HTTP server on 127.0.0.1; the internet is never contacted."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import io
import signal
import socket
import subprocess
import sys
import threading
import time
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


def make_zip(path: Path, files: dict[str, str] | dict[str, bytes]) -> str:
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
     ("melu", ["melu/", "movies_extrainfos.dat", "ml-1m/", "users.dat"]),
     ("ml-latest-small", ["ml-latest-small/", "ratings.csv", "movies.csv", "links.csv"])],
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
    grouplens = "https://files.grouplens.org/datasets/movielens"
    for name in ("ml-1m", "ml-100k", "ml-latest-small", "ml-25m", "ml-32m"):
        assert dl.URLS[name] == grouplens
    assert dl.URLS["melu"].startswith(
        "https://raw.githubusercontent.com/hoyeoplee/MeLU/f70c8ff91471193cd598bc241c6b0f22665f6375/"
    )
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in dl.SHA256.values())
    assert set(dl.MELU_FILES) | {
        "users.dat", "ml-1m.zip", "ml-100k.zip", "ml-latest-small.zip", "ml-25m.zip"
    } == set(dl.SHA256)  # fmt: skip
    assert dl.checksum("ml-32m.zip") == ("md5", "d472be332d4daa821edc399621853b57")
    assert dl.checksum("ml-25m.zip")[0] == "sha256"


# --- the CSV releases -----------------------------------------------------------------------------


def small_folder(shared_data: Path, target: Path, newline: bytes | None = None) -> Path:
    """A copy of the real ml-latest-small (LF endings with ``newline=b"\n"``)."""
    target.mkdir(parents=True)
    for name in dl.CSV_FILES:
        data = (shared_data / "ml-latest-small" / name).read_bytes()
        (target / name).write_bytes(data.replace(b"\r\n", newline) if newline else data)
    return target


def test_local_release_needs_no_network(tmp_path: Path, shared_data: Path) -> None:
    """Offline with a local folder: the official files (sha256) or an LF copy (counts)."""
    closed = {"ml-latest-small": f"http://127.0.0.1:{closed_port()}"}
    for name, newline in (("official", None), ("lf", b"\n")):
        data_dir = tmp_path / name
        folder = small_folder(shared_data, data_dir / "ml-latest-small", newline)
        paths = dl.download("ml-latest-small", data_dir, progress=False, urls=closed)
        assert paths == [folder / n for n in dl.CSV_FILES]
        assert not (data_dir / "ml-latest-small.zip").exists()
    for name in ("official", "lf"):
        assert (
            dl.local_release_problem("ml-latest-small", tmp_path / name / "ml-latest-small") is None
        )
    assert "lacks ratings.csv" in str(dl.local_release_problem("ml-25m", tmp_path))


def test_older_local_release_is_named_offline(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "ml-latest-small"
    folder.mkdir(parents=True)
    rows = "".join(f"{1 + i // 1000},{1 + i % 1000},3.5,964982703\n" for i in range(100_004))
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows)
    for name in ("movies.csv", "tags.csv", "links.csv"):
        (folder / name).write_text("header\n")
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(MeluError) as info:
        dl.download("ml-latest-small", tmp_path / "data", progress=False,
                    urls={"ml-latest-small": url})  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and "no network?" in message
    assert "100,004 ratings: this is ml-latest-small released 2016-10-17" in message
    assert "ratings.csv, movies.csv, tags.csv, links.csv into" in message


def ml100k_folder(folder: Path, ratings: int = 100_000) -> Path:
    """An ML-100K folder with the release's rows (synthetic rows, real formats)."""
    folder.mkdir(parents=True)
    rows = "".join(f"{1 + i % 943}\t{1 + i % 1682}\t{1 + i % 5}\t874965758\n"
                   for i in range(ratings))  # fmt: skip
    (folder / "u.data").write_text(rows)
    item = U_ITEM.splitlines()[0].split("|", 1)[1]
    (folder / "u.item").write_text("".join(f"{i}|{item}\n" for i in range(1, 1683)))
    (folder / "u.user").write_text("".join(f"{i}|24|M|technician|85711\n" for i in range(1, 944)))
    return folder


def test_local_ml100k_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with ML-100K's files in place: its rows (or the official sha256) prove it,
    and nothing is fetched; a copy with other rows (a course's added user) is refused in one
    line that names the file, before the download that then fails."""
    closed = {"ml-100k": f"http://127.0.0.1:{closed_port()}"}
    folder = ml100k_folder(tmp_path / "data" / "ml-100k")
    paths = dl.download("ml-100k", tmp_path / "data", progress=False, urls=closed)
    assert paths == [folder / n for n in ("u.data", "u.item", "u.user")]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-100k"]
    ml = movielens.load("ml-100k", tmp_path / "data")
    assert (len(ml.ratings), len(ml.items), len(ml.users)) == (100_000, 1_682, 943)

    other = ml100k_folder(tmp_path / "other" / "ml-100k", ratings=100_003)
    with pytest.raises(MeluError) as info:
        dl.download("ml-100k", tmp_path / "other", progress=False, urls=closed)
    message = str(info.value)
    assert "\n" not in message and "no network?" in message
    assert f"{other / 'u.data'}: 100,003 rows, but ml-100k's has 100,000" in message
    assert (other / "u.data").stat().st_size > 0  # the folder is left as it was

    # The official files pass by their sha256 whatever their rows (here: pinned to these).
    pins = {n: dl.sha256_of(other / n) for n in ("u.data", "u.item", "u.user")}
    monkeypatch.setitem(dl.DAT_RELEASES, "ml-100k", dl.DatRelease(
        rows=dl.DAT_RELEASES["ml-100k"].rows, sha256=pins))  # fmt: skip
    assert dl.local_release_problem("ml-100k", other) is None
    assert "lacks ratings.dat, users.dat, movies.dat" in str(
        dl.local_release_problem("ml-1m", tmp_path)
    )


def test_csv_release_download(
    server: Server, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {
        f"ml-latest-small/{n}": (shared_data / "ml-latest-small" / n).read_bytes()
        for n in dl.CSV_FILES
    }
    files["ml-latest-small/README.txt"] = "the release's README\n"
    digest = make_zip(server.root / "ml-latest-small.zip", files)
    monkeypatch.setitem(dl.SHA256, "ml-latest-small.zip", digest)
    data_dir = tmp_path / "data"
    urls = {"ml-latest-small": server.url}
    paths = dl.download("ml-latest-small", data_dir, progress=False, urls=urls)
    folder = data_dir / "ml-latest-small"
    assert sorted(paths) == sorted([folder / n for n in dl.CSV_FILES] + [folder / "README.txt"])
    for name in dl.CSV_FILES:  # byte for byte, CRLF included
        assert dl.sha256_of(folder / name) == dl.CSV_SHA256["ml-latest-small"][name]
    assert not [p for p in all_files(data_dir) if p.name.endswith(".part")]
    # Present and verified now: a second run fetches nothing.
    assert dl.download("ml-latest-small", data_dir, progress=False, urls=urls)
    assert server.fetched("ml-latest-small.zip") == 1


def test_verified_zip_of_another_release(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ratings = "userId,movieId,rating,timestamp\n1,1,4,0\n"
    digest = make_zip(server.root / "ml-latest-small.zip", {"ml-latest-small/ratings.csv": ratings})
    monkeypatch.setitem(dl.SHA256, "ml-latest-small.zip", digest)
    with pytest.raises(DataError, match=r"does not hold the release: .* lacks movies\.csv"):
        dl.download("ml-latest-small", tmp_path, progress=False,
                    urls={"ml-latest-small": server.url})  # fmt: skip


def test_md5_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    """ml-32m.zip is checked by md5, the checksum GroupLens publishes for it."""
    make_zip(server.root / "ml-32m.zip", {"ml-32m/ratings.csv": "x\n"})
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"ml-32m\.zip: md5 mismatch: expected d472be33"):
        dl.download("ml-32m", data_dir, progress=False, urls={"ml-32m": server.url})
    assert all_files(data_dir) == []
    assert not data_dir.exists()  # created only when a verified file is moved in


def test_a_killed_download_leaves_its_partial_file_only_until_the_next(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download killed outright (SIGKILL: no ``finally`` runs) leaves its ``.part`` file; the
    next download of that file removes it, and keeps one that a running download holds."""
    stop = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(4 * dl._CHUNK))
            self.end_headers()
            self.wfile.write(b"x" * 2 * dl._CHUNK)
            self.wfile.flush()
            stop.wait(30)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    stall = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    stall.daemon_threads = True
    threading.Thread(target=stall.serve_forever, args=(0.05,), daemon=True).start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = f"http://127.0.0.1:{stall.server_address[1]}"
    code = (
        "from pathlib import Path; from melu import download as dl; "
        f"dl.download('ml-100k', Path({str(data_dir)!r}), progress=False, "
        f"urls={{'ml-100k': {url!r}}})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        while not [p for p in data_dir.iterdir() if p.stat().st_size > 0]:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        stop.set()
        stall.shutdown()
        stall.server_close()
    (left,) = list(data_dir.iterdir())
    assert left.name.startswith(".ml-100k.zip.") and left.suffix == ".part"
    assert left.stat().st_size > 0
    # A download running beside this one (here: this process) holds its file locked.
    running = data_dir / ".ml-100k.zip.beside.part"
    running.write_bytes(b"a download running beside this one")
    with running.open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        ml100k_zip(server, monkeypatch)
        dl.download("ml-100k", data_dir, progress=False, urls={"ml-100k": server.url})
        assert not left.exists() and running.exists()
    assert (data_dir / "ml-100k" / "u.user").read_text() == U_USER
