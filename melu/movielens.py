"""Read the MovieLens formats into typed pandas frames.

Every reader returns a :class:`MovieLens` with the same three frames, whatever the source:

* ``ratings``: ``user_id``, ``item_id`` (int64; int32 for the CSV releases, whose 25 million
  ratings must stay small), ``rating`` (float32), and ``split`` (str: MeLU's scenario) for
  MeLU's release or ``timestamp`` (int64) for the GroupLens files.
* ``users``: ``user_id`` (int64) and the demographic fields the release has (str): ``gender``,
  ``age``, ``occupation``, ``zip`` for ML-1M, ML-100K and MeLU's release, none for the CSV
  releases.
* ``items``: ``item_id`` (int64), ``title`` (str), ``year`` (str, "" where unknown), ``rate``
  (str, "" where unknown), and the multi-valued ``genre``, ``director``, ``actor`` (lists of str).
  The CSV releases add ``imdb_id`` and ``tmdb_id`` (str, "" where unknown).

The CSV releases (:mod:`melu.movielens_csv`) also carry their tag applications (``tags``) and,
for ml-25m and ml-32m, the tag genome (``genome``).

Malformed input raises :class:`~melu.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from melu.config import CSV_DATASETS, Dataset
from melu.errors import DataError

log = logging.getLogger(__name__)

# MeLU's split files, in the order the paper lists the scenarios.
MELU_SPLITS: dict[str, str] = {
    "warm": "warm_state",
    "new_user": "user_cold_state",
    "new_item": "item_cold_state",
    "new_user_new_item": "user_and_item_cold_state",
}
MELU_VOCAB_FILES = ("rate", "genre", "director", "actor", "gender", "age", "occupation", "zipcode")

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# ML-1M's age codes; ML-100K's raw ages are bucketed into them so both share one meaning.
ML1M_AGE_GROUPS: dict[int, str] = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_AGE_CODES = tuple(ML1M_AGE_GROUPS)
# ML-1M's occupation codes (its README; MeLU's release keeps them). ML-100K names occupations
# in words, which need no meaning beside them.
ML1M_OCCUPATIONS: dict[int, str] = {
    0: "other or not specified",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
# What each MovieLens code of a user field means, by field, with the codes as the API's
# tokens: a client sending 30 for age, or 21 for occupation, is told what the codes are.
CODE_MEANINGS: dict[str, dict[str, str]] = {
    "age": {str(code): group for code, group in ML1M_AGE_GROUPS.items()},
    "occupation": {str(code): name for code, name in ML1M_OCCUPATIONS.items()},
}

_MISSING = {"", "N/A", "nan", "NaN", "None"}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def describe_codes(meanings: dict[str, str]) -> str:
    """Codes and what they mean (a field's part of :data:`CODE_MEANINGS`, or the codes of it
    a model knows), for messages that refuse another value."""
    return ", ".join(f"{code} ({meaning})" for code, meaning in meanings.items())


def split_title_year(text: str) -> tuple[str, str]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", "1995")``; without a year in parentheses at
    the end, ``(text, "")``. Titles are stored without their year (MovieLens writes it in)."""
    match = _TITLE_YEAR.match(text)
    return (match.group(1), match.group(2)) if match else (text.strip(), "")


@dataclass(frozen=True)
class Genome:
    """The tag genome of ml-25m / ml-32m: ``scores[i, t]`` is the relevance (0..1) of genome
    tag ``tags[t]`` to movie ``item_ids[i]``; movies outside the genome have no row."""

    tags: tuple[str, ...]
    item_ids: np.ndarray  # [n] int64, ascending
    scores: np.ndarray  # [n, len(tags)] float32


