"""The CSV releases' reader: the real ml-latest-small, and small hand-made broken files."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melu import movielens, movielens_csv
from melu.errors import DataError

REPO = Path(__file__).resolve().parent.parent

# --- the real ml-latest-small ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(shared_data: Path) -> movielens.MovieLens:
    return movielens.load("ml-latest-small", shared_data)


def test_counts_and_dtypes(small: movielens.MovieLens, shared_data: Path) -> None:
    r = small.ratings
    assert list(r.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert [str(t) for t in r.dtypes] == ["int32", "int32", "float32", "int64"]
    assert len(r) == 100_836 and r["user_id"].nunique() == 610 and len(small.items) == 9_742
    assert r["item_id"].nunique() == 9_724
    first, last = r.iloc[0], r.iloc[-1]
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == (1, 1, 4.0, 964982703)
    assert (last.user_id, last.item_id, last.rating, last.timestamp) == (
        610, 170875, 3.0, 1493846415,
    )  # fmt: skip
    # Half stars, every one of them used; CRLF line endings in the file itself.
    assert sorted(r["rating"].unique().tolist()) == [x / 2 for x in range(1, 11)]
    assert b"\r\n" in (shared_data / "ml-latest-small" / "ratings.csv").read_bytes()[:200]
    assert small.source == "ml-latest-small"


def test_no_user_fields(small: movielens.MovieLens) -> None:
    assert list(small.users.columns) == ["user_id"]
    assert small.users["user_id"].tolist() == list(range(1, 611))


def test_titles_match_pythons_csv_module(small: movielens.MovieLens, shared_data: Path) -> None:
    """Every title as Python's csv module reads it is the parsed title plus its year."""
    with (shared_data / "ml-latest-small" / "movies.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    items = small.items.set_index("item_id")
    quoted = 0
    for movie_id, raw_title, genres in rows:
        item = items.loc[int(movie_id)]
        quoted += "," in raw_title
        assert raw_title.startswith(item["title"]), raw_title
        assert raw_title.strip() == item["title"] if not item["year"] else item["year"] in raw_title
        assert item["genre"] == [g for g in genres.split("|") if g != "(no genres listed)"]
    assert quoted == 2_079  # SOURCES.md: titles with commas, double-quoted in the file
    # Doubled quotes inside a quoted field.
    assert (items.loc[7789, "title"], items.loc[7789, "year"]) == (
        "11'09\"01 - September 11",
        "2002",
    )


def test_years(small: movielens.MovieLens) -> None:
    items = small.items.set_index("item_id")
    assert (items["year"] == "").sum() == 12
    assert items.loc[40697, ["title", "year"]].tolist() == ["Babylon 5", ""]
    # A range gives its first year; a trailing space after the year is no obstacle.
    assert items.loc[171749, ["title", "year"]].tolist() == ["Death Note: Desu nôto", "2006"]
    assert items["year"].str.fullmatch(r"\d{4}|").all()
    assert not items["title"].str.endswith(" ").any()


def test_genres_and_links(small: movielens.MovieLens) -> None:
    items = small.items.set_index("item_id")
    assert (items["genre"].map(len) == 0).sum() == 34  # "(no genres listed)"
    tokens = {g for gs in items["genre"] for g in gs}
    assert len(tokens) == 19 and "IMAX" in tokens and "Children" in tokens
    assert items.loc[1, "imdb_id"] == "0114709"  # zero-padded, kept as a string
    assert items["imdb_id"].str.len().eq(7).all()
    assert (items["tmdb_id"] == "").sum() == 8
    for col in ("rate",):
        assert items[col].eq("").all()
    assert items["director"].map(len).eq(0).all() and items["actor"].map(len).eq(0).all()


def test_tags(small: movielens.MovieLens) -> None:
    tags = small.tags
    assert tags is not None and len(tags) == 3_683
    assert list(tags.columns) == ["user_id", "item_id", "tag", "timestamp"]
    assert tags["tag"].str.lower().eq(tags["tag"]).all()
    assert tags.iloc[-1]["tag"] == "heroic bloodshed"
    assert small.genome is None


# --- hand-made files ------------------------------------------------------------------------------

RATINGS = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,2,4.5,964981247",
           "2,1,0.5,964982224", "2,3,5.0,964983815"]  # fmt: skip
