"""The HTTP service, through a real uvicorn server on a loopback port.

The small default-preset checkpoint (the taste model, conftest's ``small_checkpoint``) is
served twice: with micro-batching (the default) and without, so that batched answers can be
compared with answers computed alone. MeLU's rating network (``small_rating_checkpoint``)
covers the cached first layer and retrieval; ml-latest-small (``latest_small_checkpoint``)
half stars and a model without user fields.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shlex
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from conftest import _small_run
from servers import Threaded, start_server, stop_server

from melu.checkpoint import CALIBRATION, Checkpoint, load, save
from melu.config import PRESETS
from melu.data import ColdStartData
from melu.errors import CheckpointError
from melu.fold_in import blend
from melu.objectives import candidates
from melu.ranking import RANK_GRID, batch_invariant, rank, rank_top
from melu.scoring import CatalogueScorer
from service.batcher import MicroBatcher, QueueFullError
from service.main import STATIC_DIR, create_app, example_curl
from service.recommender import Job, Pick, Recommender, TopK
from service.schemas import RecommendRequest
from service.settings import Settings
from service.worker import build

MAX_RATINGS = 100
# A support item's predicted ratings, clipped and rounded to the ranking grid, are within this
# of the model's own; the floor is compared well outside it.
FLOOR_SLACK = 1e-3


@pytest.fixture(scope="module")
def checkpoint_path(small_checkpoint: Path) -> Path:
    return small_checkpoint


@pytest.fixture(scope="module")
def ckpt(checkpoint_path: Path) -> Checkpoint:
    return load(checkpoint_path)


@pytest.fixture(scope="module")
def server(checkpoint_path: Path) -> Iterator[Threaded]:
    running = start_server(
        create_app(Settings(checkpoint=checkpoint_path, max_ratings=MAX_RATINGS, torch_threads=1))
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def model(server: Threaded) -> Recommender:
    """The served model, computing in this process (the server's own copy only encodes
    requests: its worker process computes)."""
    return build(server.app.state.settings, server.app.state.recommender.checkpoint)


@pytest.fixture(scope="module")
def unbatched(checkpoint_path: Path) -> Iterator[Threaded]:
    # Also the other place the model can compute: a thread of the server. The answers must
    # equal the worker process's (test_concurrent_equals_sequential).
    settings = Settings(
        checkpoint=checkpoint_path, micro_batching=False, model_process=False, torch_threads=1
    )
    running = start_server(create_app(settings))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def client(server: Threaded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def item_ids(ckpt: Checkpoint) -> list[int]:
    return [int(i) for i in ckpt.catalogue.item_ids[1:]]


@pytest.fixture(scope="module")
def recommendable_ids(ckpt: Checkpoint) -> list[int]:
    """The items a list holds by default: those with training ratings."""
    rows = torch.nonzero(ckpt.catalogue.recommendable).squeeze(1).tolist()
    return [int(ckpt.catalogue.item_ids[r]) for r in rows]


@pytest.fixture(scope="module")
def new_ids(ckpt: Checkpoint) -> list[int]:
    """Catalogue items without training ratings (new items): never in a default list."""
    mask = ~ckpt.catalogue.recommendable
    mask[0] = False
    return [int(ckpt.catalogue.item_ids[r]) for r in torch.nonzero(mask).squeeze(1).tolist()]


def _served_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``items`` in melu.ranking's order: above the floor first, by score, ties by item id
    (rows are in item-id order)."""
    return sorted(items, key=lambda it: (it["above_floor"] is False, -it["score"], it["item_id"]))


