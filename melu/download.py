"""Fetch MovieLens files from their public sources, verified by checksum.

MovieLens' licence forbids redistribution, so the project ships no data: each user downloads it.
Every file is checked against a pinned sha256 (md5 for ml-32m.zip, the only checksum GroupLens
publishes for it) before it is moved into place, so a truncated transfer or a changed upstream
file never reaches the readers in :mod:`melu.movielens`.

Layout under ``data_dir`` (the same as ``shared/data/movielens``)::

    ml-1m.zip, ml-1m/{ratings,users,movies}.dat, ...   # dataset "ml-1m"
    ml-100k.zip, ml-100k/u.{data,item,user}, ...        # dataset "ml-100k"
    melu/*.json, melu/movies_extrainfos.dat, melu/m_*.txt, ml-1m/users.dat   # dataset "melu"
    ml-latest-small.zip, ml-latest-small/{ratings,movies,tags,links}.csv      # and ml-25m, ml-32m

The zips are kept next to their folders so that a second run finds them verified and skips the
download. A release already in its folder (copied by hand, offline) is used as it is once it
proves to be the release: the official files' sha256 where known, else its counts (for the CSV
releases :func:`melu.movielens_csv.identify`, which names an older or another release as such;
for ML-100K and ML-1M the rows of each file, :data:`DAT_RELEASES`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

from tqdm import tqdm

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - no flock on Windows
    fcntl = None

from melu.config import CSV_DATASETS, Dataset
from melu.errors import DataError, MeluError
from melu.movielens_csv import count_rows, identify

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0

# Base URLs, one per dataset; a file's URL is ``<base>/<name>``. Tests point them at a local
# server through ``download(..., urls=...)``.
URLS: dict[str, str] = {
    "ml-1m": "https://files.grouplens.org/datasets/movielens",
    "ml-100k": "https://files.grouplens.org/datasets/movielens",
    "ml-latest-small": "https://files.grouplens.org/datasets/movielens",
    "ml-25m": "https://files.grouplens.org/datasets/movielens",
    "ml-32m": "https://files.grouplens.org/datasets/movielens",
    # Pinned to a commit so that the checksums below cannot drift with the repository.
    "melu": (
        "https://raw.githubusercontent.com/hoyeoplee/MeLU/"
        "f70c8ff91471193cd598bc241c6b0f22665f6375/movielens/ml-1m"
    ),
}

# The GroupLens zips: sha256 from TensorFlow Datasets' pinned checksums
# (tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt: ml-1m.zip 5,917,549
# bytes, ml-100k.zip 4,924,029 bytes); several unrelated projects pin the same values (e.g.
# TensorFlow's MovieLens examples and SecretFlow for ml-1m). The MeLU files: sha256 from
# shared/data/movielens/SOURCES.md, checked there against the files' git blob ids.
#
# The CSV releases (shared/data/movielens/SOURCES.md): ml-latest-small.zip (978,202 bytes) and
# ml-25m.zip (261,978,986 bytes) by TensorFlow Datasets' sha256, the first also found
# byte-exact in a public repository; ml-32m.zip by the md5 of GroupLens' .md5 file.
SHA256: dict[str, str] = {
    "ml-1m.zip": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-100k.zip": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-latest-small.zip": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-25m.zip": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
    "movies_extrainfos.dat": "18432b1713b66a5262c11f6d929801a6e6f414d861cd2adf191dfba61e45c74d",
    "m_rate.txt": "849e3d478b5e698fbafcbb38f6a0a0b7dbb6638e7173d5e5a6dee113d799c88e",
    "m_genre.txt": "588546914e1ed5b60cd0a7dcda9286c38d5efdc7f7d58a08e331de47722224e8",
    "m_director.txt": "eb7f008b18607bd6539d2459bf47812020cf5c3a64c49e6431e7f6f541c4930f",
    "m_actor.txt": "7f765f394048db436f3b006eaf6154f46abc2a0af17068d9622e40ab36bb15e4",
    "m_gender.txt": "bccd3340ac337dc846f06295a9c94a8d7dc622a44902e9ee53b8790a8978ef66",
    "m_age.txt": "74f10158e752a773c0317b8bdc4bd0c89dd5c07b79c7a43fdb2577f094dedf46",
    "m_occupation.txt": "258dc75e14c2f2f80e45a9bd489b37a8a5d46056fc1a3536fce3fb9d97d6e2ca",
    "m_zipcode.txt": "12b2966bc29bfc0736aae58bdf9a1c793114764ae8f3b295577a8fd56e0ea199",
    "warm_state.json": "036be249428c8fe9e212def927eb3ad60de8ddd054989e75f54e7ab2291da525",
    "warm_state_y.json": "4ad7829ea3d8a4d58ca8c96a4f368c5c7eab6b8ed85430f2516ab3cd79b5dff2",
    "user_cold_state.json": "ec7414e1da3b1636d34f0f3a5615e2a07bea9b82156123768049cc166ed20df1",
    "user_cold_state_y.json": "62b84d073377c183cabfa0b78cb4e745f763b0713920033edf0bbbc43e1dca11",
    "item_cold_state.json": "1cb691e39e9f64a12922f1c8da2bf8b9c07f885decc4dd4ee5aea0e5bbcc46a1",
    "item_cold_state_y.json": "b9325e4b056cda7d2834f17c33c4ec34ee6516142c8b51e50103f80d2b0793bf",
    "user_and_item_cold_state.json": (
        "9045ceae16fbc0ca0a160b3ce96bedf97d304d04328755c9fadc9a4ba55450f0"
    ),
    "user_and_item_cold_state_y.json": (
        "5bc5057b32224d91fa1f8161f242db72b186afc1c51b571f5aab3c3e93cf0e90"
    ),
}

MD5: dict[str, str] = {"ml-32m.zip": "d472be332d4daa821edc399621853b57"}

# The files of each CSV release that melu reads (the genome is read where present), and the
# sha256 of ml-latest-small's, extracted unchanged from the official zip (SOURCES.md).
CSV_FILES: tuple[str, ...] = ("ratings.csv", "movies.csv", "tags.csv", "links.csv")
CSV_SHA256: dict[str, dict[str, str]] = {
    "ml-latest-small": {
        "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
        "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    },
}


class DatRelease(NamedTuple):
    """What ML-100K's or ML-1M's files are: each file's rows (lines), and the sha256 of the
    official files where known."""

    rows: dict[str, int]
    sha256: dict[str, str]


# The rows are GroupLens' READMEs' counts (ratings, movies, users). ML-100K's sha256: the files
# as extracted from ml-100k.zip, byte-identical in independent public copies (u.data in
# RecBole's wheel and two GitHub repositories once their added header lines are dropped;
# u.item and u.user the same git blobs in six repositories; docs/results_ml-100k.md). ML-1M's
# users.dat and movies.dat: shared/data/movielens/SOURCES.md; its ratings.dat by its rows.
DAT_RELEASES: dict[str, DatRelease] = {
    "ml-100k": DatRelease(
        rows={"u.data": 100_000, "u.item": 1_682, "u.user": 943},
        sha256={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        },
    ),
    "ml-1m": DatRelease(
        rows={"ratings.dat": 1_000_209, "users.dat": 6_040, "movies.dat": 3_883},
        sha256={
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
        },
    ),
}

MELU_FILES: tuple[str, ...] = (
    "warm_state.json",
    "warm_state_y.json",
    "user_cold_state.json",
    "user_cold_state_y.json",
    "item_cold_state.json",
    "item_cold_state_y.json",
    "user_and_item_cold_state.json",
    "user_and_item_cold_state_y.json",
    "movies_extrainfos.dat",
    "m_rate.txt",
    "m_genre.txt",
    "m_director.txt",
    "m_actor.txt",
    "m_gender.txt",
    "m_age.txt",
    "m_occupation.txt",
    "m_zipcode.txt",
)


def _manual_hint(dataset: Dataset, data_dir: Path) -> str:
    """Where to put the files by hand when the download cannot run."""
    if dataset == "ml-1m":
        return f"put ml-1m.zip's ratings.dat, users.dat, movies.dat into {data_dir / 'ml-1m'}/"
    if dataset == "ml-100k":
        return f"put ml-100k.zip's u.data, u.item, u.user into {data_dir / 'ml-100k'}/"
    if dataset in CSV_DATASETS:
        return f"put {dataset}.zip's {', '.join(CSV_FILES)} into {data_dir / dataset}/"
    return (
        f"put MeLU's movielens/ml-1m/ files (the 8 *_state*.json, movies_extrainfos.dat, m_*.txt;"
        f" github.com/hoyeoplee/MeLU) into {data_dir / 'melu'}/ and ML-1M's users.dat into"
        f" {data_dir / 'ml-1m'}/"
    )


def _one_line(text: object) -> str:
    # Exception texts from sockets and servers may hold newlines; the CLI prints one line.
    return " ".join(str(text).split())


def digest_of(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return digest_of(path, "sha256")


def checksum(name: str) -> tuple[str, str]:
    """The pinned ``(algorithm, hex digest)`` of a downloadable file: sha256 where known."""
    if name in SHA256:
        return "sha256", SHA256[name]
    return "md5", MD5[name]


def _existing_ancestor(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return Path.cwd()  # a relative path whose every part is missing


@contextlib.contextmanager
def _temporary(folder: Path, name: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file for a target in ``folder``, on the same filesystem (the rename is
    atomic): in ``folder`` if it exists, else in its nearest existing ancestor, so that a
    failed download (no network, a mistyped ``DATA_DIR``) leaves no empty ``melu/`` behind.
    A folder that does not exist yet cannot be a mount point, so it is on its ancestor's
    filesystem. :func:`_move_into_place` creates the folder once the file is complete.

    The file is removed unless the caller has moved it into place, so a failure leaves nothing
    behind. A process killed outright (SIGKILL, a power cut) cannot remove it, so the file is
    held under an exclusive ``flock`` while it is written (the kernel drops the lock with the
    process) and the next download of ``name`` removes the ones nobody holds
    (:func:`_remove_abandoned`). A lock, unlike a process id, also holds across the containers
    that share a data volume (docker-compose's trainer and trainer-gpu), each with its own
    process ids.
    """
    where = _existing_ancestor(folder)
    _remove_abandoned(where, name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=where)
    tmp = Path(tmp_name)
    try:
        _lock(fd, wait=True)
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
    finally:
        tmp.unlink(missing_ok=True)