MOVIES = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    '2,"American President, The (1995) ",Comedy|Drama|Romance',
    '3,"11\'09""01 - September 11 (2002)",Drama',
    "4,Babylon 5,(no genres listed)",
]
TAGS = [
    "userId,movieId,tag,timestamp",
    '1,1,"Pixar, animated",1445714994',
    "2,3,  Funny ,1445714996",
]
LINKS = ["movieId,imdbId,tmdbId", "1,0114709,862", "2,0112346,9087", "3,0328802,", "4,0105946,"]


def write_release(
    folder: Path, newline: str = "\r\n", bom: bool = False, ratings: list[str] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ratings.csv": ratings or RATINGS, "movies.csv": MOVIES, "tags.csv": TAGS,
             "links.csv": LINKS}  # fmt: skip
    for name, lines in files.items():
        text = newline.join(lines) + newline
        (folder / name).write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return folder


def read(folder: Path) -> movielens.MovieLens:
    return movielens_csv.read_release(folder, "ml-latest-small", check=False)


def frames_equal(a: movielens.MovieLens, b: movielens.MovieLens) -> None:
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert a.tags is not None and b.tags is not None
    pd.testing.assert_frame_equal(a.tags, b.tags)


def test_hand_made_release(tmp_path: Path) -> None:
    ml = read(write_release(tmp_path / "r"))
    assert ml.ratings["rating"].tolist() == [4.0, 4.5, 0.5, 5.0]
    items = ml.items.set_index("item_id")
    assert items.loc[2, ["title", "year"]].tolist() == ["American President, The", "1995"]
    assert items.loc[3, "title"] == "11'09\"01 - September 11"
    assert items.loc[4, ["title", "year", "genre"]].tolist() == ["Babylon 5", "", []]
    assert items.loc[3, ["imdb_id", "tmdb_id"]].tolist() == ["0328802", ""]
    assert ml.tags is not None and ml.tags["tag"].tolist() == ["pixar, animated", "funny"]


@pytest.mark.parametrize(("newline", "bom"), [("\n", False), ("\r\n", True), ("\n", True)])
def test_line_endings_and_bom_read_alike(tmp_path: Path, newline: str, bom: bool) -> None:
    frames_equal(
        read(write_release(tmp_path / "a")), read(write_release(tmp_path / "b", newline, bom))
    )


def where(path: Path, line: int | None = None) -> str:
    return re.escape(f"{path}:{line}" if line is not None else str(path)) + ": "


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("3,1", "truncated row: expected 4 fields (userId,movieId,rating,timestamp), found 2"),
        ("3,1,4.0,964982703,9", "extra fields: expected 4 fields"),
        ("3,1,five,964982703", "rating is not a number: 'five'"),
        ("3,1,,964982703", "rating is not a number: ''"),
        ("x,1,4.0,964982703", "userId is not an integer: 'x'"),
        ("3,1,4.0,soon", "timestamp is not an integer: 'soon'"),
        ("3,99999999999,4.0,964982703", "movieId is out of range"),
        ("3,1,7.0,964982703", "rating 7 is off the scale 0.5..5.0 in steps of 0.5"),
        ("3,1,4.25,964982703", "rating 4.25 is off the scale"),
        ("3,1,0,964982703", "rating 0 is off the scale"),
        ("1,2,3.0,964982703", "user 1 rates movie 2 twice"),
        ("3,0,4.0,964982703", "movieId must be at least 1"),
    ],
)
def test_malformed_ratings_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    # The bad row is the file's fourth line (header, two good rows, it, then more good rows).
    rows = [*RATINGS[:3], line, *RATINGS[3:]]
    folder = write_release(tmp_path / "r", ratings=rows)
    with pytest.raises(DataError, match=where(folder / "ratings.csv", 4) + re.escape(message)):
        read(folder)


def test_truncated_last_line(tmp_path: Path) -> None:
    """A download cut mid-row: the last line lacks its end, and no newline follows."""
    folder = write_release(tmp_path / "r")
    path = folder / "ratings.csv"
    path.write_bytes(path.read_bytes() + b"3,17")
    with pytest.raises(DataError, match=where(path, 6) + "truncated row"):
        read(folder)