@dataclass(frozen=True)
class MovieLens:
    """One dataset as frames; ``source`` names the format it came from."""

    source: Dataset
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    # CSV releases: tag applications (user_id, item_id, tag lower-cased, timestamp).
    tags: pd.DataFrame | None = None
    genome: Genome | None = None


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            path, "file not found (see `melu data download --help` for where to get it)"
        )
    return path


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers; a decoding error names its line."""
    with _require(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(path, f"not valid {encoding}: {exc.reason}", number) from None
            if text.strip():
                yield number, text


def _fields(path: Path, number: int, text: str, sep: str, count: int) -> list[str]:
    parts = text.split(sep)
    if len(parts) != count:
        raise DataError(
            path, f"expected {count} '{sep}'-separated fields, found {len(parts)}", number
        )
    return parts


def _int(path: Path, number: int, value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"{name} must be an integer, got {value!r}", number) from None


def _rating(path: Path, number: int, value: str) -> float:
    try:
        rating = float(value)
    except ValueError:
        raise DataError(path, f"rating must be a number, got {value!r}", number) from None
    if not 1.0 <= rating <= 5.0:
        raise DataError(path, f"rating must be within 1..5, got {value!r}", number)
    return rating


def _tokens(value: str, sep: str = ", ") -> list[str]:
    return [t.strip() for t in value.split(sep) if t.strip() not in _MISSING]


def _clean(value: str) -> str:
    value = value.strip()
    return "" if value in _MISSING else value


def _nonempty(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        raise DataError(path, "no rows")
    return frame


def _ratings_frame(path: Path, rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    frame = frame.astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}
    )
    return _nonempty(path, frame)


def _users_frame(path: Path, rows: list[tuple[int, str, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "gender", "age", "occupation", "zip"])
    frame = frame.astype({"user_id": "int64"})
    dupes = frame["user_id"].duplicated()
    if dupes.any():
        raise DataError(path, f"user {int(frame['user_id'][dupes].iloc[0])} listed twice")
    return _nonempty(path, frame)


def _items_frame(path: Path, rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["item_id", "title", "year", "rate", "genre", "director", "actor"]
    )
    frame = frame.astype({"item_id": "int64"})
    dupes = frame["item_id"].duplicated()
    if dupes.any():
        raise DataError(path, f"item {int(frame['item_id'][dupes].iloc[0])} listed twice")
    return _nonempty(path, frame)


def _parse_rows(
    path: Path, encoding: str, sep: str, count: int, parse: Callable[[int, list[str]], object]
) -> list[object]:
    return [parse(n, _fields(path, n, text, sep, count)) for n, text in _lines(path, encoding)]


# --- ML-1M --------------------------------------------------------------------------------------


def read_ml1m_users(path: Path) -> pd.DataFrame:
    """``UserID::Gender::Age::Occupation::Zip-code``."""

    def parse(n: int, f: list[str]) -> tuple[int, str, str, str, str]:
        if f[1] not in ("M", "F"):
            raise DataError(path, f"gender must be M or F, got {f[1]!r}", n)
        _int(path, n, f[2], "age")
        _int(path, n, f[3], "occupation")
        return _int(path, n, f[0], "user id"), f[1], f[2], f[3], f[4].strip()

    return _users_frame(path, _parse_rows(path, "latin-1", "::", 5, parse))  # type: ignore[arg-type]


def read_ml1m_movies(path: Path) -> pd.DataFrame:
    """``MovieID::Title (Year)::Genre|Genre``; latin-1 encoded."""

    def parse(n: int, f: list[str]) -> dict[str, object]:
        title, year = split_title_year(f[1])
        return {
            "item_id": _int(path, n, f[0], "movie id"),
            "title": title,
            "year": year,
            "rate": "",
            "genre": _tokens(f[2], "|"),
            "director": [],
            "actor": [],
        }

    return _items_frame(path, _parse_rows(path, "latin-1", "::", 3, parse))  # type: ignore[arg-type]


def read_ml1m_ratings(path: Path) -> pd.DataFrame:
    """``UserID::MovieID::Rating::Timestamp``."""

    def parse(n: int, f: list[str]) -> tuple[int, int, float, int]:
        return (
            _int(path, n, f[0], "user id"),
            _int(path, n, f[1], "movie id"),
            _rating(path, n, f[2]),
            _int(path, n, f[3], "timestamp"),
        )

    return _ratings_frame(path, _parse_rows(path, "latin-1", "::", 4, parse))  # type: ignore[arg-type]


def ml1m_ratings_path(folder: Path) -> Path:
    """``ratings.dat``; failing that, a ``ratings_PARTIAL_*.dat`` prefix (with a warning)."""
    full = folder / "ratings.dat"
    if full.is_file():
        return full
    partial = sorted(folder.glob("ratings_PARTIAL_*.dat"))
    if partial:
        log.warning("%s missing: using the partial file %s", full, partial[0].name)
        return partial[0]
    return _require(full)


def read_ml1m(folder: Path) -> MovieLens:
    return MovieLens(
        source="ml-1m",
        ratings=read_ml1m_ratings(ml1m_ratings_path(folder)),
        users=read_ml1m_users(folder / "users.dat"),
        items=read_ml1m_movies(folder / "movies.dat"),
    )


# --- ML-100K ------------------------------------------------------------------------------------


def age_code(age: int) -> str:
    """ML-1M's age bucket for a raw age (``1`` is "under 18")."""
    code = ML1M_AGE_CODES[0]
    for bound in ML1M_AGE_CODES[1:]:
        if age >= bound:
            code = bound
    return str(code)