def _lock(fd: int, wait: bool) -> bool:
    """An exclusive lock on ``fd``, held until it is closed or its process ends; without
    ``wait``, False where another process holds it. Without ``flock`` (Windows) nothing is
    locked and nothing counts as abandoned."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# A new temporary file is empty and unlocked for an instant between its creation and its lock:
# an empty one this young is not taken for abandoned.
_ABANDONED_EMPTY_S = 60.0


def _remove_abandoned(where: Path, name: str) -> None:
    """Remove the temporary files of ``name`` in ``where`` that a killed download left: those
    no process holds locked (:func:`_temporary`). A download running beside this one holds
    its file and keeps it."""
    for path in where.glob(f".{glob.escape(name)}.*.part"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            stat = os.fstat(fd)
            young = time.time() - stat.st_mtime < _ABANDONED_EMPTY_S
            if (stat.st_size == 0 and young) or not _lock(fd, wait=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("removed %s, left by a download that was killed", path)
        finally:
            os.close(fd)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename a complete temporary file onto ``target``, creating its folder only now."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _network_error(url: str, exc: BaseException, hint: str) -> MeluError:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        # The server answered, so the network works: the file or an overridden URL is wrong.
        return MeluError(
            f"download of {url} failed: HTTP {exc.code} {_one_line(exc.reason)}; {hint}"
        )
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return MeluError(f"download of {url} failed ({_one_line(reason)}; no network?): {hint}")


# Everything a socket or an HTTP exchange can raise; URLError and TimeoutError are OSErrors.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def _fetch(url: str, target: Path, expected: tuple[str, str], progress: bool, hint: str) -> None:
    """Stream ``url`` into ``target``, moved into place only once its checksum is ``expected``
    (``(algorithm, hex digest)``)."""
    algorithm, want = expected
    digest = hashlib.new(algorithm)
    log.info("downloading %s", url)
    with _temporary(target.parent, target.name) as (out, tmp):
        # Only the network calls sit inside the try, so a full local disk is not reported
        # as "no network".
        try:
            response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except _NETWORK_ERRORS as exc:
            raise _network_error(url, exc, hint) from None
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with (
            response,
            tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _NETWORK_ERRORS as exc:
                    raise _network_error(url, exc, hint) from None
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
        out.close()
        got = digest.hexdigest()
        if got != want:
            raise DataError(target, f"{algorithm} mismatch: expected {want}, got {got}")
        _move_into_place(tmp, target)
    log.info("saved %s (%s ok)", target, algorithm)


def _ensure(
    url: str, target: Path, expected: str | tuple[str, str], progress: bool, hint: str
) -> Path:
    algorithm, want = ("sha256", expected) if isinstance(expected, str) else expected
    if target.is_file():
        if digest_of(target, algorithm) == want:
            log.info("%s already present (%s ok), skipped", target, algorithm)
            return target
        log.warning("%s has an unexpected %s: downloading it again", target, algorithm)
    _fetch(url, target, (algorithm, want), progress, hint)
    return target


def _crc32_of(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _extract(archive: Path, top: str, data_dir: Path) -> list[Path]:
    """Extract the members under ``top/`` into ``data_dir``, each by an atomic rename.

    A member already on disk with the size and CRC the zip records is left alone, so a rerun
    does not rewrite hundreds of megabytes or touch files another process is reading.
    """
    extracted: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir():
                    continue
                # A crafted name could write outside data_dir ("zip slip").
                if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
                    raise DataError(archive, f"unsafe member name {info.filename!r}")
                if not name.parts or name.parts[0] != top:
                    log.debug("skipping %s: outside %s/", info.filename, top)
                    continue
                target = data_dir.joinpath(*name.parts)
                extracted.append(target)
                if (
                    target.is_file()
                    and target.stat().st_size == info.file_size
                    and _crc32_of(target) == info.CRC
                ):
                    continue
                with _temporary(target.parent, target.name) as (out, tmp):
                    with zf.open(info) as src:
                        shutil.copyfileobj(src, out, _CHUNK)
                    out.close()
                    _move_into_place(tmp, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(archive, f"cannot extract: {_one_line(exc)}") from None
    if not extracted:
        raise DataError(archive, f"no files under {top}/")
    log.info("extracted %d files into %s", len(extracted), data_dir / top)
    return extracted


def download(
    dataset: Dataset,
    data_dir: Path,
    *,
    progress: bool = True,
    urls: dict[str, str] | None = None,
) -> list[Path]:
    """Download ``dataset`` into ``data_dir`` and return the data files it provides.

    ``urls`` overrides entries of :data:`URLS` (base URL per dataset). Files already present
    with the pinned sha256 are not downloaded again.

    Raises :class:`~melu.errors.DataError` on a checksum mismatch (nothing is left behind) and
    :class:`~melu.errors.MeluError` with a one-line hint when the download itself fails.
    """
    data_dir = Path(data_dir)
    bases = {**URLS, **(urls or {})}
    if dataset not in bases:
        raise ValueError(f"unknown dataset {dataset!r}")
    base = bases[dataset].rstrip("/")
    hint = _manual_hint(dataset, data_dir)

    if dataset in DAT_RELEASES:
        folder = data_dir / dataset
        zip_hint = _unless_in_place(dataset, folder, hint)
        if zip_hint is None:
            return [folder / n for n in DAT_RELEASES[dataset].rows]
        hint = zip_hint
        name = f"{dataset}.zip"
        archive = _ensure(f"{base}/{name}", data_dir / name, SHA256[name], progress, hint)
        return _extract(archive, dataset, data_dir)
    if dataset in CSV_DATASETS:
        return _csv_release(dataset, data_dir, base, progress, hint)

    paths = [
        _ensure(f"{base}/{name}", data_dir / "melu" / name, SHA256[name], progress, hint)
        for name in MELU_FILES
    ]
    # MeLU's split needs the ML-1M user table, which the authors' repository also holds.
    users = data_dir / "ml-1m" / "users.dat"
    paths.append(_ensure(f"{base}/users.dat", users, SHA256["users.dat"], progress, hint))
    return paths


def local_release_problem(dataset: Dataset, folder: Path) -> str | None:
    """None when ``folder`` holds the release melu reads as ``dataset``, else what is wrong,
    in a phrase. Byte-identical official files prove it by sha256; other copies (LF endings,
    re-zipped) by their counts of ratings and movies (ML-100K and ML-1M: every file's rows)."""
    if dataset in DAT_RELEASES:
        return _dat_release_problem(dataset, folder, DAT_RELEASES[dataset])
    lacking = _lacking(folder, CSV_FILES)
    if lacking is not None:
        return lacking
    if _official(dataset, folder, CSV_FILES, CSV_SHA256.get(dataset, {})):
        return None
    try:
        release = identify(dataset, folder / "ratings.csv", count_rows(folder / "ratings.csv"))
        movies = count_rows(folder / "movies.csv")
    except DataError as exc:
        return str(exc)
    if release.movies is not None and movies != release.movies:
        return (
            f"{folder / 'movies.csv'}: {movies:,} movies, but {release.label()} has "
            f"{release.movies:,}"
        )
    log.info("%s: %s by its counts of ratings and movies", folder, release.label())
    return None


def _lacking(folder: Path, names: Iterable[str]) -> str | None:
    """What ``folder`` lacks of the files ``names``, in a phrase; None if it has them all."""
    missing = [name for name in names if not (folder / name).is_file()]
    return f"{folder} lacks {', '.join(missing)}" if missing else None


def _official(dataset: Dataset, folder: Path, names: Iterable[str], pins: dict[str, str]) -> bool:
    """Whether every file ``names`` in ``folder`` has its pinned sha256 (``pins`` must pin
    them all)."""
    names = list(names)
    if not all(n in pins for n in names):
        return False
    if all(sha256_of(folder / n) == pins[n] for n in names):
        log.info("%s: the official %s files (sha256 ok)", folder, dataset)
        return True
    return False


def _unless_in_place(dataset: Dataset, folder: Path, hint: str) -> str | None:
    """None when ``folder`` holds the release (used as it is, offline); else the manual
    ``hint`` for the zip's download, led by what is wrong with the files there, if any."""
    problem = local_release_problem(dataset, folder)
    if problem is None:
        return None
    if folder.is_dir() and any(folder.iterdir()):
        log.warning("%s; using %s.zip", problem, dataset)
        return f"{problem}; {hint}"
    return hint


def _dat_release_problem(dataset: Dataset, folder: Path, release: DatRelease) -> str | None:
    lacking = _lacking(folder, release.rows)
    if lacking is not None:
        return lacking
    if _official(dataset, folder, release.rows, release.sha256):
        return None
    for name, rows in release.rows.items():
        # Lines, not CSV rows: these files have no header (count_rows takes one away).
        found = count_rows(folder / name) + 1
        if found != rows:
            return f"{folder / name}: {found:,} rows, but {dataset}'s has {rows:,}"
    log.info("%s: %s by the rows of its files", folder, dataset)
    return None


def _csv_release(
    dataset: Dataset, data_dir: Path, base: str, progress: bool, hint: str
) -> list[Path]:
    """A GroupLens CSV release: the folder as it is when it holds the release (offline), else
    the zip, verified, then extracted and checked again."""
    folder = data_dir / dataset
    zip_hint = _unless_in_place(dataset, folder, hint)
    if zip_hint is None:
        return [folder / n for n in CSV_FILES]
    name = f"{dataset}.zip"
    archive = _ensure(f"{base}/{name}", data_dir / name, checksum(name), progress, zip_hint)
    paths = _extract(archive, dataset, data_dir)
    problem = local_release_problem(dataset, folder)
    if problem is not None:
        raise DataError(archive, f"the verified zip does not hold the release: {problem}")
    return paths