@pytest.mark.parametrize(
    ("name", "line", "number", "message"),
    [
        ("movies.csv", '5,"Unclosed (1999),Drama', None, "malformed CSV"),
        ("movies.csv", "x,Heat (1995),Action", 6, "movieId is not an integer: 'x'"),
        ("movies.csv", "1,Again (1995),Action", None, "movie 1 listed twice"),
        ("tags.csv", "1,1,funny", 4, "truncated row"),
        ("links.csv", "5,0113277", 6, "truncated row"),
    ],
)
def test_malformed_other_files(
    tmp_path: Path, name: str, line: str, number: int | None, message: str
) -> None:
    folder = write_release(tmp_path / "r")
    path = folder / name
    path.write_bytes(path.read_bytes() + line.encode() + b"\r\n")
    with pytest.raises(DataError, match=where(path, number).rstrip(": ") + ".*" + message) as info:
        read(folder)
    assert "\n" not in str(info.value)


def test_bad_header_and_encoding(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "r", ratings=["user,movie,rating,time", *RATINGS[1:]])
    with pytest.raises(DataError, match=where(folder / "ratings.csv", 1) + "header is"):
        read(folder)
    folder = write_release(tmp_path / "s")
    movies = folder / "movies.csv"
    movies.write_bytes(movies.read_bytes() + "5,Crème (1998),Drama\r\n".encode("latin-1"))
    with pytest.raises(DataError, match=where(movies, 6) + "not valid utf-8"):
        read(folder)
    (folder / "links.csv").unlink()
    with pytest.raises(DataError, match=r"links\.csv: file not found"):
        movielens_csv.read_links(folder / "links.csv")


def test_genome(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "r")
    (folder / "genome-tags.csv").write_text("tagId,tag\n1,dark\n2,funny\n")
    scores = "movieId,tagId,relevance\n" + "".join(
        f"{m},{t},{(m * 10 + t) / 100}\n" for m in (3, 1) for t in (2, 1)
    )
    (folder / "genome-scores.csv").write_text(scores)
    genome = read(folder).genome
    assert genome is not None and genome.tags == ("dark", "funny")
    assert genome.item_ids.tolist() == [1, 3]
    np.testing.assert_allclose(genome.scores, [[0.11, 0.12], [0.31, 0.32]], rtol=1e-6)
    # GroupLens' order, (movieId, tagId), takes the fast path to the same matrix.
    rows = sorted(scores.splitlines()[1:], key=lambda r: tuple(map(int, r.split(",")[:2])))
    (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n" + "\n".join(rows))
    again = read(folder).genome
    assert again is not None and again.item_ids.tolist() == [1, 3]
    np.testing.assert_array_equal(again.scores, genome.scores)
    (folder / "genome-scores.csv").write_text(scores + "4,1,0.5\n")
    with pytest.raises(DataError, match="every movie must have a score for every tag"):
        read(folder)


# --- which release is it --------------------------------------------------------------------------


def test_older_release_is_named(tmp_path: Path) -> None:
    """The 2016 ml-latest-small (100,004 ratings) circulates under the same name."""
    rows = [RATINGS[0]] + [f"{1 + i // 1000},{1 + i % 1000},3.5,964982703" for i in range(100_004)]
    folder = write_release(tmp_path / "ml-latest-small", newline="\n", ratings=rows)
    with pytest.raises(DataError) as info:
        movielens.load("ml-latest-small", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{folder / 'ratings.csv'}: 100,004 ratings: this is ml-latest-small")
    assert "released 2016-10-17" in message and "2018-09-26" in message and "100,836" in message
    assert "\n" not in message

    # The same through the command line: one line, exit 2, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "melu", "data", "summary", "--dataset", "ml-latest-small",
         "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"melu: error: {message}"]


def test_unknown_counts_and_other_releases(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    with pytest.raises(DataError, match="100,835 ratings, but ml-latest-small released 2018-09-26 "
                                        r"has 100,836: not a published release"):  # fmt: skip
        movielens_csv.identify("ml-latest-small", path, 100_835)
    with pytest.raises(DataError, match="this is ml-20m, not the ml-25m released 2019-11-21"):
        movielens_csv.identify("ml-25m", path, 20_000_263)
    with pytest.raises(DataError, match="this is ml-25m released 2019-11-21, not the ml-32m"):
        movielens_csv.identify("ml-32m", path, 25_000_095)
    assert movielens_csv.identify("ml-32m", path, 32_000_204).movies == 87_585


def test_count_rows(tmp_path: Path, shared_data: Path) -> None:
    assert movielens_csv.count_rows(shared_data / "ml-latest-small" / "ratings.csv") == 100_836
    (tmp_path / "a.csv").write_bytes(b"h\r\n1\r\n2")  # no newline at the end
    assert movielens_csv.count_rows(tmp_path / "a.csv") == 2
