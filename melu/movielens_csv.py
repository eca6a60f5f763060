"""Read GroupLens' CSV releases (ml-latest-small, ml-25m, ml-32m) into the frames of
:mod:`melu.movielens`, and tell which release a folder really holds.

The files are parsed by pandas' C reader with explicit dtypes (ids int32, ratings float32), so
25 million ratings take about 0.5 GB and seconds, never Python objects per rating. What a naive
reader trips on is handled here: quoted titles with commas and doubled quotes, CRLF or LF line
endings, a byte-order mark, titles without a year or with a range ("(2006–2007)"), trailing
spaces, ``(no genres listed)`` (no genre), zero-padded imdbIds (kept as strings), movies without
a tmdbId.

When the fast reader fails, the file is read again with Python's ``csv`` module to find the
first bad line, so that the :class:`~melu.errors.DataError` names the file, the line and what is
wrong there. Folder names are never trusted: the number of ratings identifies the release, and
an older or another release is named as such (:func:`identify`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from melu.config import CSV_DATASETS, Dataset, RatingScale
from melu.errors import DataError
from melu.movielens import Genome, MovieLens

log = logging.getLogger(__name__)

# GroupLens' README of every CSV release: "5-star scale, with half-star increments (0.5 stars -
# 5.0 stars)". A value off it is a damaged file; prepare() reads the scale the data use.
RELEASE_SCALE = RatingScale(0.5, 5.0, 0.5)
NO_GENRES = "(no genres listed)"

Kind = Literal["int32", "int64", "float32", "str"]
# Each file's header, as its columns and their kinds; ``links.csv``'s ids stay strings (imdbId
# is zero-padded, tmdbId is missing for some movies).
FILES: dict[str, dict[str, Kind]] = {
    "ratings.csv": {"userId": "int32", "movieId": "int32", "rating": "float32",
                    "timestamp": "int64"},
    "movies.csv": {"movieId": "int32", "title": "str", "genres": "str"},
    "tags.csv": {"userId": "int32", "movieId": "int32", "tag": "str", "timestamp": "int64"},
    "links.csv": {"movieId": "int32", "imdbId": "str", "tmdbId": "str"},
    "genome-tags.csv": {"tagId": "int32", "tag": "str"},
    "genome-scores.csv": {"movieId": "int32", "tagId": "int32", "relevance": "float32"},
}  # fmt: skip
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Release:
    """One published release, identified by its number of ratings."""

    name: str
    generated: str | None  # the date its README gives, where known
    ratings: int
    users: int | None = None
    movies: int | None = None

    def label(self) -> str:
        when = f" released {self.generated}" if self.generated else ""
        return f"{self.name}{when}"


# Counts from shared/data/movielens/SOURCES.md (GroupLens' READMEs). ml-latest-small's name
# also covers an older release that still circulates, so the counts, not the name, decide.
RELEASES: tuple[Release, ...] = (
    Release("ml-latest-small", "2018-09-26", 100_836, 610, 9_742),
    Release("ml-latest-small", "2016-10-17", 100_004, 671, 9_125),
    Release("ml-25m", "2019-11-21", 25_000_095, 162_541, 62_423),
    Release("ml-32m", "2023-10-13", 32_000_204, 200_948, 87_585),
    Release("ml-20m", None, 20_000_263),
)
# The release melu reads for each dataset name.
CURRENT: dict[str, Release] = {r.name: r for r in reversed(RELEASES) if r.name in CSV_DATASETS}


# --- parsing ------------------------------------------------------------------------------------


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            path, "file not found (see `melu data download --help` for where to get it)"
        )
    return path


def _check_header(path: Path, columns: list[str]) -> None:
    with _require(path).open("rb") as fh:
        first = fh.readline()
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid utf-8: {exc.reason}", 1) from None
    header = text.lstrip("\ufeff").rstrip("\r\n")
    if not header:
        raise DataError(path, "empty file, expected the header " + ",".join(columns), 1)
    if header.split(",") != columns:
        raise DataError(path, f"header is {header!r}, expected {','.join(columns)!r}", 1)


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text; a decoding error names its line."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, f"not valid utf-8: {exc.reason}", number) from None
            yield text.lstrip("\ufeff") if number == 1 else text


def _field_problem(value: str, kind: Kind) -> str | None:
    """What is wrong with ``value`` as a ``kind``, or None."""
    if kind == "str":
        return None
    if kind == "float32":
        try:
            number = float(value)
        except ValueError:
            return f"is not a number: {value!r}"
        return None if np.isfinite(number) else f"is not a finite number: {value!r}"
    try:
        integer = int(value)
    except ValueError:
        return f"is not an integer: {value!r}"
    low, high = _INT_RANGE[kind]
    return None if low <= integer <= high else f"is out of range: {value!r}"


def _locate(path: Path, columns: dict[str, Kind]) -> DataError | None:
    """The first bad line of ``path`` as a DataError, found with Python's csv module."""
    names = list(columns)
    reader = csv.reader(_decoded_lines(path), strict=True)
    try:
        next(reader)  # the header, already checked
        for row in reader:
            if not row:
                return DataError(path, "empty line", reader.line_num)
            if len(row) != len(names):
                what = "truncated row" if len(row) < len(names) else "extra fields"
                return DataError(
                    path,
                    f"{what}: expected {len(names)} fields ({','.join(names)}), found {len(row)}",
                    reader.line_num,
                )
            for name, value in zip(names, row, strict=True):
                problem = _field_problem(value, columns[name])
                if problem:
                    return DataError(path, f"{name} {problem}", reader.line_num)
    except csv.Error as exc:
        return DataError(path, f"malformed CSV: {exc}", reader.line_num)
    return None