def _request(item_ids: list[int], seed: int, n: int = 5, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(item_ids, size=n, replace=False)
    genders, ages = ["F", "M"], [1, 18, 25, 35, 45, 50, 56]
    return {
        "ratings": [
            {"item_id": int(i), "rating": int(r)}
            for i, r in zip(chosen, rng.integers(1, 6, size=n), strict=True)
        ],
        "user": {
            "gender": genders[seed % 2],
            "age": ages[seed % len(ages)],
            "occupation": seed % 21,
            "zip": "55455",
        },
        **extra,
    }


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert isinstance(body["detail"], list) and body["detail"], body
    for entry in body["detail"]:
        assert set(entry) >= {"loc", "field", "msg", "type"}, entry
    return body["detail"]


# --- good requests ---------------------------------------------------------------------------


def test_recommend_top_k(client: httpx.Client, item_ids: list[int], ckpt: Checkpoint) -> None:
    payload = _request(item_ids, seed=1, k=10)
    response = client.post("/recommend", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert len(items) == 10
    rated = {r["item_id"] for r in payload["ratings"]}
    assert not rated & {it["item_id"] for it in items}
    # The floor: items predicted at or above the user's own mean first, each group by score.
    assert all(isinstance(it["above_floor"], bool) for it in items)
    assert items == _served_order(items)
    assert all(1.0 <= it["predicted_rating"] <= 5.0 for it in items)
    assert all(ckpt.catalogue.recommendable[ckpt.catalogue.rows[it["item_id"]]] for it in items)
    assert all(it["title"] for it in items)
    rows = [ckpt.catalogue.rows[it["item_id"]] for it in items]
    assert [it["year"] for it in items] == [ckpt.catalogue.year(r) for r in rows]
    assert [it["genres"] for it in items] == [ckpt.catalogue.genres_of(r) for r in rows]
    assert any(it["year"] for it in items) and any(it["genres"] for it in items)
    # The default model says which of the movies the user loved each recommendation follows.
    loved = {r["item_id"] for r in payload["ratings"] if r["rating"] >= 4}
    assert loved, payload
    assert all(it["because"]["item_id"] in loved for it in items)
    assert all(it["because"]["title"] and "year" in it["because"] for it in items)
    assert body["model"]["best_epoch"] == ckpt.metrics["best_epoch"]
    assert body["model"]["versions"]["melu"] == ckpt.versions["melu"]
    adaptation = body["adaptation"]
    assert adaptation["steps"] == ckpt.meta.local_steps
    assert math.isfinite(adaptation["support_loss_before"])
    assert math.isfinite(adaptation["support_loss_after"])
    assert adaptation["unknown_user_fields"] == []
    # The default preset reads no zip code: the request's zip is ignored, and said so.
    (ignored,) = adaptation["ignored_user_fields"]
    assert ignored["field"] == "zip" and "without zip" in ignored["reason"], ignored


def test_candidates_and_exclude_rated(client: httpx.Client, item_ids: list[int]) -> None:
    payload = _request(item_ids, seed=2)
    rated = [r["item_id"] for r in payload["ratings"]]
    others = [i for i in item_ids[100:130] if i not in rated][:20]
    candidates = rated + others
    body = client.post("/recommend", json={**payload, "candidates": candidates, "k": 50}).json()
    assert sorted(it["item_id"] for it in body["items"]) == sorted(others)

    body = client.post(
        "/recommend",
        json={**payload, "candidates": candidates, "k": 50, "exclude_rated": False},
    ).json()
    assert sorted(it["item_id"] for it in body["items"]) == sorted(candidates)

    # The ranking agrees with /score on the same items.
    top = client.post("/recommend", json={**payload, "candidates": others, "k": 5}).json()
    scored = client.post("/score", json={**payload, "item_ids": others}).json()["items"]
    assert top["items"] == _served_order(scored)[:5]


def test_default_pool_is_the_recommendable_items(
    client: httpx.Client, item_ids: list[int], recommendable_ids: list[int]
) -> None:
    """Without candidates a list is drawn from the recommendable items (minus the rated ones,
    unless exclude_rated is false): the same as naming exactly those as candidates."""
    rng = np.random.default_rng(3)
    chosen = rng.choice(recommendable_ids, size=5, replace=False)
    payload = {"ratings": [{"item_id": int(i), "rating": 4} for i in chosen], "k": 100}
    for exclude in (True, False):
        whole = client.post("/recommend", json={**payload, "exclude_rated": exclude})
        listed = client.post(
            "/recommend",
            json={**payload, "candidates": recommendable_ids[::-1], "exclude_rated": exclude},
        )
        assert whole.status_code == listed.status_code == 200
        assert whole.json()["items"] == listed.json()["items"]
        assert set(recommendable_ids) >= {it["item_id"] for it in whole.json()["items"]}
    assert len(recommendable_ids) < len(item_ids)


def test_new_items_are_served_when_named(
    client: httpx.Client, recommendable_ids: list[int], new_ids: list[int]
) -> None:
    """A new item (no training ratings) is never in a default list, but a request may name it
    among its candidates: it is then scored from its content (its own score, not a shared
    placeholder) and ranked with the others, as /score scores it."""
    assert len(new_ids) > 100
    payload = _request(recommendable_ids, seed=9, k=20)
    default = client.post("/recommend", json={**payload, "k": 100}).json()["items"]
    assert not {it["item_id"] for it in default} & set(new_ids)
    named = new_ids[:40] + recommendable_ids[200:210]
    response = client.post("/recommend", json={**payload, "candidates": named, "k": 50})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert sorted(it["item_id"] for it in items) == sorted(named)
    fresh = [it for it in items if it["item_id"] in set(new_ids)]
    assert len({it["score"] for it in fresh}) > 10, fresh[:5]
    assert len({it["predicted_rating"] for it in fresh}) > 10
    assert all(math.isfinite(it["score"]) and 1.0 <= it["predicted_rating"] <= 5.0 for it in fresh)
    support = {"ratings": payload["ratings"], "user": payload["user"]}
    scored = client.post("/score", json={**support, "item_ids": named}).json()["items"]
    assert items == _served_order(scored)


def test_score(client: httpx.Client, item_ids: list[int]) -> None:
    payload = _request(item_ids, seed=4)
    wanted = [item_ids[7], item_ids[3], item_ids[7], payload["ratings"][0]["item_id"]]
    response = client.post("/score", json={**payload, "item_ids": wanted})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [it["item_id"] for it in items] == wanted
    assert items[0]["score"] == items[2]["score"]
    assert items[0]["predicted_rating"] == items[2]["predicted_rating"]
    assert all(1.0 <= it["predicted_rating"] <= 5.0 for it in items)


def test_because_cites_only_a_loved_movie(client: httpx.Client, item_ids: list[int]) -> None:
    """A recommendation follows a movie the user rated 4 or 5, never a 1- or 3-star one; a
    movie the user rated cites nothing (it explained itself); without a loved movie there is
    no explanation. The same rule for /recommend and /score."""
    loved, hated, middling = item_ids[0], item_ids[1], item_ids[2]
    ratings = [
        {"item_id": loved, "rating": 5},
        {"item_id": hated, "rating": 1},
        {"item_id": middling, "rating": 3},
    ]
    rated = {loved, hated, middling}
    listed = client.post("/recommend", json={"ratings": ratings, "k": 50}).json()["items"]
    assert listed and all(it["because"]["item_id"] == loved for it in listed)
    with_rated = client.post(
        "/recommend",
        json={"ratings": ratings, "candidates": [*rated, *item_ids[10:20]], "k": 13,
              "exclude_rated": False},
    ).json()["items"]  # fmt: skip
    assert {it["item_id"] for it in with_rated} >= rated
    for it in with_rated:
        if it["item_id"] in rated:
            assert it["because"] is None, it
        else:
            assert it["because"]["item_id"] == loved, it
    scored = client.post(
        "/score", json={"ratings": ratings, "item_ids": [loved, middling, item_ids[30]]}
    ).json()["items"]
    assert [it["because"] for it in scored[:2]] == [None, None]
    assert scored[2]["because"]["item_id"] == loved
    # A 3-star rating shapes the watch model, yet explains nothing.
    lukewarm = [{"item_id": middling, "rating": 3}, {"item_id": hated, "rating": 2}]
    listed = client.post("/recommend", json={"ratings": lukewarm, "k": 20}).json()["items"]
    assert listed and all(it["because"] is None for it in listed)


def test_user_values_and_unseen_zip(client: httpx.Client, item_ids: list[int]) -> None:
    payload = _request(item_ids, seed=5)
    as_ints = client.post("/recommend", json=payload).json()
    user = payload["user"]
    as_strings = {
        **payload,
        "user": {**user, "age": str(user["age"]), "occupation": str(user["occupation"])},
    }
    assert client.post("/recommend", json=as_strings).json()["items"] == as_ints["items"]

    # The default preset reads no zip: any zip is ignored, and the answer is the same.
    unseen = {**payload, "user": {**payload["user"], "zip": "00000-never"}}
    body = client.post("/recommend", json=unseen).json()
    assert body["adaptation"]["unknown_user_fields"] == []
    assert [f["field"] for f in body["adaptation"]["ignored_user_fields"]] == ["zip"]
    assert body["items"] == as_ints["items"]
    no_user = {"ratings": payload["ratings"]}
    assert client.post("/recommend", json=no_user).status_code == 200


def test_unseen_zip_of_a_model_that_reads_it(
    tmp_path_factory: pytest.TempPathFactory, melu_data: ColdStartData
) -> None:
    """The 'melu' preset reads the zip code: an unseen one is accepted and reported as
    unknown (mapped to the unknown embedding), not ignored."""
    preset = PRESETS["melu"]
    path = _small_run(tmp_path_factory.mktemp("melu-preset"), melu_data, preset.model, preset.meta)
    rec = Recommender(load(path), torch.device("cpu"), None, compute=False)
    assert rec.user_fields == ("gender", "age", "occupation", "zip")
    ids = [int(i) for i in rec.item_ids[1:3]]
    request = RecommendRequest.model_validate(
        {"ratings": [{"item_id": i, "rating": 4} for i in ids], "user": {"zip": "00000-never"}}
    )
    job = rec.recommend_job(request, Settings(checkpoint=path))
    assert job.unknown_user_fields == ("zip",) and job.ignored_user_fields == ()


def test_items_search(client: httpx.Client, ckpt: Checkpoint) -> None:
    body = client.get("/items", params={"query": "STAR wars", "limit": 3}).json()
    assert 1 <= len(body["items"]) <= 3
    assert body["total"] >= len(body["items"])
    assert all("star wars" in it["title"].lower() for it in body["items"])
    # Each match with its year and genres: the two "Titanic" are told apart.
    titanic = client.get("/items", params={"query": "titanic"}).json()["items"]
    exact = [(it["item_id"], it["year"]) for it in titanic if it["title"] == "Titanic"]
    assert exact == [(1721, 1997), (3404, 1953)]  # exact titles first, by item id
    for it in titanic:
        row = ckpt.catalogue.rows[it["item_id"]]
        assert it["year"] == ckpt.catalogue.year(row) and it["genres"] == ckpt.catalogue.genres_of(
            row
        )
    assert "Romance" in titanic[0]["genres"]
    # A title written with its year, as the page shows it, finds that film alone; without the
    # year it is found too.
    for query in ("Star Wars (1977)", "star wars  (1977) ", "Titanic (1997)"):
        found = client.get("/items", params={"query": query}).json()
        assert found["total"] == 1, (query, found)
    assert (
        client.get("/items", params={"query": "Star Wars (1977)"}).json()["items"][0]["title"]
        == "Star Wars: Episode IV - A New Hope"
    )
    assert (
        client.get("/items", params={"query": "Titanic (1997)"}).json()["items"][0]["item_id"]
        == 1721
    )
    assert 260 in [it["item_id"] for it in client.get("/items", params={"query": "star wars"})
                   .json()["items"]]  # fmt: skip
    assert client.get("/items", params={"query": "Titanic (1990)"}).json()["items"] == []
    assert len(client.get("/items").json()["items"]) == 20
    assert client.get("/items", params={"query": "zzzz-no-such-film"}).json()["items"] == []
    for limit in (0, 101):
        response = client.get("/items", params={"limit": limit})
        assert response.status_code == 422
        assert _errors(response)[0]["field"] == "limit"


def test_health_model_docs(client: httpx.Client, ckpt: Checkpoint) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["items"] == len(ckpt.catalogue)
    model = client.get("/model").json()
    assert model["items"] == len(ckpt.catalogue)
    assert model["parameters_sha256_now"] == model["info"]["parameters_sha256"]
    assert model["configs"]["meta"]["local_steps"] == ckpt.meta.local_steps
    assert model["user_values"]["gender"] == ["F", "M"]
    # Age and occupation are codes: their meanings are listed beside them; gender is not.
    meanings = model["user_value_meanings"]
    assert sorted(meanings) == ["age", "occupation"]
    assert meanings["age"]["25"] == "25-34" and meanings["occupation"]["12"] == "programmer"
    assert list(meanings["occupation"]) == model["user_values"]["occupation"]
    assert model["user_fields"] == ["gender", "age", "occupation"]  # no zip: see the preset
    assert model["precomputed_item_features"] is True
    assert model["objective"] == "taste" and model["rank_floor"] is True
    assert model["recommendable_items"] == int(ckpt.catalogue.recommendable.sum())
    assert model["rating_scale"] == {
        "low": 1.0,
        "high": 5.0,
        "step": 1.0,
        "values": [1.0, 2.0, 3.0, 4.0, 5.0],
        "text": "1..5 in steps of 1",
    }
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/score", "/items", "/health", "/model"} <= set(paths)


def test_static_page(client: httpx.Client) -> None:
    response = client.get("/")
    if (STATIC_DIR / "index.html").is_file():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
    else:
        assert response.status_code == 404


def test_startup_example_works(client: httpx.Client, server: Threaded) -> None:
    command = shlex.split(example_curl(server.url, server.app.state.recommender))
    body = json.loads(command[command.index("-d") + 1])
    assert client.post("/recommend", json=body).status_code == 200


def test_deterministic(client: httpx.Client, item_ids: list[int]) -> None:
    payload = _request(item_ids, seed=6, k=20)
    first = client.post("/recommend", json=payload).json()
    second = client.post("/recommend", json=payload).json()
    assert first == second


# --- bad requests ----------------------------------------------------------------------------


def _bad_cases(ids: list[int]) -> list[tuple[str, Any, str, str]]:
    """(name, payload, field, words in the message) of requests that must give 422."""
    ok = [{"item_id": ids[0], "rating": 4}, {"item_id": ids[1], "rating": 2}]
    many = [{"item_id": i, "rating": 3} for i in ids[: MAX_RATINGS + 1]]
    return [
        (
            "unknown item",
            {"ratings": [*ok, {"item_id": 99_999_999, "rating": 3}]},
            "ratings[2].item_id",
            "99999999",
        ),
        ("rating high", {"ratings": [{"item_id": ids[0], "rating": 6}]}, "ratings[0].rating", "5"),
        (
            "rating low",
            {"ratings": [{"item_id": ids[0], "rating": 0.5}]},
            "ratings[0].rating",
            "0.5 is not on this model's scale 1..5 in steps of 1",
        ),
        (
            "half star",
            {"ratings": [*ok, {"item_id": ids[2], "rating": 4.5}]},
            "ratings[2].rating",
            "4.5 is not on this model's scale 1..5 in steps of 1",
        ),
        (
            "rating string",
            {"ratings": [{"item_id": ids[0], "rating": "5"}]},
            "ratings[0].rating",
            "number",
        ),
        ("empty ratings", {"ratings": []}, "ratings", "at least 1"),
        ("missing ratings", {"k": 3}, "ratings", "required"),
        (
            "duplicate",
            {"ratings": [*ok, {"item_id": ids[0], "rating": 1}]},
            "ratings[2].item_id",
            "duplicate",
        ),
        ("too many", {"ratings": many}, "ratings", f"at most {MAX_RATINGS}"),
        ("k zero", {"ratings": ok, "k": 0}, "k", "greater than or equal to 1"),
        ("k large", {"ratings": ok, "k": 101}, "k", "less than or equal to 100"),
        ("gender", {"ratings": ok, "user": {"gender": "X"}}, "user.gender", "allowed: F, M"),
        (
            "age",
            {"ratings": ok, "user": {"age": 30}},
            "user.age",
            "allowed: MovieLens age codes 1 (under 18), 18 (18-24), 25 (25-34), 35 (35-44), "
            "45 (45-49), 50 (50-55), 56 (56+)",
        ),
        (
            "occupation",
            {"ratings": ok, "user": {"occupation": 99}},
            "user.occupation",
            "allowed: MovieLens occupation codes 0 (other or not specified), 1 (academic/educator)"
            ", 2 (artist)",
        ),
        ("age float", {"ratings": ok, "user": {"age": 2.5}}, "user.age", "integer or a string"),
        ("user typo", {"ratings": ok, "user": {"sex": "F"}}, "user.sex", "not permitted"),
        ("top-level typo", {"ratings": ok, "kk": 3}, "kk", "not permitted"),
        (
            "unknown candidate",
            {"ratings": ok, "candidates": [ids[5], -4]},
            "candidates[1]",
            "unknown item id -4",
        ),
        ("empty candidates", {"ratings": ok, "candidates": []}, "candidates", "at least 1"),
        ("not an object", [1, 2], "body", "dictionary"),
    ]


def test_bad_inputs(client: httpx.Client, item_ids: list[int]) -> None:
    for name, payload, field, words in _bad_cases(item_ids):
        response = client.post("/recommend", json=payload)
        assert response.status_code == 422, (name, response.text)
        errors = _errors(response)
        match = [e for e in errors if e["field"] == field]
        assert match, (name, errors)
        assert words in match[0]["msg"] and match[0]["msg"].startswith(field), (name, match)


def test_bad_score_inputs(client: httpx.Client, item_ids: list[int]) -> None:
    ok = [{"item_id": item_ids[0], "rating": 4}]
    for payload, field in [
        ({"ratings": ok, "item_ids": []}, "item_ids"),
        ({"ratings": ok, "item_ids": [item_ids[1], 0]}, "item_ids[1]"),
        ({"ratings": ok}, "item_ids"),
        ({"ratings": [], "item_ids": [item_ids[1]]}, "ratings"),
    ]:
        response = client.post("/score", json=payload)
        assert response.status_code == 422, response.text
        assert field in [e["field"] for e in _errors(response)]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_rating(client: httpx.Client, item_ids: list[int], token: str) -> None:
    # Python's json module reads these tokens; they must not reach the model (or a 500).
    raw = f'{{"ratings": [{{"item_id": {item_ids[0]}, "rating": {token}}}]}}'
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert _errors(response)[0]["field"] == "ratings[0].rating"


def test_malformed_body(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    response = client.post("/recommend", content='{"ratings": [', headers=headers)
    assert response.status_code == 422
    assert "invalid JSON" in _errors(response)[0]["msg"]
    response = client.post("/recommend", headers=headers)
    assert response.status_code == 422
    assert _errors(response)[0]["field"] == "body"
    deep = '{"ratings": ' + "[" * 20_000 + "]" * 20_000 + "}"
    response = client.post("/recommend", content=deep, headers=headers)
    assert response.status_code == 400
    assert _errors(response)[0]["field"] == "body"
    response = client.post("/recommend", content=b'{"ratings": "\xff"}', headers=headers)
    assert 400 <= response.status_code < 500


def test_wrong_content_type(client: httpx.Client, item_ids: list[int]) -> None:
    raw = json.dumps({"ratings": [{"item_id": item_ids[0], "rating": 4}]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = client.post("/recommend", content=raw, headers={"content-type": content_type})
        assert response.status_code == 415, response.text
        assert "application/json" in _errors(response)[0]["msg"]
    ok = client.post(
        "/recommend", content=raw, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200


def test_body_too_large(server: Threaded, item_ids: list[int]) -> None:
    limit = server.app.state.settings.max_body_bytes
    big = json.dumps({"ratings": [{"item_id": item_ids[0], "rating": 4}], "pad": "x" * limit})
    headers = {"content-type": "application/json"}
    # With a Content-Length, and streamed in chunks without one (the guard counts the bytes).
    response = httpx.post(f"{server.url}/recommend", content=big, headers=headers, timeout=30)
    assert response.status_code == 413
    assert str(limit) in _errors(response)[0]["msg"]

    def chunks() -> Iterator[bytes]:
        data = big.encode()
        for start in range(0, len(data), 16_384):
            yield data[start : start + 16_384]

    response = httpx.post(f"{server.url}/recommend", content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 413
    # The server is still fine afterwards.
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_unknown_route(client: httpx.Client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert _errors(response)[0]["msg"] == "Not Found"


# --- the model is never changed; batching changes nothing ------------------------------------


def test_meta_parameters_unchanged(
    server: Threaded, client: httpx.Client, item_ids: list[int]
) -> None:
    # Hashed where the model computes (the worker process): its weights after 100 requests.
    before = client.get("/model").json()["parameters_sha256_now"]

    async def hundred() -> list[int]:
        limits = httpx.Limits(max_connections=10)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            calls = []
            for seed in range(100):
                payload = _request(item_ids, seed=100 + seed, n=1 + seed % 20)
                if seed % 4 == 0:
                    calls.append(c.post("/score", json={**payload, "item_ids": item_ids[:50]}))
                else:
                    calls.append(c.post("/recommend", json=payload))
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(hundred()) == [200] * 100
    model = client.get("/model").json()
    assert model["parameters_sha256_now"] == before == model["info"]["parameters_sha256"]


async def _concurrently(url: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        responses = await asyncio.gather(*(c.post("/recommend", json=p) for p in payloads))
    assert all(r.status_code == 200 for r in responses)
    return [r.json() for r in responses]


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same list; scores equal but for a value within float noise (~1e-7) of a boundary
    of the ranking grid, which moves by one step (see test_batching_never_changes_order: the
    taste model's 320 scores here moved once in one run)."""
    assert [it["item_id"] for it in a["items"]] == [it["item_id"] for it in b["items"]]
    for x, y in zip(a["items"], b["items"], strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1.0 / RANK_GRID + 1e-9)
    for key in ("support_loss_before", "support_loss_after"):
        # Float32 noise is relative: a step that overshoots on a tiny test model leaves a loss
        # near 100, where batch shapes differ by ~2e-5.
        assert a["adaptation"][key] == pytest.approx(b["adaptation"][key], rel=1e-6, abs=1e-5)


def test_concurrent_equals_sequential(
    server: Threaded, unbatched: Threaded, item_ids: list[int]
) -> None:
    # Different support sizes, so batched requests are padded and masked.
    payloads = [_request(item_ids, seed=500 + i, n=1 + (i * 7) % 30, k=10) for i in range(32)]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        alone = [c.post("/recommend", json=p).json() for p in payloads]
    before = server.health()
    together = asyncio.run(_concurrently(server.url, payloads))
    after = server.health()
    for a, b in zip(alone, together, strict=True):
        _assert_same(a, b)
    batches = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == 32
    assert batches < 32, "concurrent requests were never batched"

    # Without micro-batching: every request alone, and the same answers.
    separate = asyncio.run(_concurrently(unbatched.url, payloads))
    health = unbatched.health()
    assert health["micro_batching"] is False and health["max_batch"] == 1
    for a, b in zip(alone, separate, strict=True):
        _assert_same(a, b)


def test_batched_run_equals_alone(model: Recommender, item_ids: list[int]) -> None:
    """The recommender itself: one padded batch gives each job's answer alone."""
    rec = model
    rng = np.random.default_rng(0)
    jobs = []
    for n in (1, 3, 17, 40):
        rows = tuple(int(r) for r in rng.choice(np.arange(1, len(rec) + 1), n, replace=False))
        ratings = tuple(float(r) for r in rng.integers(1, 6, n))
        jobs.append(Job((1, 2, 3, 0), rows, ratings, TopK(25, None)))
    together = rec.run(jobs)
    for job, batched in zip(jobs, together, strict=True):
        (single,) = rec.run([job])
        assert [it.row for it in single.items] == [it.row for it in batched.items]
        np.testing.assert_allclose(
            [it.score for it in single.items], [it.score for it in batched.items], atol=1e-5
        )
        assert [it.because for it in single.items] == [it.because for it in batched.items]
        assert single.loss_after == pytest.approx(batched.loss_after, abs=1e-5)


def test_batcher_sizes_and_errors() -> None:
    seen: list[int] = []

    def process(jobs: Any) -> list[int]:
        seen.append(len(jobs))
        if any(j < 0 for j in jobs):
            raise ValueError("negative")
        return [2 * j for j in jobs]

    async def scenario(max_size: int) -> list[Any]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=max_size, max_wait_s=0.05)
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(j) for j in range(10)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    assert asyncio.run(scenario(4)) == [2 * j for j in range(10)]
    assert max(seen) == 4 and sum(seen) == 10
    seen.clear()
    assert asyncio.run(scenario(1)) == [2 * j for j in range(10)]
    assert seen == [1] * 10

    async def failing() -> list[Any]:
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait_s=0.05)
        await batcher.start()
        try:
            return list(
                await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
            )
        finally:
            await batcher.stop()

    results = asyncio.run(failing())
    assert all(isinstance(r, ValueError) for r in results)


def test_missing_checkpoint_fails_startup(tmp_path: Path) -> None:
    app = create_app(Settings(checkpoint=tmp_path / "missing.pt"))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(CheckpointError, match="not found"):
        asyncio.run(start())


def test_ranking_ties_by_item_id(model: Recommender) -> None:
    rec = model
    n = len(rec)
    rng = np.random.default_rng(1)
    # Few distinct values, so that many items tie, also across the k-th place.
    pred = torch.from_numpy(rng.integers(0, 4, n + 1).astype(np.float32))
    by_id = sorted(range(1, n + 1), key=lambda r: rec.item_ids[r])
    assert by_id == list(range(1, n + 1))  # rows are in item-id order
    expected = sorted(by_id, key=lambda r: -float(pred[r]))  # stable: ties by item id
    allowed = torch.ones(n + 1, dtype=torch.bool)
    allowed[0] = False
    for k in (1, 10, 500, n, n + 5):
        got = rec._select(pred, TopK(k, None), allowed)
        assert got == expected[:k]
    without = allowed.clone()
    without[list(expected[:3])] = False
    assert rec._select(pred, TopK(5, None), without) == expected[3:8]
    pool = tuple(sorted(expected[100:140]))
    got = rec._select(pred, TopK(7, pool), allowed)
    assert got == [r for r in expected if r in set(pool)][:7]
    # The floor: rows above it first, each tier by score, ties by item id.
    above = torch.from_numpy(rng.random(n + 1) < 0.3)
    tiered = sorted(expected, key=lambda r: not bool(above[r]))
    for k in (1, 10, 500, n):
        assert rec._select(pred, TopK(k, None), allowed, above) == tiered[:k]


def test_encoder_adapting_checkpoint_falls_back(small_rating_checkpoint: Path) -> None:
    """MeLU's network without precomputed item features (the encoder adapts): the answers
    are the same when nothing adapts (0 steps), and the path works with steps."""
    ckpt = load(small_rating_checkpoint)
    all_adapt = replace(ckpt, meta=replace(ckpt.meta, adapt="all"))
    cpu = torch.device("cpu")
    rows = (3, 30, 300)
    job = Job((1, 1, 1, 0), rows, (5.0, 1.0, 4.0), TopK(20, None))
    head = Recommender(ckpt, cpu, local_steps=0).run([job])[0]
    fallback = Recommender(all_adapt, cpu, local_steps=0)
    assert fallback.scorer is not None and fallback.scorer.features is None
    (full,) = fallback.run([job])
    assert [it.row for it in full.items] == [it.row for it in head.items]
    np.testing.assert_allclose(
        [it.score for it in full.items], [it.score for it in head.items], atol=1e-5
    )
    adapted = Recommender(all_adapt, cpu, local_steps=2).run([job, job])
    assert all(len(o.items) == 20 and math.isfinite(o.loss_after) for o in adapted)


# --- hardening: nulls, strictness, one report of every problem, headers ---------------------


def test_null_user_fields(client: httpx.Client, item_ids: list[int]) -> None:
    payload = _request(item_ids, seed=7)
    base = client.post("/recommend", json={**payload, "user": {}}).json()
    for field in ("gender", "age", "occupation", "zip"):
        for path in ("/recommend", "/score"):
            extra = {"item_ids": item_ids[:3]} if path == "/score" else {}
            response = client.post(path, json={**payload, **extra, "user": {field: None}})
            assert response.status_code == 200, (field, path, response.text)
        # null is the same as a missing field
        again = client.post("/recommend", json={**payload, "user": {field: None}}).json()
        assert again["items"] == base["items"]


def test_strict_flags_and_numbers(client: httpx.Client, item_ids: list[int]) -> None:
    ok = {"ratings": [{"item_id": item_ids[0], "rating": 4}]}
    for value in ("yes", "off", 0, 1, "true"):
        response = client.post("/recommend", json={**ok, "exclude_rated": value})
        assert response.status_code == 422, (value, response.text)
        assert _errors(response)[0]["field"] == "exclude_rated"
    for limit in ("20.0", "2e1", "twenty", " 20"):
        response = client.get("/items", params={"limit": limit})
        assert response.status_code == 422, (limit, response.text)
        assert _errors(response)[0]["field"] == "limit"
    # A number of 5000 digits: Python's JSON reader refuses it (int digit limit); it must be
    # reported on its field, not as an unparsable body.
    raw = json.dumps(ok)[:-1] + ', "k": ' + "9" * 5000 + "}"
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in _errors(response)] == ["k"]
    long_age = client.post("/recommend", json={**ok, "user": {"age": "1" * 17}})
    assert long_age.status_code == 422
    (error,) = _errors(long_age)
    assert error["field"] == "user.age" and "at most 16 characters" in error["msg"], error


def test_every_problem_at_once(client: httpx.Client, item_ids: list[int]) -> None:
    payload = {"ratings": [{"item_id": 99_999_999, "rating": 3}], "k": 0}
    response = client.post("/recommend", json=payload)
    assert response.status_code == 422
    assert {e["field"] for e in _errors(response)} == {"k", "ratings[0].item_id"}


def test_head_openapi_and_headers(client: httpx.Client) -> None:
    head = client.head("/health")
    assert head.status_code == 200 and head.content == b""
    spec = client.get("/openapi.json").json()
    for path in ("/recommend", "/score"):
        assert {"400", "413", "415", "422", "503"} <= set(spec["paths"][path]["post"]["responses"])
    page = client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # /static used to redirect to an absolute URL built from the client's Host header.
    reflected = client.get("/static", headers={"host": "evil.example"}, follow_redirects=False)
    assert "evil.example" not in reflected.headers.get("location", "")
    assert reflected.status_code == 404


def test_docs_work_offline(client: httpx.Client) -> None:
    html = client.get("/docs").text
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert len(re.findall(r"/docs/assets/", html)) >= 2


def _differences(a: list[Any], b: list[Any]) -> tuple[int, int]:
    """How many positions of two top-k lists hold different items, and how many items in both
    have different scores; fails unless those scores differ by one step of the ranking grid
    at most (the float noise of ~1e-7 between batch shapes moves a score across a grid
    boundary, rarely)."""
    step = 1.0 / RANK_GRID
    scores_b = {it.row: it.score for it in b}
    changed = 0
    for it in a:
        if it.row in scores_b:
            assert abs(it.score - scores_b[it.row]) <= step + 1e-9, (it, scores_b[it.row])
            changed += it.score != scores_b[it.row]
    return sum(x.row != y.row for x, y in zip(a, b, strict=True)), changed


def test_batching_never_changes_order(model: Recommender) -> None:
    """Scores differ by ~1e-6 between a padded batch and a solo run; ranking on the
    batch-invariant grid keeps items in the same order and with the same scores, except a
    value that lies within that noise of a grid boundary: measured 0-4 of the 32000 scores
    compared here run alone, up to ~12 after the rest of this module has run (CI: 8 positions
    moved). Since stop 36 the genre preference carries one vector's noise (~2e-6 here) to
    every film of a genre at once, so more scores sit on a boundary: 86 of the 32000 one grid
    step apart, 21 of the 64 lists identical to the last digit, no position moved. Without the
    grid nearly every score would differ."""
    rec = model
    rng = np.random.default_rng(11)
    n = len(rec)
    jobs = []
    for _ in range(32):
        m = int(rng.integers(1, 60))
        rows = tuple(int(r) for r in rng.choice(np.arange(1, n + 1), m, replace=False))
        ratings = tuple(float(r) for r in rng.integers(1, 6, m))
        jobs.append(Job((1, 2, 3, 0), rows, ratings, TopK(500, None)))
    together = rec.run(jobs)
    halves = rec.run(jobs[:16]) + rec.run(jobs[16:])
    identical, moved, changed = 0, 0, 0
    for job, batched, half in zip(jobs, together, halves, strict=True):
        (alone,) = rec.run([job])
        for other in (batched, half):
            identical += alone.items == other.items
            positions, scores = _differences(alone.items, other.items)
            moved += positions
            changed += scores
    # 64 comparisons of 500-item lists: the order holds, and a score crosses a grid boundary
    # in 0.5% at most (each by one step: _differences).
    assert moved <= 32 and changed <= 160 and identical >= 16, (changed, moved, identical)


def test_cached_item_side_equals_the_model(small_rating_checkpoint: Path) -> None:
    """melu.scoring.CachedItemSide reimplements the closed-form catalogue scoring with the
    item side of the first layer cached: it must give melu's own scores."""
    rec = Recommender(load(small_rating_checkpoint), torch.device("cpu"), None)
    assert rec.scorer is not None
    cached, features = rec.scorer.cached, rec.scorer.features
    assert cached is not None and features is not None
    rng = np.random.default_rng(3)
    users = torch.tensor([[1, 2, 3, 0], [2, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.long)
    rows = torch.from_numpy(rng.choice(np.arange(1, len(rec) + 1), (3, 7), replace=False))
    ratings = torch.from_numpy(rng.integers(1, 6, (3, 7)).astype(np.float32))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 4:] = False
    with torch.no_grad():
        adaptation = rec.learner.adapt(users, rec.table[rows], ratings, mask, steps=rec.steps)
        assert cached.applies(adaptation)
        expected = rec.learner.predict_from_features(adaptation, users, features)
        got = cached.scores(adaptation)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cluster_retrieval(small_rating_checkpoint: Path) -> None:
    """MELU_RETRIEVAL_FRACTION: only the best clusters' items are scored. Named rows (/score
    ids, candidates) keep their exact scores, batching changes nothing, and the top items are
    mostly those of the exhaustive ranking."""
    cpu = torch.device("cpu")
    ckpt = load(small_rating_checkpoint)
    exact = Recommender(ckpt, cpu, None)
    approx = Recommender(ckpt, cpu, None, retrieval_fraction=0.1)
    assert approx.retrieval is not None and approx.retrieval.want == 1000
    rng = np.random.default_rng(5)
    n = len(exact)
    jobs = []
    for _ in range(12):
        rows = tuple(int(r) for r in rng.choice(np.arange(1, n + 1), 5, replace=False))
        ratings = tuple(float(r) for r in rng.integers(1, 6, 5))
        jobs.append(Job((1, 2, 3, 0), rows, ratings, TopK(10, None)))
    picked = Pick(tuple(int(r) for r in rng.choice(np.arange(1, n + 1), 50, replace=False)))
    jobs.append(Job((2, 1, 0, 0), (3, 30, 300), (5.0, 1.0, 4.0), picked))
    together = approx.run(jobs)
    overlap = []
    for job, batched, full in zip(jobs, together, exact.run(jobs), strict=True):
        assert approx.run([job])[0].items == batched.items
        if isinstance(job.select, Pick):
            assert batched.items == full.items  # exact scores for named rows
            continue
        assert len(batched.items) == 10
        assert all(1.0 <= it.rating <= 5.0 for it in batched.items)
        overlap.append(len({it.row for it in batched.items} & {it.row for it in full.items}) / 10)
    assert np.mean(overlap) >= 0.7, overlap


def test_onboarding_endpoint(client: httpx.Client, ckpt: Checkpoint, tmp_path: Path) -> None:
    # The small checkpoint was trained without the CLI: no lists, a clear 404.
    missing = client.get("/onboarding")
    assert missing.status_code == 404
    assert "melu onboarding" in missing.json()["detail"][0]["msg"]
    assert client.get("/model").json()["onboarding"] == []  # the page asks for none
    bad = client.get("/onboarding", params={"strategy": "hype", "n": 0})
    assert bad.status_code == 422
    assert {e["field"] for e in _errors(bad)} == {"strategy", "n"}

    ids = [int(i) for i in ckpt.catalogue.item_ids[1:60]]
    stored = replace(ckpt, onboarding={"lists": {s: ids[::-1] if s == "diverse" else ids
                                                 for s in ("diverse", "evidence", "popularity",
                                                           "entropy")}, "info": {}})  # fmt: skip
    path = tmp_path / "with-lists.pt"
    save(path, stored)
    running = start_server(create_app(Settings(checkpoint=path)))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            strategies = ["diverse", "entropy", "evidence", "popularity"]
            assert c.get("/model").json()["onboarding"] == strategies
            body = c.get("/onboarding", params={"n": 5}).json()
            assert body["strategy"] == "diverse" and body["total"] == len(ids)
            assert [it["item_id"] for it in body["items"]] == ids[::-1][:5]
            row = ckpt.catalogue.rows[ids[-1]]
            assert body["items"][0]["year"] == ckpt.catalogue.year(row)
            assert body["items"][0]["genres"] == ckpt.catalogue.genres_of(row)
            popular = c.get("/onboarding", params={"strategy": "popularity", "n": 200}).json()
            assert [it["item_id"] for it in popular["items"]] == ids
    finally:
        stop_server(running)


def test_batcher_counts_every_refusal() -> None:
    """A refusal before submitting (the middleware's, which skips parsing the body) and one
    inside submit are both counted: /health's ``refused`` must equal the 503s clients saw."""
    gate = threading.Event()

    def process(jobs: Any) -> list[int]:
        gate.wait(5.0)
        return list(jobs)

    async def scenario() -> tuple[bool, int, int, bool]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            process, max_size=1, max_wait_s=0.0, max_queue=2
        )
        await batcher.start()
        try:
            running = [asyncio.ensure_future(batcher.submit(j)) for j in range(2)]
            await asyncio.sleep(0)
            early = batcher.refuse_if_full()
            with pytest.raises(QueueFullError):
                await batcher.submit(9)
            gate.set()
            done = await asyncio.gather(*running)
            return early, batcher.refused, sum(done), batcher.refuse_if_full()
        finally:
            gate.set()
            await batcher.stop()

    early, refused, total, after = asyncio.run(scenario())
    assert early and not after
    assert refused == 2 and total == 1


# --- one scoring path; the floor; the checkpoint's scale and user fields ----------------------


def test_service_lists_are_the_scorers_ranking(model: Recommender, ckpt: Checkpoint) -> None:
    """What evaluation ranks, melu.ranking.rank of the CatalogueScorer's scores over
    objectives.candidates (the recommendable rows minus the support) with the floor, is what
    the service lists, for a padded batch of users without user fields."""
    rng = np.random.default_rng(17)
    recommendable = ckpt.catalogue.recommendable
    pool = torch.nonzero(recommendable).squeeze(1).numpy()
    sizes = (1, 3, 5, 12, 20)
    jobs, unknown = [], tuple(ckpt.encoder.encode_user({}))
    for n in sizes:
        rows = tuple(int(r) for r in rng.choice(pool, n, replace=False))
        ratings = tuple(float(r) for r in rng.integers(1, 6, n))
        jobs.append(Job(unknown, rows, ratings, TopK(20, None)))
    served = [[it.row for it in outcome.items] for outcome in model.run(jobs)]

    width = max(sizes)
    rows_spt = torch.tensor([list(j.rows) + [0] * (width - len(j.rows)) for j in jobs])
    y_spt = torch.tensor([list(j.ratings) + [0.0] * (width - len(j.ratings)) for j in jobs])
    mask = rows_spt > 0
    users = torch.tensor([list(unknown)] * len(jobs), dtype=torch.long)
    scorer = CatalogueScorer(ckpt.learner("cpu"), ckpt.catalogue.table, recommendable)
    with torch.no_grad():
        state = scorer.adapt(users, rows_spt, y_spt, mask)
        out = scorer.scores(state, users)
    assert out.above_floor is not None
    allowed = candidates(recommendable, rows_spt, mask)
    order, _ = rank(batch_invariant(out.rank), allowed, out.above_floor)
    for i, listed in enumerate(served):
        assert listed == order[i, :20].tolist(), i
        assert not set(listed) & set(jobs[i].rows)


def test_floor_keeps_lists_above_the_users_mean(
    client: httpx.Client,
    ckpt: Checkpoint,
    recommendable_ids: list[int],
    tmp_path: Path,
) -> None:
    """No listed item is predicted below the user's own mean while enough items clear it. The
    mean is the model's (the ratings given, shrunk towards the population's: the answer's
    adaptation.user_mean, checked here against the ratings); /score of every candidate shows
    which clear it. The one-epoch model's ratings sit above or below a whole user's floor
    (its recalibration, fitted on 32 users, lifts them above every mean here), so the
    floor's effect is shown on the same checkpoint with its recalibration lines shifted to put
    the first user's floor at the median of their predicted ratings, served: there ranking by
    score alone would have listed films below the floor."""
    floored_users(client, recommendable_ids)
    ratings = seeded_users(recommendable_ids)[0]
    answer = client.post("/recommend", json={"ratings": ratings, "k": 10}).json()
    pool = [i for i in recommendable_ids if i not in {r["item_id"] for r in ratings}]
    every = client.post("/score", json={"ratings": ratings, "item_ids": pool}).json()["items"]
    shift = answer["adaptation"]["user_mean"] - float(
        np.median([it["predicted_rating"] for it in every])
    )
    lines = ckpt.state[CALIBRATION].clone()
    lines[:, 0] += shift
    path = tmp_path / "floor-at-the-median.pt"
    save(path, replace(ckpt, state={**ckpt.state, CALIBRATION: lines}))
    running = start_server(create_app(Settings(checkpoint=path, torch_threads=1)))
    try:
        with httpx.Client(base_url=running.url, timeout=60) as shifted:
            assert floored_users(shifted, recommendable_ids) >= 1
    finally:
        stop_server(running)


def seeded_users(recommendable_ids: list[int]) -> list[list[dict[str, int]]]:
    """Six users' seeded ratings: six recommendable films each, rated 1-5 at random."""
    rng = np.random.default_rng(21)
    users = []
    for _ in range(6):
        chosen = [int(i) for i in rng.choice(recommendable_ids, size=6, replace=False)]
        users.append(
            [
                {"item_id": i, "rating": int(r)}
                for i, r in zip(chosen, rng.integers(1, 6, size=6), strict=True)
            ]
        )
    return users


def floored_users(client: httpx.Client, recommendable_ids: list[int]) -> int:
    """The six :func:`seeded_users`' lists checked against their floors; how many of them ranking by
    score alone would have listed below it. A user with at least 10 candidates above the floor
    gets only those; one with fewer (a barely trained model's ratings can leave a high mean
    almost alone) gets all of them first, best score first, then the others by score."""
    mattered = 0
    for ratings in seeded_users(recommendable_ids):
        chosen = [r["item_id"] for r in ratings]
        answer = client.post("/recommend", json={"ratings": ratings, "k": 10}).json()
        mean, listed = answer["adaptation"]["user_mean"], answer["items"]
        given = float(np.mean([r["rating"] for r in ratings]))
        # Between the population's mean and the user's own, nearer the user's.
        assert min(given, 3.0) - 1e-3 <= mean <= max(given, 4.2) + 1e-3
        pool = [i for i in recommendable_ids if i not in set(chosen)]
        every = client.post("/score", json={"ratings": ratings, "item_ids": pool}).json()["items"]
        clear = sum(it["above_floor"] for it in every)
        # The floor is the user's mean: what is well above it clears it, what is well below
        # does not.
        assert all(it["above_floor"] for it in every if it["predicted_rating"] > mean + FLOOR_SLACK)
        assert not any(
            it["above_floor"] for it in every if it["predicted_rating"] < mean - FLOOR_SLACK
        )
        assert len(listed) == 10
        # The films above the floor first, each tier by descending score; none left out that
        # scores above a listed one of its tier.
        tiers = [it["above_floor"] for it in listed]
        assert tiers == sorted(tiers, reverse=True) and sum(tiers) == min(clear, 10)
        ids = {it["item_id"] for it in listed}
        for tier in (True, False):
            shown = [it["score"] for it in listed if it["above_floor"] == tier]
            assert shown == sorted(shown, reverse=True)
            left = [it["score"] for it in every if it["above_floor"] == tier
                    and it["item_id"] not in ids]  # fmt: skip
            if shown and left:
                assert max(left) <= min(shown) + 1e-6
        by_score = sorted(every, key=lambda it: (-it["score"], it["item_id"]))[:10]
        # The floor changed this list: by score alone, more of it would be below the floor.
        mattered += sum(not it["above_floor"] for it in by_score) > 10 - sum(tiers)
    return mattered


@pytest.fixture(scope="module")
def latest(latest_small_checkpoint: Path) -> Iterator[httpx.Client]:
    """The taste model on ml-latest-small (half stars, no user fields), served."""
    running = start_server(
        create_app(Settings(checkpoint=latest_small_checkpoint, torch_threads=1))
    )
    try:
        with httpx.Client(base_url=running.url, timeout=60) as c:
            yield c
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def latest_ids(latest_small_checkpoint: Path) -> list[int]:
    ck = load(latest_small_checkpoint)
    rows = torch.nonzero(ck.catalogue.recommendable).squeeze(1).tolist()
    return [int(ck.catalogue.item_ids[r]) for r in rows]


def test_half_stars_on_ml_latest_small(latest: httpx.Client, latest_ids: list[int]) -> None:
    model = latest.get("/model").json()
    assert model["rating_scale"]["values"] == [0.5 * i for i in range(1, 11)]
    assert model["rating_scale"]["text"] == "0.5..5.0 in steps of 0.5"
    rating = latest.get("/openapi.json").json()["components"]["schemas"]["Rating"]
    assert rating["properties"]["rating"]["minimum"] == 0.5
    assert rating["properties"]["rating"]["multipleOf"] == 0.5

    ratings = [
        {"item_id": latest_ids[0], "rating": 4.5},
        {"item_id": latest_ids[1], "rating": 0.5},
        {"item_id": latest_ids[2], "rating": 3.5},
        {"item_id": latest_ids[3], "rating": 5},
    ]
    response = latest.post("/recommend", json={"ratings": ratings, "k": 10})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 10 and items == _served_order(items)
    assert all(0.5 <= it["predicted_rating"] <= 5.0 for it in items)
    # A 4.5 is a rating of its own, not a 4 or a 5.
    as_four = [{**r, "rating": 4} if r["rating"] == 4.5 else r for r in ratings]
    other = latest.post("/recommend", json={"ratings": as_four, "k": 10}).json()["items"]
    assert [it["score"] for it in other] != [it["score"] for it in items]

    off = [
        {"item_id": latest_ids[0], "rating": 4.3},
        {"item_id": latest_ids[1], "rating": 0},
        {"item_id": latest_ids[2], "rating": 5.5},
    ]
    for path, extra in (("/recommend", {}), ("/score", {"item_ids": latest_ids[5:8]})):
        refused = latest.post(path, json={"ratings": off, **extra})
        assert refused.status_code == 422, refused.text
        errors = {e["field"]: e["msg"] for e in _errors(refused)}
        assert errors == {
            "ratings[0].rating": "ratings[0].rating: 4.3 is not on this model's scale "
            "0.5..5.0 in steps of 0.5",
            "ratings[1].rating": "ratings[1].rating: 0 is not on this model's scale "
            "0.5..5.0 in steps of 0.5",
            "ratings[2].rating": "ratings[2].rating: 5.5 is not on this model's scale "
            "0.5..5.0 in steps of 0.5",
        }


def test_user_fields_are_ignored_by_a_model_without_them(
    latest: httpx.Client, latest_ids: list[int]
) -> None:
    """ml-latest-small has no user fields: /model says so, and a request that sends some is
    answered as without them, each named in adaptation.ignored_user_fields with the reason.
    Ignored rather than refused: a client that always sends its user's profile keeps working
    with any checkpoint, and nothing the model could read is lost. A misspelt field is still
    refused."""
    model = latest.get("/model").json()
    assert model["user_fields"] == [] and model["user_values"] == {}
    assert model["user_value_meanings"] == {}
    ratings = [{"item_id": i, "rating": 4} for i in latest_ids[10:14]]
    plain = latest.post("/recommend", json={"ratings": ratings}).json()
    assert plain["adaptation"]["ignored_user_fields"] == []
    user = {"gender": "X", "age": 30, "occupation": 4, "zip": "00000"}
    for path, extra in (("/recommend", {}), ("/score", {"item_ids": latest_ids[:5]})):
        answer = latest.post(path, json={"ratings": ratings, "user": user, **extra})
        assert answer.status_code == 200, answer.text
        ignored = answer.json()["adaptation"]["ignored_user_fields"]
        assert [f["field"] for f in ignored] == ["gender", "age", "occupation", "zip"]
        assert all("reads no user fields" in f["reason"] for f in ignored), ignored
    again = latest.post("/recommend", json={"ratings": ratings, "user": user}).json()
    assert again["items"] == plain["items"]
    typo = latest.post("/recommend", json={"ratings": ratings, "user": {"sex": "F"}})
    assert typo.status_code == 422 and _errors(typo)[0]["field"] == "user.sex"
    # The example request the server prints and publishes sends no user.
    example = latest.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
    assert "user" not in example["examples"][0]


def test_scorer_shortcuts_change_nothing(ckpt: Checkpoint) -> None:
    """What melu.scoring does to save work per request gives the learner's own numbers: the
    local update over the recommendable rows alone, the loss after the steps from the list's
    logits (the learner's report pass computes it over the catalogue), and lists from the
    recommendable rows alone (every_row=False) score those rows exactly as every_row=True.
    The fold-in (melu.fold_in) is the learner's scores blended with EDLAE's, per support size."""
    learner = ckpt.learner("cpu")
    fold_in = learner.net.fold_in
    assert fold_in is not None and fold_in.fitted
    with torch.no_grad():
        fold_in.weight.fill_(0.5)  # at every size, whatever validation chose
    table, recommendable = ckpt.catalogue.table, ckpt.catalogue.recommendable
    scorer = CatalogueScorer(learner, table, recommendable)
    rng = np.random.default_rng(4)
    rows = torch.from_numpy(rng.choice(np.arange(1, len(ckpt.catalogue) + 1), (3, 6), False))
    ratings = torch.from_numpy(rng.integers(1, 6, (3, 6)).astype(np.float32))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 2:] = False
    users = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0], [2, 1, 4, 0]])
    side = learner.catalogue_side(table, recommendable)  # the learner's own catalogue
    for steps in (0, 1, 2):
        with torch.no_grad():
            state = scorer.adapt(users, rows, ratings, mask, steps)
            own = learner.adapt(users, rows, table[rows], ratings, mask, side, steps)
            every = scorer.scores(state, users, fold_in=False)
            listed = scorer.scores(state, users, False, fold_in=False)
            blended = scorer.scores(state, users)
        torch.testing.assert_close(state.loss_before, own.loss_before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state.loss_after, own.loss_after, atol=1e-5, rtol=1e-5)
        logits, predicted = learner.scores(own, side)
        expected = logits + learner.net.cfg.rank_rating_weight * predicted
        keep, new = recommendable, ~recommendable
        new[0] = False  # padding
        torch.testing.assert_close(every.rank[:, keep], expected[:, keep], atol=1e-5, rtol=1e-5)
        weight = learner.net.fold_in_weight(mask)
        with torch.no_grad():
            mixed = blend(
                expected, scorer.fold_in_scores(state.support), scorer.allowed(state), weight
            ).scores
        torch.testing.assert_close(blended.rank[:, keep], mixed[:, keep], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(blended.rank[:, keep], every.rank[:, keep])
        assert torch.equal(every.rank[:, keep], listed.rank[:, keep])
        assert listed.above_floor is not None
        assert torch.isinf(listed.rank[:, new]).all() and not listed.above_floor[:, new].any()
        assert torch.isfinite(every.rank).all()


def test_because_follows_the_blended_list(ckpt: Checkpoint) -> None:
    """Where the list is blended with EDLAE's fold-in, "because you loved X" names the loved
    support item with the largest part of the blend. With the fold-in off, the taste model's
    logit decides. With an overwhelming weight, EDLAE's ``B[X, item]`` decides, wherever some
    support item's ``B`` entry for the listed item is nonzero (read from the neighbour lists
    here, not by ``FoldIn.scores``)."""
    learner = ckpt.learner("cpu")
    fold_in = learner.net.fold_in
    assert fold_in is not None and fold_in.fitted
    table, recommendable = ckpt.catalogue.table, ckpt.catalogue.recommendable
    scorer = CatalogueScorer(learner, table, recommendable)
    assert scorer.side is not None
    rng = np.random.default_rng(7)
    rated = np.flatnonzero(recommendable.numpy())
    support = [int(r) for r in rng.choice(rated[rated > 0], 8, replace=False)]
    ratings = [5.0, 5.0, 4.0, 5.0, 2.0, 5.0, 4.0, 1.0]
    rows = torch.tensor([support])
    users = torch.zeros(1, len(ckpt.encoder.user_fields), dtype=torch.long)
    named: dict[float, list[int | None]] = {}
    for weight in (0.0, 1e4):
        with torch.no_grad():
            fold_in.weight.fill_(weight)
            state = scorer.adapt(
                users, rows, torch.tensor([ratings]), torch.ones(1, 8, dtype=torch.bool), 1
            )
            scores = scorer.scores(state, users)
            allowed = scorer.allowed(state)
            listed = rank_top(scores.rank, allowed, 20, scores.above_floor)[0].tolist()
            named[weight] = scorer.explain(state, 0, listed, support, ratings, 4.0)
        assert all(named[weight][k] in support for k in range(20))
        assert all(ratings[support.index(r)] >= 4.0 for r in named[weight] if r is not None)
    ids = scorer.side.items.ids
    loved = [j for j, r in enumerate(ratings) if r >= 4.0]
    checked = 0
    for k, row in enumerate(listed):
        target = int(ids[row])
        entries = []
        for j in loved:
            neighbours = fold_in.index[int(ids[support[j]])]
            entries.append(float(fold_in.value[int(ids[support[j]])][neighbours == target].sum()))
        best = max(entries)
        if best > 0 and entries.count(best) == 1:
            assert named[1e4][k] == support[loved[entries.index(best)]], (k, entries)
            checked += 1
    assert checked >= 10
    # The two terms of the blend do not always agree on what the list follows.
    with torch.no_grad():
        fold_in.weight.fill_(0.0)
        state = scorer.adapt(
            users, rows, torch.tensor([ratings]), torch.ones(1, 8, dtype=torch.bool), 1
        )
        scorer.scores(state, users)
        by_logit = scorer.explain(state, 0, listed, support, ratings, 4.0)
    assert by_logit != named[1e4]


def test_one_user_is_scored_from_the_catalogue_column_by_column(ckpt: Checkpoint) -> None:
    """The scorer stores the catalogue's ``out`` and ``taste`` column by column (the layout in
    which one user's matrix-vector products run at memory speed, melu.scoring.column_major):
    a single request, as ``/recommend`` sends it, gets the learner's own losses and scores."""
    learner = ckpt.learner("cpu")
    with torch.no_grad():
        # The step taken at every size: its forward and backward passes read the layout.
        learner.net.step_schedule.fill_(1.0)
    table, recommendable = ckpt.catalogue.table, ckpt.catalogue.recommendable
    scorer = CatalogueScorer(learner, table, recommendable)
    compact = scorer._compact.items
    assert compact.out.t().is_contiguous() and compact.taste.t().is_contiguous()
    side = learner.catalogue_side(table, recommendable)
    assert side.items.out.stride() != compact.out.stride()
    rng = np.random.default_rng(5)
    rows = torch.from_numpy(rng.choice(np.arange(1, len(ckpt.catalogue) + 1), (1, 5), False))
    ratings = torch.tensor([[5.0, 4.0, 1.0, 5.0, 2.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    users = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        state = scorer.adapt(users, rows, ratings, mask, 1)
        own = learner.adapt(users, rows, table[rows], ratings, mask, side, 1)
        scores = scorer.scores(state, users, every_row=False, fold_in=False)
        logits, predicted = learner.scores(own, side)
        start = learner.adapt(users, rows, table[rows], ratings, mask, side, 0)
    assert not torch.allclose(state.fast.user, start.fast.user)
    torch.testing.assert_close(state.loss_after, own.loss_after, atol=1e-5, rtol=1e-5)
    expected = logits + learner.net.cfg.rank_rating_weight * predicted
    keep = recommendable.clone()
    torch.testing.assert_close(scores.rank[:, keep], expected[:, keep], atol=1e-5, rtol=1e-5)