def read_ml100k_ratings(path: Path) -> pd.DataFrame:
    """``u.data``: tab-separated ``user item rating timestamp``."""

    def parse(n: int, f: list[str]) -> tuple[int, int, float, int]:
        return (
            _int(path, n, f[0], "user id"),
            _int(path, n, f[1], "item id"),
            _rating(path, n, f[2]),
            _int(path, n, f[3], "timestamp"),
        )

    return _ratings_frame(path, _parse_rows(path, "latin-1", "\t", 4, parse))  # type: ignore[arg-type]


def read_ml100k_users(path: Path) -> pd.DataFrame:
    """``u.user``: ``user id | age | gender | occupation | zip code``."""

    def parse(n: int, f: list[str]) -> tuple[int, str, str, str, str]:
        if f[2] not in ("M", "F"):
            raise DataError(path, f"gender must be M or F, got {f[2]!r}", n)
        age = _int(path, n, f[1], "age")
        return _int(path, n, f[0], "user id"), f[2], age_code(age), f[3].strip(), f[4].strip()

    return _users_frame(path, _parse_rows(path, "latin-1", "|", 5, parse))  # type: ignore[arg-type]


def read_ml100k_items(path: Path) -> pd.DataFrame:
    """``u.item``: id | title | release date | video date | URL | 19 genre flags."""
    width = 5 + len(ML100K_GENRES)

    def parse(n: int, f: list[str]) -> dict[str, object]:
        flags = f[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(path, "genre flags must be 0 or 1", n)
        title, title_year = split_title_year(f[1])
        release = f[2].strip()
        year = release[-4:] if len(release) >= 4 and release[-4:].isdigit() else title_year
        genres = [g for g, flag in zip(ML100K_GENRES, flags, strict=True) if flag == "1"]
        return {
            "item_id": _int(path, n, f[0], "movie id"),
            "title": title,
            "year": year,
            "rate": "",
            "genre": [g for g in genres if g != "unknown"],
            "director": [],
            "actor": [],
        }

    return _items_frame(path, _parse_rows(path, "latin-1", "|", width, parse))  # type: ignore[arg-type]


def read_ml100k(folder: Path) -> MovieLens:
    return MovieLens(
        source="ml-100k",
        ratings=read_ml100k_ratings(folder / "u.data"),
        users=read_ml100k_users(folder / "u.user"),
        items=read_ml100k_items(folder / "u.item"),
    )


# --- MeLU's release -----------------------------------------------------------------------------


def read_melu_items(path: Path) -> pd.DataFrame:
    """``movies_extrainfos.dat``: 11 ``::`` fields scraped by MeLU's authors (UTF-8)."""

    def parse(n: int, f: list[str]) -> dict[str, object]:
        return {
            "item_id": _int(path, n, f[0], "movie id"),
            "title": f[1].strip(),
            "year": _clean(f[2]),
            "rate": _clean(f[3]),
            "genre": _tokens(f[5]),
            "director": _tokens(f[6]),
            "actor": _tokens(f[8]),
        }

    return _items_frame(path, _parse_rows(path, "utf-8", "::", 11, parse))  # type: ignore[arg-type]


def _read_json_object(path: Path) -> dict[str, list[object]]:
    _require(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid UTF-8: {exc.reason}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(path, "expected an object mapping user ids to lists")
    return data


def read_melu_split(folder: Path, scenario: str) -> pd.DataFrame:
    """One scenario's ``<name>.json`` (items per user) with ``<name>_y.json`` (their ratings)."""
    stem = MELU_SPLITS[scenario]
    items_path, ratings_path = folder / f"{stem}.json", folder / f"{stem}_y.json"
    items, ratings = _read_json_object(items_path), _read_json_object(ratings_path)
    if items.keys() != ratings.keys():
        missing = sorted(set(items) ^ set(ratings), key=str)[:3]
        raise DataError(ratings_path, f"users differ from {items_path.name}, e.g. {missing}")
    for user, user_items in items.items():
        if len(user_items) != len(ratings[user]):
            raise DataError(
                ratings_path,
                f"user {user}: {len(ratings[user])} ratings for {len(user_items)} items",
            )
    counts = [len(v) for v in items.values()]
    try:
        user_col = np.repeat(np.asarray(list(items), dtype=np.int64), counts)
        item_col = np.asarray(list(chain.from_iterable(items.values())), dtype=np.int64)
        rating_col = np.asarray(list(chain.from_iterable(ratings.values())), dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(
            items_path, f"user and item ids must be integers, ratings numbers: {exc}"
        ) from None
    frame = pd.DataFrame({"user_id": user_col, "item_id": item_col, "rating": rating_col})
    bad = ~frame["rating"].between(1.0, 5.0)
    if bad.any():
        row = frame[bad].iloc[0]
        raise DataError(ratings_path, f"user {row.user_id}: rating {row.rating} outside 1..5")
    frame["split"] = scenario
    return frame


def read_melu_vocabulary(folder: Path, name: str) -> list[str]:
    """One of MeLU's ``m_<name>.txt`` lists (kept for reference; our vocabularies are fitted)."""
    return [text.strip() for _, text in _lines(folder / f"m_{name}.txt", "utf-8")]


def read_melu(folder: Path, users_path: Path) -> MovieLens:
    """MeLU's release: four scenario splits, the scraped metadata, users from ML-1M."""
    ratings = pd.concat([read_melu_split(folder, s) for s in MELU_SPLITS], ignore_index=True)
    return MovieLens(
        source="melu",
        ratings=ratings,
        users=read_ml1m_users(users_path),
        items=read_melu_items(folder / "movies_extrainfos.dat"),
    )


def load(dataset: Dataset, data_dir: Path) -> MovieLens:
    """Read ``dataset`` from a folder laid out like ``shared/data/movielens``."""
    data_dir = Path(data_dir)
    if dataset == "melu":
        return read_melu(data_dir / "melu", data_dir / "ml-1m" / "users.dat")
    if dataset == "ml-1m":
        return read_ml1m(data_dir / "ml-1m")
    if dataset == "ml-100k":
        return read_ml100k(data_dir / "ml-100k")
    if dataset in CSV_DATASETS:
        # Imported here: movielens_csv builds on this module's MovieLens.
        from melu.movielens_csv import read_release

        return read_release(data_dir / dataset, dataset)
    raise ValueError(f"unknown dataset {dataset!r}")