# Rows per chunk when a large all-numeric file (ratings.csv, genome-scores.csv) is read into
# arrays allocated once: pandas' own reader would hold every chunk and their concatenation
# at the same time, twice the final size at the peak.
_CHUNK_ROWS = 2_000_000


def _read_csv(path: Path, names: list[str], dtypes: dict[str, Any], **kwargs: Any) -> Any:
    return pd.read_csv(
        path,
        header=0,
        names=names,
        dtype=dtypes,
        encoding="utf-8",
        # No value is "missing" in these files except an empty tmdbId or tag: "" stays "", and
        # an empty number fails the dtype instead of becoming NaN.
        na_filter=False,
        engine="c",
        **kwargs,
    )


def _read_numeric(path: Path, columns: dict[str, Kind]) -> pd.DataFrame:
    """An all-numeric file in chunks, into arrays sized by its line count."""
    names = list(columns)
    size = count_rows(path)
    arrays = {n: np.empty(size, dtype=k) for n, k in columns.items()}
    filled = 0
    with _read_csv(path, names, dict(columns), chunksize=_CHUNK_ROWS) as reader:
        for chunk in reader:
            end = filled + len(chunk)
            if end > size:  # lines that count_rows missed (CR-only endings): grow
                size = max(end, 2 * size)
                arrays = {n: np.resize(a, size) for n, a in arrays.items()}
            for n in names:
                arrays[n][filled:end] = chunk[n].to_numpy()
            filled = end
    return pd.DataFrame({n: a[:filled] for n, a in arrays.items()}, copy=False)


def read_table(path: Path, columns: dict[str, Kind] | None = None) -> pd.DataFrame:
    """One CSV file of a release as a frame with the dtypes of :data:`FILES` (strings as str,
    "" where empty); columns keep the file's names. A malformed file raises a DataError naming
    its first bad line."""
    columns = columns or FILES[path.name]
    names = list(columns)
    _check_header(path, names)
    if columns[names[-1]] == "str":
        # pandas pads a short row with "" when its missing fields are strings, so a truncated
        # row of movies.csv or links.csv would pass unseen. These files are small (87,585 rows
        # at most): the csv module checks every row, in a fraction of a second.
        located = _locate(path, columns)
        if located is not None:
            raise located
    try:
        if "str" in columns.values():
            frame = _read_csv(
                path, names, {n: (str if k == "str" else k) for n, k in columns.items()}
            )
        else:
            frame = _read_numeric(path, columns)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OverflowError) as exc:
        located = _locate(path, columns)
        if located is not None:
            raise located from None
        raise DataError(path, f"cannot parse: {' '.join(str(exc).split())}") from None
    if frame.empty:
        raise DataError(path, "no rows after the header")
    return frame


def _bad_line(path: Path, mask: np.ndarray, reason: str) -> DataError:
    """A DataError at the first True of ``mask`` (row i is line i + 2: after the header; used
    for files whose fields never hold line breaks)."""
    return DataError(path, reason, int(np.flatnonzero(mask)[0]) + 2)


def read_ratings(path: Path) -> pd.DataFrame:
    """``ratings.csv``: ``user_id``, ``item_id`` (int32), ``rating`` (float32, on the
    release's half-star scale), ``timestamp`` (int64 Unix seconds), in file order."""
    frame = read_table(path).rename(
        columns={"userId": "user_id", "movieId": "item_id"}
    )  # columns renamed, not copied
    ratings = frame["rating"].to_numpy()
    # The checks look at the few distinct values first; a whole-column mask only on failure.
    off = [v for v in pd.unique(ratings) if not RELEASE_SCALE.contains(float(v))]
    if off:
        bad = np.isin(ratings, off)
        value = float(ratings[np.flatnonzero(bad)[0]])
        raise _bad_line(path, bad, f"rating {value:g} is off the scale {RELEASE_SCALE.describe()}")
    for name, column in (("userId", "user_id"), ("movieId", "item_id")):
        ids = frame[column].to_numpy()
        if ids.min() < 1:
            raise _bad_line(path, ids < 1, f"{name} must be at least 1")
    _check_unique_pairs(path, frame)
    return frame


