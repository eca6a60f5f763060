"""Write a synthetic MovieLens release shaped like ml-25m (or ml-32m), at any number of ratings.

The real 25M files are not on the project's machines, and may not be redistributed; this writes
files in their exact format (ratings.csv, movies.csv, tags.csv, links.csv, and with --genome
genome-scores.csv / genome-tags.csv) with ml-25m's counts scaled to the number of ratings asked
for: 162,541 users and 62,423 movies at 25,000,095 ratings, proportionally fewer below. With
``--shape ml-32m``, ml-32m's counts instead (200,948 users and 87,585 movies at 32,000,204
ratings), the same distributions.

What makes it ml-25m-shaped:

* user activity long-tailed (log-normal, median about 70 ratings like ml-25m's), every user with
  at least 20 ratings, as GroupLens guarantees; no user rates a movie twice;
* movie popularity long-tailed (Zipf with a flattened head): the top film is rated by about
  half the users, a long tail of films by few;
* half stars 0.5..5.0 with ml-25m's histogram (4.0 the most common, 0.5 the rarest);
* timestamps over 25 years (1995-01-09 to 2019-11-21); a film is rated only after it appears,
  so films introduced late are first rated late (the time split's new items);
* titles quoted where they hold commas or quotes (quotes doubled), some without a year, a few
  with a range, "(no genres listed)" and IMAX among the genres, zero-padded imdbIds.

Rows are written sorted by (userId, movieId), with LF line endings (CRLF with --crlf), in chunks,
so memory stays a few hundred MB at 25M ratings. Usage::

    python benchmarks/generate_release.py --ratings 25000095 --out /tmp/melu-scale/25m --genome
    python benchmarks/generate_release.py --shape ml-32m --ratings 32000204 --out /tmp/32m
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("generate_release")

ML25M = {"ratings": 25_000_095, "users": 162_541, "movies": 62_423, "tags": 1_093_360,
         "genome_movies": 13_816, "genome_tags": 1_128}  # fmt: skip
# ml-32m has no tag genome (its zip holds ratings, tags, movies and links): no genome counts.
ML32M = {"ratings": 32_000_204, "users": 200_948, "movies": 87_585, "tags": 2_000_072,
         "genome_movies": 0, "genome_tags": 0}  # fmt: skip
SHAPES: dict[str, dict[str, int]] = {"ml-25m": ML25M, "ml-32m": ML32M}
# The releases that carry the tag genome: --genome writes one only for these.
WITH_GENOME: tuple[str, ...] = ("ml-25m",)
START, END = 789_652_009, 1_574_327_703  # ml-25m's first and last rating (1995-01-09, 2019-11-21)
YEAR_S = 365.25 * 86_400
HALF_STARS = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
# ml-25m's share of each half star (its README's data, rounded).
STAR_SHARE = np.array([0.016, 0.031, 0.016, 0.066, 0.050, 0.196, 0.126, 0.266, 0.085, 0.148])
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip
WORDS = ("dark", "funny", "atmospheric", "twist ending", "space", "war", "love", "heist",
         "based on a book", "visually appealing", "quirky", "thought-provoking", "robots",
         "time travel", "superhero", "dystopia", "mafia", "high school", "music",
         "politics")  # fmt: skip
CHUNK = 1_000_000
# Movie popularity (rank + offset) ** -exponent, a Zipf law with a flattened head: the most
# popular film is rated by about half the users (as Forrest Gump is in ml-25m), and a long tail
# holds films with few ratings.
POPULARITY_EXPONENT, POPULARITY_OFFSET = 1.2, 30


def scaled(n_ratings: int, shape: str = "ml-25m") -> dict[str, int]:
    """The release ``shape``'s counts scaled to ``n_ratings`` (at least what a tiny release
    needs)."""
    full = SHAPES[shape]
    f = n_ratings / full["ratings"]
    users = max(2, round(full["users"] * f))
    return {
        "ratings": n_ratings,
        "users": min(users, n_ratings // 20),
        "movies": max(100, round(full["movies"] * f)),
        "tags": max(10, round(full["tags"] * f)),
        "genome_movies": max(10, round(full["genome_movies"] * f)) if full["genome_movies"] else 0,
        "genome_tags": full["genome_tags"],
    }


def user_counts(rng: np.random.Generator, users: int, total: int, cap: int) -> np.ndarray:
    """Ratings per user: 20 plus a log-normal extra (median about 50, like ml-25m's 71 in all),
    scaled to sum to ``total``; what the cap cuts off the most active users goes to the other
    users in proportion to their extra, so the shape below the cap is kept."""
    extra = rng.lognormal(mean=3.9, sigma=1.4, size=users)
    counts = np.zeros(users, dtype=np.int64)
    for _ in range(50):
        free = counts < cap
        target = total - 20 * users - int((counts[~free] - 20).sum())
        extra[free] *= target / extra[free].sum()
        counts = np.minimum(20 + np.floor(extra).astype(np.int64), cap)
        if total - int(counts.sum()) < users:
            break
    while (short := total - int(counts.sum())) > 0:  # round-off, given back one by one
        room = np.flatnonzero(counts < cap)
        counts[rng.choice(room, size=min(short, len(room)), replace=False)] += 1
    return counts


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    # np.unique hashes int64 keys in numpy 2.x, several times slower than a sort here.
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def pick_movies(
    rng: np.random.Generator, counts: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For every user ``u``, ``counts[u]`` distinct movies drawn by popularity; returned as
    (user, movie index) sorted by user then movie. Drawn in rounds: each round draws what every
    user still lacks and keeps the new distinct pairs, so popular films repeat only as often
    as they would by chance; after a few rounds the very active users, who have seen the
    popular films, finish with films drawn uniformly (the obscure ones they rate)."""
    n_movies = len(weights)
    cdf = np.cumsum(weights / weights.sum())
    have = np.zeros(0, dtype=np.int64)  # sorted keys user * n_movies + movie
    need = counts.copy()
    for round_ in range(100):
        if not need.any():
            break
        users = np.repeat(np.arange(len(counts), dtype=np.int64), need)
        if round_ < 3:
            movies = np.minimum(np.searchsorted(cdf, rng.random(len(users))), n_movies - 1)
        else:
            movies = rng.integers(0, n_movies, len(users))
        keys = _sorted_unique(users * n_movies + movies)
        keys = keys[~np.isin(keys, have, assume_unique=True, kind="sort")]
        have = np.sort(np.concatenate([have, keys]))
        need = counts - np.bincount(have // n_movies, minlength=len(counts))
    if need.any():
        raise RuntimeError(f"{int(need.sum())} ratings could not be placed")
    return have // n_movies, have % n_movies


def write_lines(path: Path, header: str, lines: list[str], newline: str, mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8", newline="") as fh:
        if mode == "w":
            fh.write(header + newline)
        if lines:
            fh.write(newline.join(lines) + newline)


def movie_table(rng: np.random.Generator, n_movies: int) -> dict[str, np.ndarray]:
    """Ids with gaps (like ml-25m's, up to ~3.4x the count), introduction times, years."""
    ids = np.sort(rng.choice(np.arange(1, int(3.4 * n_movies) + 2), n_movies, replace=False))
    # 40% back catalogue (on MovieLens from the start, released 1920..1994), 60% released
    # over the 25 years.
    back = rng.random(n_movies) < 0.4
    intro = np.where(back, START, rng.uniform(START, END - 30 * 86_400, n_movies)).astype(np.int64)
    year = np.where(
        back, rng.integers(1920, 1995, n_movies), 1970 + (intro / YEAR_S).astype(np.int64)
    )
    return {"ids": ids, "intro": intro, "year": year}


def write_movies(rng: np.random.Generator, folder: Path, movies: dict[str, np.ndarray],
                 newline: str) -> None:  # fmt: skip
    with (folder / "movies.csv").open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator=newline)
        out.writerow(["movieId", "title", "genres"])
        for i, (movie, year) in enumerate(zip(movies["ids"].tolist(), movies["year"].tolist(),
                                             strict=True)):  # fmt: skip
            u = rng.random()
            title = f"Movie {movie}"
            if u < 0.2:
                title = f"{title}, The"  # a comma: quoted in the file
            elif u < 0.21:
                title = f'Say "{title}"'  # quotes: doubled inside a quoted field
            if u > 0.999:
                when = ""  # no year
            elif u > 0.9985:
                when = f" ({year}–{year + 2})"  # a range
            else:
                when = f" ({year})" + (" " if u > 0.995 else "")  # sometimes a trailing space
            k = rng.integers(1, 5)
            genres = "|".join(sorted(rng.choice(GENRES, k, replace=False).tolist()))
            if i % 300 == 7:
                genres = "(no genres listed)"
            out.writerow([movie, title + when, genres])
    links = [f"{m},{m * 7 % 9_999_999:07d},{'' if m % 97 == 0 else m * 3}"
             for m in movies["ids"].tolist()]  # fmt: skip
    write_lines(folder / "links.csv", "movieId,imdbId,tmdbId", links, newline)


def generate(out: Path, n_ratings: int, seed: int = 0, genome: bool = False,
             newline: str = "\n", release: str = "ml-25m") -> dict[str, int]:  # fmt: skip
    """Write the release into ``out`` with the counts of ``release`` (ml-25m, ml-32m) scaled to
    ``n_ratings``, and its genome where ``genome`` is asked for and that release has one;
    returns its counts."""
    genome = genome and release in WITH_GENOME
    rng = np.random.default_rng(seed)
    counts = scaled(n_ratings, release)
    out.mkdir(parents=True, exist_ok=True)
    movies = movie_table(rng, counts["movies"])
    write_movies(rng, out, movies, newline)

    per_user = user_counts(rng, counts["users"], n_ratings, cap=counts["movies"] // 3)
    popularity = (np.arange(counts["movies"]) + POPULARITY_OFFSET) ** -POPULARITY_EXPONENT
    weights = popularity[rng.permutation(counts["movies"])]
    users, movie_idx = pick_movies(rng, per_user, weights)
    per_movie = np.bincount(movie_idx, minlength=counts["movies"])
    shape = {
        "ratings_per_user_min_median_max": [int(per_user.min()), float(np.median(per_user)),
                                            int(per_user.max())],
        "ratings_per_movie_median": float(np.median(per_movie)),
        "movies_rated": int((per_movie > 0).sum()),
        "most_rated_movie_users_share": round(float(per_movie.max()) / counts["users"], 3),
    }  # fmt: skip

    # Each user arrives at a time in the 25 years and rates over a few days to a few years;
    # a film is rated only after it appears.
    arrive = rng.uniform(START, END, counts["users"])
    span = rng.exponential(0.5 * YEAR_S, counts["users"]) * (rng.random(counts["users"]) < 0.5)
    path = out / "ratings.csv"
    write_lines(path, "userId,movieId,rating,timestamp", [], newline)
    stars = np.array([f"{s:.1f}" for s in HALF_STARS], dtype=object)
    for lo in range(0, len(users), CHUNK):
        u, m = users[lo : lo + CHUNK], movie_idx[lo : lo + CHUNK]
        when = arrive[u] + rng.random(len(u)) * span[u]
        when = np.maximum(when, movies["intro"][m] + rng.exponential(60 * 86_400, len(u)))
        when = np.minimum(when, END).astype(np.int64)
        r = stars[rng.choice(len(HALF_STARS), len(u), p=STAR_SHARE / STAR_SHARE.sum())]
        lines = list(map("{},{},{},{}".format, (u + 1).tolist(), movies["ids"][m].tolist(),
                         r.tolist(), when.tolist()))  # fmt: skip
        write_lines(path, "", lines, newline, mode="a")
    del users, movie_idx

    # Tags: a tenth of the users tag popular films with words from a Zipf vocabulary.
    n_tags = counts["tags"]
    taggers = rng.choice(counts["users"], max(1, counts["users"] // 10), replace=False)
    t_user = np.sort(rng.choice(taggers, n_tags))
    t_movie = np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(n_tags))
    t_movie = np.minimum(t_movie, counts["movies"] - 1)
    vocab = [*WORDS, *(f"tag {i}" for i in range(2_000)), "funny, but sad", 'so-called "art"']
    word_p = 1.0 / np.arange(1, len(vocab) + 1)
    words = rng.choice(len(vocab), n_tags, p=word_p / word_p.sum())
    t_when = np.minimum(
        np.maximum(arrive[t_user], movies["intro"][t_movie]) + rng.exponential(30 * 86_400, n_tags),
        END,
    ).astype(np.int64)
    with (out / "tags.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator=newline)
        writer.writerow(["userId", "movieId", "tag", "timestamp"])
        tag_text = [vocab[w] for w in words.tolist()]
        rows = zip((t_user + 1).tolist(), movies["ids"][t_movie].tolist(), tag_text,
                   t_when.tolist(), strict=True)  # fmt: skip
        writer.writerows(rows)

    if genome:
        write_genome(rng, out, movies["ids"], weights, counts, newline)
    # "release": whose counts these are; "shape": what the draws came to.
    info = {**counts, "seed": seed, "genome": genome, "release": release, "shape": shape}
    (out / "generated.json").write_text(json.dumps(info, indent=2) + "\n")
    return counts


def write_genome(rng: np.random.Generator, out: Path, ids: np.ndarray, weights: np.ndarray,
                 counts: dict[str, int], newline: str) -> None:  # fmt: skip
    """The most popular films, every one scored 0..1 on every genome tag."""
    n_tags = counts["genome_tags"]
    tags = [f"{i},{WORDS[i % len(WORDS)]} {i}" for i in range(1, n_tags + 1)]
    write_lines(out / "genome-tags.csv", "tagId,tag", tags, newline)
    chosen = np.sort(ids[np.argsort(-weights, kind="stable")[: counts["genome_movies"]]])
    path = out / "genome-scores.csv"
    write_lines(path, "movieId,tagId,relevance", [], newline)
    tag_ids = np.arange(1, n_tags + 1).tolist()
    per_chunk = max(1, CHUNK // n_tags)
    for lo in range(0, len(chosen), per_chunk):
        block = chosen[lo : lo + per_chunk]
        scores = rng.beta(0.5, 4.0, (len(block), n_tags))
        lines = [
            f"{m},{t},{s:.5f}"
            for m, row in zip(block.tolist(), scores.tolist(), strict=True)
            for t, s in zip(tag_ids, row, strict=True)
        ]
        write_lines(path, "", lines, newline, mode="a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, required=True, help="number of ratings")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--genome", action="store_true", help="also write the tag genome (ml-25m's shape only)"
    )
    parser.add_argument("--crlf", action="store_true", help="CRLF line endings")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ml-25m",
                        help="the release whose counts are scaled (default ml-25m)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    newline = "\r\n" if args.crlf else "\n"
    counts = generate(args.out, args.ratings, args.seed, args.genome, newline, args.shape)
    log.info("wrote %s in %.1fs: %s", args.out, time.perf_counter() - start, counts)


if __name__ == "__main__":
    main()
