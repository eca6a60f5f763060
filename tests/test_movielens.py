"""Readers of the three MovieLens formats: synthetic files, the real files, and broken files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from melu import movielens
from melu.errors import DataError

# --- synthetic fixtures ---------------------------------------------------------------------------

ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Crème de la crème (1998)::Comedy\n"  # non-ASCII: the GroupLens files are latin-1
    "3::No Year Here::Drama\n"
)
ML1M_RATINGS = "1::1::5::978300760\n1::2::3::978302109\n2::1::4::978298413\n3::3::1::978220179\n"

MELU_SPLIT_DATA = {
    "warm_state": ({"1": ["1", "2"], "2": ["1"]}, {"1": [5, 3], "2": [4]}),
    "user_cold_state": ({"3": ["1"]}, {"3": [2]}),
    "item_cold_state": ({"1": ["3"]}, {"1": [1]}),
    "user_and_item_cold_state": ({"3": ["3"]}, {"3": [4]}),
}
MELU_ITEMS = (
    "1::Toy Story::1995::G::22 Nov 1995::Animation, Adventure, Comedy::John Lasseter::"
    "Joss Whedon (screenplay by)::Tom Hanks, Tim Allen::A toy story.::https://example.org/1.jpg\n"
    "2::Crème de la crème::1998::N/A::N/A::Comedy::N/A::N/A::N/A::N/A::N/A\n"
    "3::Heat::1995::R::15 Dec 1995::Action, Crime, Drama::Michael Mann::Michael Mann::"
    "Al Pacino, Robert De Niro::A heist.::N/A\n"
)

ML100K_GENRE_FLAGS = {
    # Animation, Children's, Comedy
    1: "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    # unknown only: becomes no genre at all
    2: "1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
}
ML100K_ITEMS = (
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    f"{ML100K_GENRE_FLAGS[1]}\n"
    f"2|unknown||||{ML100K_GENRE_FLAGS[2]}\n"
)
ML100K_USERS = "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|student|32067\n"
ML100K_RATINGS = "1\t1\t5\t874965758\n2\t1\t3\t876893171\n3\t2\t1\t878542960\n"


def write_ml1m(folder: Path, ratings: str = ML1M_RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.dat").write_text(ML1M_USERS, encoding="latin-1")
    (folder / "movies.dat").write_text(ML1M_MOVIES, encoding="latin-1")
    (folder / "ratings.dat").write_text(ratings, encoding="latin-1")
    return folder


def write_melu(data_dir: Path) -> Path:
    melu = data_dir / "melu"
    melu.mkdir(parents=True)
    for stem, (items, ratings) in MELU_SPLIT_DATA.items():
        (melu / f"{stem}.json").write_text(json.dumps(items), encoding="utf-8")
        (melu / f"{stem}_y.json").write_text(json.dumps(ratings), encoding="utf-8")
    (melu / "movies_extrainfos.dat").write_text(MELU_ITEMS, encoding="utf-8")
    (data_dir / "ml-1m").mkdir()
    (data_dir / "ml-1m" / "users.dat").write_text(ML1M_USERS, encoding="latin-1")
    return data_dir


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "u.data").write_text(ML100K_RATINGS, encoding="latin-1")
    (folder / "u.item").write_text(ML100K_ITEMS, encoding="latin-1")
    (folder / "u.user").write_text(ML100K_USERS, encoding="latin-1")
    return folder


def check_frames(ml: movielens.MovieLens, rating_extra: str) -> None:
    """The column contract of the module docstring, whatever the source format."""
    assert list(ml.ratings.columns) == ["user_id", "item_id", "rating", rating_extra]
    assert ml.ratings["user_id"].dtype == "int64"
    assert ml.ratings["item_id"].dtype == "int64"
    assert ml.ratings["rating"].dtype == "float32"
    if rating_extra == "timestamp":
        assert ml.ratings["timestamp"].dtype == "int64"
    else:
        assert all(isinstance(s, str) for s in ml.ratings["split"])
    assert list(ml.users.columns) == ["user_id", "gender", "age", "occupation", "zip"]
    assert ml.users["user_id"].dtype == "int64"
    for col in ("gender", "age", "occupation", "zip"):
        assert all(isinstance(v, str) for v in ml.users[col]), col
    assert list(ml.items.columns) == [
        "item_id", "title", "year", "rate", "genre", "director", "actor",
    ]  # fmt: skip
    assert ml.items["item_id"].dtype == "int64"
    for col in ("title", "year", "rate"):
        assert all(isinstance(v, str) for v in ml.items[col]), col
    for col in ("genre", "director", "actor"):
        assert all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in ml.items[col]
        ), col


# --- parsing synthetic files ----------------------------------------------------------------------


def test_melu_release_synthetic(tmp_path: Path) -> None:
    ml = movielens.load("melu", write_melu(tmp_path))
    assert ml.source == "melu"
    check_frames(ml, "split")
    assert ml.ratings.to_dict("list") == {
        "user_id": [1, 1, 2, 3, 1, 3],
        "item_id": [1, 2, 1, 1, 3, 3],
        "rating": [5.0, 3.0, 4.0, 2.0, 1.0, 4.0],
        "split": ["warm", "warm", "warm", "new_user", "new_item", "new_user_new_item"],
    }
    items = ml.items.set_index("item_id").to_dict("index")
    assert items[1] == {
        "title": "Toy Story", "year": "1995", "rate": "G",
        "genre": ["Animation", "Adventure", "Comedy"], "director": ["John Lasseter"],
        "actor": ["Tom Hanks", "Tim Allen"],
    }  # fmt: skip
    # 'N/A' (and MeLU's own 'nan') mean missing: empty string or empty list, never a token.
    assert items[2] == {
        "title": "Crème de la crème", "year": "1998", "rate": "",
        "genre": ["Comedy"], "director": [], "actor": [],
    }  # fmt: skip
    assert items[3]["genre"] == ["Action", "Crime", "Drama"]
    assert ml.users["user_id"].tolist() == [1, 2, 3]


def test_ml1m_synthetic(tmp_path: Path) -> None:
    ml = movielens.load("ml-1m", write_ml1m(tmp_path / "ml-1m").parent)
    assert ml.source == "ml-1m"
    check_frames(ml, "timestamp")
    assert ml.ratings["timestamp"].tolist() == [978300760, 978302109, 978298413, 978220179]
    assert ml.ratings["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    items = ml.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story"
    assert items.loc[1, "year"] == "1995"
    assert items.loc[1, "genre"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[2, "title"] == "Crème de la crème"  # decoded as latin-1
    assert (items.loc[3, "title"], items.loc[3, "year"]) == ("No Year Here", "")
    assert ml.items["rate"].eq("").all()
    assert ml.users.iloc[0].to_list() == [1, "F", "1", "10", "48067"]


def test_ml100k_synthetic(tmp_path: Path) -> None:
    ml = movielens.load("ml-100k", write_ml100k(tmp_path / "ml-100k").parent)
    assert ml.source == "ml-100k"
    check_frames(ml, "timestamp")
    assert ml.ratings[["user_id", "item_id"]].values.tolist() == [[1, 1], [2, 1], [3, 2]]
    # Raw ages are bucketed into ML-1M's age codes so that both formats share one vocabulary.
    assert ml.users["age"].tolist() == ["18", "50", "1"]
    assert ml.users["gender"].tolist() == ["M", "F", "M"]
    items = ml.items.set_index("item_id")
    assert (items.loc[1, "title"], items.loc[1, "year"]) == ("Toy Story", "1995")
    assert items.loc[1, "genre"] == ["Animation", "Children's", "Comedy"]
    assert (items.loc[2, "year"], items.loc[2, "genre"]) == ("", [])


@pytest.mark.parametrize(
    ("age", "code"), [(1, "1"), (17, "1"), (18, "18"), (24, "18"), (25, "25"), (49, "45"),
                      (50, "50"), (55, "50"), (56, "56"), (90, "56")],
)  # fmt: skip
def test_age_code(age: int, code: str) -> None:
    assert movielens.age_code(age) == code


# --- the real files -------------------------------------------------------------------------------


def test_real_melu_release(melu_frames: movielens.MovieLens) -> None:
    ml = melu_frames
    check_frames(ml, "split")
    assert len(ml.ratings) == 1_000_209
    assert ml.ratings["user_id"].nunique() == 6_040
    assert len(ml.items) == 3_881
    assert not ml.items["item_id"].isin([860, 1795]).any()  # merged away by MeLU's authors
    assert ml.ratings["split"].value_counts().to_dict() == {
        "warm": 640_448,
        "new_user": 163_702,
        "new_item": 157_456,
        "new_user_new_item": 38_603,
    }
    assert ml.ratings["rating"].between(1, 5).all()
    assert ml.ratings["item_id"].isin(ml.items["item_id"]).all()
    assert set(ml.items["rate"]) == {"G", "NC-17", "PG", "PG-13", "R", "UNRATED"}


def test_real_ml1m_metadata(shared_data: Path) -> None:
    users = movielens.read_ml1m_users(shared_data / "ml-1m" / "users.dat")
    movies = movielens.read_ml1m_movies(shared_data / "ml-1m" / "movies.dat")
    assert len(users) == 6_040
    assert users["user_id"].tolist() == list(range(1, 6_041))
    assert set(users["age"]) == {"1", "18", "25", "35", "45", "50", "56"}
    assert len(movies) == 3_883
    assert movies["item_id"].max() == 3_952
    toy = movies.set_index("item_id").loc[1]
    assert (toy["title"], toy["year"]) == ("Toy Story", "1995")


def test_real_ml1m_every_movie_has_a_year(shared_data: Path) -> None:
    movies = movielens.read_ml1m_movies(shared_data / "ml-1m" / "movies.dat")
    assert movies.loc[~movies["year"].str.fullmatch(r"\d{4}"), "title"].tolist() == []


def test_real_partial_ratings(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = shared_data / "ml-1m"
    if (folder / "ratings.dat").is_file():
        pytest.fail(f"{folder} now holds the full ratings.dat: update this test's counts")
    with caplog.at_level(logging.WARNING, logger="melu.movielens"):
        ml = movielens.load("ml-1m", shared_data)
    assert "ratings_PARTIAL_users_1-2999.dat" in caplog.text
    check_frames(ml, "timestamp")
    assert len(ml.ratings) == 487_650
    assert ml.ratings["user_id"].nunique() == 2_999
    assert ml.ratings["user_id"].min() == 1 and ml.ratings["user_id"].max() == 2_999
    first, last = ml.ratings.iloc[0], ml.ratings.iloc[-1]
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == (1, 1193, 5, 978300760)
    assert (last.user_id, last.item_id, last.rating, last.timestamp) == (2999, 2046, 4, 970621145)


def test_ratings_path_prefers_full_file(tmp_path: Path) -> None:
    (tmp_path / "ratings_PARTIAL_users_1-9.dat").write_text("1::1::5::0\n")
    assert movielens.ml1m_ratings_path(tmp_path).name == "ratings_PARTIAL_users_1-9.dat"
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n")
    assert movielens.ml1m_ratings_path(tmp_path).name == "ratings.dat"


# --- broken files ---------------------------------------------------------------------------------


def where(path: Path, line: int | None = None) -> str:
    return re.escape(f"{path}:{line}" if line is not None else str(path))


@pytest.mark.parametrize(
    ("dataset", "missing"),
    [("melu", "melu/warm_state.json"), ("melu", "ml-1m/users.dat"),
     ("melu", "melu/movies_extrainfos.dat"), ("ml-1m", "ml-1m/movies.dat"),
     ("ml-1m", "ml-1m/ratings.dat"), ("ml-100k", "ml-100k/u.user")],
)  # fmt: skip
def test_missing_file(tmp_path: Path, dataset: str, missing: str) -> None:
    write_melu(tmp_path / "melu_root")
    write_ml1m(tmp_path / "ml-1m")
    write_ml100k(tmp_path / "ml-100k")
    root = tmp_path / "melu_root" if dataset == "melu" else tmp_path
    (root / missing).unlink()
    with pytest.raises(DataError, match=where(root / missing)) as info:
        movielens.load(dataset, root)  # type: ignore[arg-type]
    assert "not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_nothing_there(tmp_path: Path) -> None:
    for dataset in ("melu", "ml-1m", "ml-100k"):
        with pytest.raises(DataError, match="not found"):
            movielens.load(dataset, tmp_path / "nowhere")


def test_truncated_json(tmp_path: Path) -> None:
    write_melu(tmp_path)
    path = tmp_path / "melu" / "warm_state.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=where(path) + r".*invalid JSON"):
        movielens.load("melu", tmp_path)


@pytest.mark.parametrize(
    ("stem", "items", "ratings", "blamed", "message"),
    [
        ("warm_state", {"1": ["1", "x"]}, {"1": [5, 3]}, "warm_state.json", "integers"),
        ("warm_state", {"1": ["1", "2"]}, {"1": [5, 7]}, "warm_state_y.json", "outside 1..5"),
        ("warm_state", {"1": ["1", "2"]}, {"1": [5]}, "warm_state_y.json", "1 ratings for 2"),
        ("user_cold_state", {"3": ["1"]}, {"4": [2]}, "user_cold_state_y.json", "users differ"),
        ("item_cold_state", ["1"], {"1": [1]}, "item_cold_state.json", "expected an object"),
    ],
)
def test_malformed_melu_split(
    tmp_path: Path, stem: str, items: object, ratings: object, blamed: str, message: str
) -> None:
    write_melu(tmp_path)
    (tmp_path / "melu" / f"{stem}.json").write_text(json.dumps(items))
    (tmp_path / "melu" / f"{stem}_y.json").write_text(json.dumps(ratings))
    with pytest.raises(DataError, match=where(tmp_path / "melu" / blamed) + ".*" + message):
        movielens.load("melu", tmp_path)


def test_truncated_ratings_line(tmp_path: Path) -> None:
    # A download cut short mid-line: the last line keeps only its first two fields.
    folder = write_ml1m(tmp_path / "ml-1m", ML1M_RATINGS + "5::12")
    path = folder / "ratings.dat"
    with pytest.raises(DataError, match=where(path, 5) + r".*expected 4 '::'-separated fields"):
        movielens.load("ml-1m", tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x::1::5::978300760", "user id must be an integer, got 'x'"),
        ("1::1.5::5::978300760", "movie id must be an integer"),
        ("1::1::7::978300760", "rating must be within 1..5, got '7'"),
        ("1::1::0::978300760", "rating must be within 1..5"),
        ("1::1::five::978300760", "rating must be a number"),
        ("1::1::5", "expected 4 '::'-separated fields, found 3"),
        ("1::1::5::978300760::extra", "expected 4 '::'-separated fields, found 5"),
        ("1::1::5::soon", "timestamp must be an integer"),
    ],
)
def test_malformed_ml1m_ratings(tmp_path: Path, line: str, message: str) -> None:
    # The bad line is the third one, so the reported line number is checked, not assumed.
    lines = ML1M_RATINGS.splitlines()
    lines.insert(2, line)
    folder = write_ml1m(tmp_path / "ml-1m", "\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=where(folder / "ratings.dat", 3) + ".*" + re.escape(message)
    ):
        movielens.load("ml-1m", tmp_path)


@pytest.mark.parametrize(
    ("name", "line", "message"),
    [
        ("users.dat", "4::X::1::10::48067", "gender must be M or F"),
        ("users.dat", "4::M::old::10::48067", "age must be an integer"),
        ("users.dat", "1::M::1::10::48067", "user 1 listed twice"),
        ("movies.dat", "x::Heat (1995)::Action", "movie id must be an integer"),
        ("movies.dat", "4::Heat (1995)", "expected 3 '::'-separated fields, found 2"),
    ],
)
def test_malformed_ml1m_metadata(tmp_path: Path, name: str, line: str, message: str) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    path = folder / name
    path.write_text(path.read_text(encoding="latin-1") + line + "\n", encoding="latin-1")
    # A duplicate is a property of the whole file, so it is reported without a line number.
    pattern = where(path) if "twice" in message else where(path, 4)
    with pytest.raises(DataError, match=pattern + ".*" + re.escape(message)):
        movielens.load("ml-1m", tmp_path)


@pytest.mark.parametrize(
    ("name", "line", "message"),
    [
        ("u.data", "4\t1\t7\t874965758", "rating must be within 1..5"),
        ("u.data", "4\tone\t3\t874965758", "item id must be an integer"),
        ("u.data", "4::1::3::874965758", "expected 4 '\t'-separated fields, found 1"),
        ("u.user", "4|old|M|writer|00000", "age must be an integer"),
        ("u.user", "4|30|M|writer", "expected 5 '|'-separated fields, found 4"),
        ("u.item", "3|Heat (1995)|01-Jan-1995||url|" + "2|" * 18 + "0", "genre flags"),
        ("u.item", "3|Heat (1995)|01-Jan-1995||url|0|1", "expected 24 '|'-separated fields"),
    ],
)
def test_malformed_ml100k(tmp_path: Path, name: str, line: str, message: str) -> None:
    folder = write_ml100k(tmp_path / "ml-100k")
    path = folder / name
    number = len(path.read_text(encoding="latin-1").splitlines()) + 1
    path.write_text(path.read_text(encoding="latin-1") + line + "\n", encoding="latin-1")
    with pytest.raises(DataError, match=where(path, number) + ".*" + re.escape(message)):
        movielens.load("ml-100k", tmp_path)


def test_malformed_melu_items(tmp_path: Path) -> None:
    write_melu(tmp_path)
    path = tmp_path / "melu" / "movies_extrainfos.dat"
    path.write_text(MELU_ITEMS + "4::Only::three\n", encoding="utf-8")
    with pytest.raises(DataError, match=where(path, 4) + ".*expected 11 '::'-separated fields"):
        movielens.load("melu", tmp_path)


def test_wrong_encoding_names_line(tmp_path: Path) -> None:
    write_melu(tmp_path)
    path = tmp_path / "melu" / "movies_extrainfos.dat"
    # latin-1 bytes where MeLU's file is UTF-8.
    path.write_bytes(MELU_ITEMS.encode("utf-8") + "4::Crème::1998".encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=where(path, 4) + ".*not valid utf-8"):
        movielens.load("melu", tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m", "\n")
    with pytest.raises(DataError, match=where(folder / "ratings.dat") + ".*no rows"):
        movielens.load("ml-1m", tmp_path)


def test_load_returns_plain_frames(tmp_path: Path) -> None:
    """The frames are ordinary pandas objects that callers may filter and copy freely."""
    ml = movielens.load("ml-100k", write_ml100k(tmp_path / "ml-100k").parent)
    assert isinstance(ml.ratings, pd.DataFrame)
    assert ml.ratings.index.tolist() == list(range(len(ml.ratings)))