def _check_unique_pairs(path: Path, frame: pd.DataFrame) -> None:
    """No user rates a movie twice. GroupLens' files are sorted by (user, movie), so rows in
    strictly increasing (user, movie) order prove it in one pass of byte masks; other orders
    pay for a sort."""
    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    later_user = users[1:] > users[:-1]
    if bool((later_user | ((users[1:] == users[:-1]) & (items[1:] > items[:-1]))).all()):
        return
    del later_user
    key = (users.astype(np.int64) << 32) | items.astype(np.int64)
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    if same.any():
        row = int(order[1:][same].min())
        raise DataError(path, f"user {users[row]} rates movie {items[row]} twice", row + 2)


# A year at the end of a title, alone or as a range ("(2006–2007)", "(2007-)"): the first
# year is the release year. A trailing space after it is common.
_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$"


def split_titles(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Titles without their year, and the years ("" where a title has none)."""
    parts = titles.str.extract(_YEAR)
    has_year = parts["year"].notna()
    title = parts["title"].where(has_year, titles.str.strip()).astype(str)
    year = parts["year"].where(has_year, "").astype(str)
    return title, year


def read_movies(path: Path) -> pd.DataFrame:
    """``movies.csv`` as the items frame of :mod:`melu.movielens`: ``title`` without its year,
    ``year`` ("" where unknown), ``genre`` as a list (``(no genres listed)`` is no genre),
    ``rate``, ``director``, ``actor`` empty (these releases have none)."""
    raw = read_table(path)
    dupes = raw["movieId"].duplicated()
    if dupes.any():
        raise DataError(path, f"movie {int(raw['movieId'][dupes].iloc[0])} listed twice")
    title, year = split_titles(raw["title"])
    genres = [
        [g for g in text.split("|") if g and g != NO_GENRES] for text in raw["genres"].tolist()
    ]
    empty: list[list[str]] = [[] for _ in range(len(raw))]
    return pd.DataFrame(
        {
            "item_id": raw["movieId"].to_numpy(dtype=np.int64),
            "title": title.to_numpy(),
            "year": year.to_numpy(),
            "rate": "",
            "genre": genres,
            "director": empty,
            "actor": [[] for _ in range(len(raw))],
        }
    )


def read_links(path: Path) -> pd.DataFrame:
    """``links.csv``: ``item_id``, ``imdb_id`` (zero-padded, as a string), ``tmdb_id`` (string,
    "" where the release has none)."""
    raw = read_table(path)
    return pd.DataFrame(
        {
            "item_id": raw["movieId"].to_numpy(dtype=np.int64),
            "imdb_id": raw["imdbId"].str.strip().to_numpy(),
            "tmdb_id": raw["tmdbId"].str.strip().to_numpy(),
        }
    )


def read_tags(path: Path) -> pd.DataFrame:
    """``tags.csv``: ``user_id``, ``item_id`` (int32), ``tag`` (lower-cased, stripped; empty
    tags dropped), ``timestamp`` (int64)."""
    raw = read_table(path)
    tags = raw["tag"].str.strip().str.lower()
    keep = (tags != "").to_numpy()
    return pd.DataFrame(
        {
            "user_id": raw["userId"].to_numpy()[keep],
            "item_id": raw["movieId"].to_numpy()[keep],
            "tag": tags.to_numpy()[keep],
            "timestamp": raw["timestamp"].to_numpy()[keep],
        }
    )


def _movie_major(movie: np.ndarray, tag: np.ndarray, n_tags: int) -> bool:
    """Whether rows run movie by movie (ascending), each with tags 1..n_tags in order."""
    if len(movie) % n_tags:
        return False
    by_movie, by_tag = movie.reshape(-1, n_tags), tag.reshape(-1, n_tags)
    return (
        bool((by_tag == np.arange(1, n_tags + 1, dtype=tag.dtype)).all())
        and bool((by_movie == by_movie[:, :1]).all())
        and bool((by_movie[1:, 0] > by_movie[:-1, 0]).all())
    )


def read_genome(folder: Path) -> Genome | None:
    """The tag genome (ml-25m, ml-32m): every genome movie's relevance to every genome tag, as
    a dense float32 matrix. None when the release has no genome files."""
    tags_path, scores_path = folder / "genome-tags.csv", folder / "genome-scores.csv"
    if not tags_path.is_file() and not scores_path.is_file():
        return None
    tags = read_table(_require(tags_path))
    tag_ids = tags["tagId"].to_numpy()
    if not np.array_equal(tag_ids, np.arange(1, len(tags) + 1)):
        raise DataError(tags_path, "tagId must run 1, 2, 3, ... in order")
    scores = read_table(_require(scores_path))
    movie, tag = scores["movieId"].to_numpy(), scores["tagId"].to_numpy()
    relevance = scores["relevance"].to_numpy()
    del scores
    bad = (tag < 1) | (tag > len(tags))
    if bad.any():
        raise _bad_line(scores_path, bad, "tagId is not in genome-tags.csv")
    n_tags = len(tags)
    if _movie_major(movie, tag, n_tags):
        # GroupLens' order, (movieId, tagId): the column of scores is the matrix already.
        item_ids, matrix = movie[::n_tags], relevance.reshape(-1, n_tags)
    else:
        item_ids, rows = np.unique(movie, return_inverse=True)
        if len(movie) != len(item_ids) * n_tags:
            raise DataError(
                scores_path,
                f"{len(movie):,} rows for {len(item_ids):,} movies x {n_tags:,} tags: every "
                "movie must have a score for every tag",
            )
        matrix = np.full((len(item_ids), n_tags), np.nan, dtype=np.float32)
        matrix[rows, tag - 1] = relevance
        if np.isnan(matrix).any():
            raise DataError(scores_path, "a (movie, tag) pair is listed twice")
    return Genome(
        tags=tuple(tags["tag"].astype(str)), item_ids=item_ids.astype(np.int64), scores=matrix
    )


# --- releases -----------------------------------------------------------------------------------


def count_rows(path: Path) -> int:
    """Data rows of a CSV file whose fields hold no line breaks (ratings.csv): its newlines
    minus the header's, read in 16 MB blocks."""
    lines, last = 0, b"\n"
    with _require(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n") - 1


def identify(dataset: Dataset, path: Path, ratings: int) -> Release:
    """The release ``dataset`` names, if ``path`` (its ratings.csv, with ``ratings`` rows)
    is it; otherwise a one-line DataError that names what the file is instead."""
    wanted = CURRENT[dataset]
    if ratings == wanted.ratings:
        return wanted
    fix = f"get {wanted.name} with `melu data download --dataset {wanted.name}`"
    known = next((r for r in RELEASES if r.ratings == ratings), None)
    if known is not None:
        raise DataError(
            path,
            f"{ratings:,} ratings: this is {known.label()}, not the {wanted.label()} that melu "
            f"reads as {dataset} ({wanted.ratings:,} ratings); {fix}",
        )
    raise DataError(
        path,
        f"{ratings:,} ratings, but {wanted.label()} has {wanted.ratings:,}: not a published "
        f"release (truncated or edited?); {fix}",
    )


def _check_movies(path: Path, release: Release, movies: int) -> None:
    if release.movies is not None and movies != release.movies:
        raise DataError(
            path,
            f"{movies:,} movies, but {release.label()} has {release.movies:,}: the folder "
            "mixes files of different releases",
        )


def read_release(folder: Path, dataset: Dataset, check: bool = True) -> MovieLens:
    """The CSV release ``dataset`` in ``folder``. With ``check`` its counts must be the
    published release's (:func:`identify`); without, any release of the format is read (the
    generated ones of ``benchmarks/generate_release.py``).

    Frames: ``ratings`` (int32 ids, float32 ratings, int64 timestamps), ``users`` (``user_id``
    only: these releases hold no demographics), ``items`` (the items frame of
    :mod:`melu.movielens` plus ``imdb_id`` and ``tmdb_id``), the tag applications in ``tags``
    and the tag genome in ``genome`` where the release has one.
    """
    folder = Path(folder)
    ratings_path = folder / "ratings.csv"
    ratings = read_ratings(ratings_path)
    items = read_movies(folder / "movies.csv")
    if check:
        release = identify(dataset, ratings_path, len(ratings))
        _check_movies(folder / "movies.csv", release, len(items))
    links = read_links(folder / "links.csv")
    items = items.merge(links, on="item_id", how="left", validate="one_to_one")
    items[["imdb_id", "tmdb_id"]] = items[["imdb_id", "tmdb_id"]].fillna("")
    users = pd.DataFrame({"user_id": np.unique(ratings["user_id"].to_numpy()).astype(np.int64)})
    log.info("%s: %d ratings, %d users, %d movies", folder, len(ratings), len(users), len(items))
    return MovieLens(
        source=dataset,
        ratings=ratings,
        users=users,
        items=items,
        tags=read_tags(folder / "tags.csv"),
        genome=read_genome(folder),
    )
