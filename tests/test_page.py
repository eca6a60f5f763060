"""End to end: the demo page at ``/`` in headless Chromium against a real ``melu serve``.

A one-epoch checkpoint of the default preset (the taste model) is trained on a subset of the
real data's users (the whole catalogue), ``melu serve`` runs as a subprocess on a free loopback
port, and Debian's Chromium (``/usr/bin/chromium``, driven by playwright) searches, rates three
movies and reads ten recommendations, none of them rated. A second server serves the taste
model of ml-latest-small: half stars, and no user fields to ask for.

Needs ``chromium`` (``.ci/install-browser.sh``) and the ``playwright`` package (dev extras); a
missing one fails the test with that hint instead of skipping it. ``playwright install`` is never
needed: the system browser is used. Set ``MELU_PAGE_SCREENSHOT=path.png`` to keep a screenshot.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from melu.checkpoint import load, save

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 90.0
UI_TIMEOUT_MS = 20_000
# (query, star rating) for the three movies the test rates; the first match of each is rated.
TO_RATE = [("toy story", 5), ("fargo", 4), ("titanic", 2)]

# Straight to the loopback server, whatever HTTP(S)_PROXY the environment sets.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with _opener.open(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small checkpoint with onboarding lists stored, as ``melu train`` leaves it. The
    lists are its first 100 recommendable movies: the page is under test here, not the lists
    (test_onboarding), and ``melu onboarding`` does not yet handle the taste model."""
    ck = load(small_checkpoint)
    rows = torch.nonzero(ck.catalogue.recommendable).squeeze(1)[:100].tolist()
    ids = [int(ck.catalogue.item_ids[r]) for r in rows]
    strategies = ("diverse", "evidence", "popularity", "entropy")
    ck.onboarding = {"lists": {s: ids for s in strategies}, "info": {}}
    path = tmp_path_factory.mktemp("page-run") / "checkpoint.pt"
    save(path, ck)
    return path


@contextlib.contextmanager
def _melu_serve(checkpoint: Path, log_path: Path) -> Iterator[str]:
    """``melu serve`` on a free 127.0.0.1 port; yields its base URL once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "melu", "--threads", "1", "serve", "--checkpoint", str(checkpoint)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"melu serve exited with {proc.returncode}:\n{log_path.read_text()}",
                    pytrace=False,
                )
            try:
                if _get_json(f"{base}/health").get("status") == "ok":
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"melu serve did not answer /health within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                    f"{log_path.read_text()}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def served(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The default model served; its base URL and the file its log goes to."""
    log_path = tmp_path_factory.mktemp("page-server") / "serve.log"
    with _melu_serve(checkpoint, log_path) as base:
        yield base, log_path


@pytest.fixture(scope="module")
def server(served: tuple[str, Path]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def latest_server(
    latest_small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The taste model of ml-latest-small (half stars, no user fields) served, without
    onboarding lists."""
    log_path = tmp_path_factory.mktemp("page-latest") / "serve.log"
    with _melu_serve(latest_small_checkpoint, log_path) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium through playwright; missing pieces fail with a hint."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the page test needs Debian's Chromium; install it with "
            "`bash .ci/install-browser.sh` (apt-get install chromium)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the page test needs the playwright package: pip install -e '.[dev]' "
            "(never `playwright install`: the test uses /usr/bin/chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page (own storage) on ``/``; fails the test on a JavaScript error."""
    yield from _open(browser, server)


@pytest.fixture
def latest_page(browser: Any, latest_server: str) -> Iterator[Any]:
    yield from _open(browser, latest_server)


def _open(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server)
    context.set_default_timeout(UI_TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    tab.goto("/")
    try:
        yield tab
    finally:
        context.close()
    assert not problems, problems


def _search_and_rate(page: Any, query: str, stars: float) -> int:
    """Search ``query``, give its first match ``stars`` (4.5: a half star); return that
    movie's id."""
    from playwright.sync_api import expect

    results = _search(page, query)
    first = results.first
    expect(first).to_be_visible()
    item_id = int(first.get_attribute("data-item-id"))
    shown = f"{stars:g}"
    first.get_by_test_id(f"star-{shown}").click()
    expect(first.get_by_test_id("stars")).to_have_attribute("data-value", shown)
    return item_id


# How a recommendation shows its predicted rating: words, not a star glyph beside the five
# rating stars ("3.8★ ★" read as a one-star rating); 0.5 on the half-star scale.
PREDICTED = re.compile(r"predicted ([0-5]\.[0-9]) / 5")


def _search(page: Any, query: str) -> Any:
    """Search ``query``; the result rows once they answer it."""
    from playwright.sync_api import expect

    page.get_by_test_id("search-input").fill(query)
    page.get_by_test_id("search-button").click()
    expect(page.get_by_test_id("search-status")).to_contain_text(query)
    return page.get_by_test_id("search-results").get_by_test_id("search-result")


def _wait_for_recommendations(page: Any, rated: int) -> list[dict[str, Any]]:
    """Wait until the list answers the request made with ``rated`` ratings; read it, checking
    that each predicted rating reads as one."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("rec-status")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("recommendations")).to_have_attribute("data-rated-count", str(rated))
    rows = page.get_by_test_id("recommendation")
    recs = [
        {
            "item_id": int(row.get_attribute("data-item-id")),
            "title": row.locator(".movie-title").inner_text().strip(),
            "rating_text": row.get_by_test_id("score").inner_text(),
            "rating_after": row.get_by_test_id("score").evaluate(
                "node => getComputedStyle(node, '::after').content"
            ),
            "score": float(row.get_by_test_id("score").get_attribute("data-rank-score")),
            "because": row.get_by_test_id("because").all_inner_texts(),
        }
        for row in rows.all()
    ]
    for rec in recs:
        shown = PREDICTED.fullmatch(rec["rating_text"])
        assert shown, rec
        assert rec["rating_after"] in ("none", "normal"), rec  # no glyph added by CSS
        rec["rating"] = float(shown.group(1))
    return recs


def _record(page: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The /recommend requests the page sends (their bodies) and the answers it gets."""
    sent: list[dict[str, Any]] = []
    answers: list[Any] = []
    page.on(
        "request",
        lambda req: (
            sent.append(json.loads(req.post_data or "{}"))
            if req.method == "POST" and req.url.endswith("/recommend")
            else None
        ),
    )
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/recommend") else None)
    return sent, answers


def _assert_shown_as_served(recs: list[dict[str, Any]], answer: Any) -> None:
    """The page lists the answer's items in the answer's order, which is the service's: above
    the user's own mean first (the floor), each group by descending score."""
    items = answer.json()["items"]
    assert [r["item_id"] for r in recs] == [it["item_id"] for it in items]
    order = sorted(items, key=lambda it: (it["above_floor"] is False, -it["score"]))
    assert [it["item_id"] for it in order] == [it["item_id"] for it in items]
    assert [r["score"] for r in recs] == pytest.approx([it["score"] for it in items], abs=1e-4)


def test_search_rate_and_recommend(page: Any, server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    sent, answers = _record(page)
    expect(page).to_have_title("MeLU · cold-start movie recommendations")
    expect(page.get_by_test_id("model-info")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("rec-status")).to_have_attribute("data-state", "empty")

    rated: dict[int, int] = {}
    for query, stars in TO_RATE:
        rated[_search_and_rate(page, query, stars)] = stars
    assert len(rated) == 3, f"the three searches should find three different movies: {rated}"
    expect(page.get_by_test_id("rated-count")).to_have_text("3")
    expect(page.get_by_test_id("rated-item")).to_have_count(3)

    # Rated movies are listed with their year.
    names = page.get_by_test_id("rated-item").get_by_test_id("movie-name").all_inner_texts()
    assert [n for n in names if n.startswith("Titanic")] == ["Titanic (1997)"], names

    recs = _wait_for_recommendations(page, rated=3)
    assert len(recs) == 10
    assert not {r["item_id"] for r in recs} & set(rated), "a rated movie was recommended"
    assert len({r["item_id"] for r in recs}) == 10
    assert all(r["title"] for r in recs)
    assert all(1.0 <= r["rating"] <= 5.0 for r in recs), recs
    _assert_shown_as_served(recs, answers[-1])
    # Each follows one of the movies rated 4 or more (Toy Story 5, Fargo 4), never the
    # 2-star Titanic, and names it with its year.
    loved = {"Toy Story (1995)", "Fargo (1996)"}
    for r in recs:
        assert len(r["because"]) == 1, r
        assert r["because"][0].removeprefix("because you loved ") in loved, r

    # The adaptation panel shows the support loss before and after the local steps.
    expect(page.get_by_test_id("adaptation")).to_be_visible()
    before = float(page.get_by_test_id("support-loss-before").inner_text())
    after = float(page.get_by_test_id("support-loss-after").inner_text())
    assert math.isfinite(before) and math.isfinite(after) and before >= 0 and after >= 0
    assert int(page.get_by_test_id("adaptation-steps").inner_text()) >= 0

    # The page asked for what the user did: the three ratings, ten items, rated ones excluded.
    last = sent[-1]
    assert {r["item_id"]: r["rating"] for r in last["ratings"]} == rated
    assert last["k"] == 10 and last["exclude_rated"] is True

    shot = Path(os.environ.get("MELU_PAGE_SCREENSHOT") or tmp_path / "page.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_rating_a_recommendation_refreshes_the_list(page: Any) -> None:
    from playwright.sync_api import expect

    first = _search_and_rate(page, "toy story", 4)
    recs = _wait_for_recommendations(page, rated=1)
    assert recs and first not in {r["item_id"] for r in recs}

    # Rate the top recommendation from the list itself: it joins the ratings and drops out.
    top = page.get_by_test_id("recommendation").first
    top_id = int(top.get_attribute("data-item-id"))
    top.get_by_test_id("star-5").click()
    expect(page.get_by_test_id("rated-count")).to_have_text("2")
    recs = _wait_for_recommendations(page, rated=2)
    assert not {first, top_id} & {r["item_id"] for r in recs}

    # Removing every rating empties the list again.
    page.get_by_test_id("clear-ratings").click()
    expect(page.get_by_test_id("rec-status")).to_have_attribute("data-state", "empty")
    expect(page.get_by_test_id("recommendation")).to_have_count(0)
    expect(page.get_by_test_id("rated-item")).to_have_count(0)


def test_onboarding_first_screen(page: Any) -> None:
    """A new user rates five movies from the onboarding list (skipping one they have not
    seen) and gets recommendations, none of them rated."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("onboarding-status")).to_have_attribute("data-state", "ready")
    items = page.get_by_test_id("onboarding-item")
    expect(items).to_have_count(10)
    first_id = int(items.first.get_attribute("data-item-id"))
    items.first.get_by_test_id("onboarding-skip").click()
    expect(
        page.locator(f'[data-testid="onboarding-item"][data-item-id="{first_id}"]')
    ).to_have_count(0)
    rated: dict[int, int] = {}
    for stars in (5, 4, 5, 2, 1):
        item = page.get_by_test_id("onboarding-item").first
        item_id = int(item.get_attribute("data-item-id"))
        item.get_by_test_id(f"star-{stars}").click()
        rated[item_id] = stars
        # A rated movie leaves the onboarding list and joins the ratings.
        expect(
            page.locator(f'[data-testid="onboarding-item"][data-item-id="{item_id}"]')
        ).to_have_count(0)
    assert first_id not in rated
    expect(page.get_by_test_id("rated-count")).to_have_text("5")
    recs = _wait_for_recommendations(page, rated=5)
    assert len(recs) == 10
    assert not {r["item_id"] for r in recs} & set(rated)
    assert all(1.0 <= r["rating"] <= 5.0 for r in recs)


def test_search_shows_years_and_finds_a_title_with_its_year(page: Any) -> None:
    """Two films are titled "Titanic": the results show each with its year (the page showed
    "Titanic #1721"), and a title typed as shown, with its year, finds that film."""
    from playwright.sync_api import expect

    results = _search(page, "titanic")
    expect(results.first).to_be_visible()
    names = results.get_by_test_id("movie-name").all_inner_texts()
    assert names[:2] == ["Titanic (1997)", "Titanic (1953)"], names
    assert not [n for n in names if "#" in n]
    assert "Drama, Romance" in results.first.inner_text()
    results = _search(page, "Star Wars (1977)")
    expect(results).to_have_count(1)
    expect(results.get_by_test_id("movie-name")).to_have_text(
        "Star Wars: Episode IV - A New Hope (1977)"
    )


def test_startup_log_names_the_page(served: tuple[str, Path]) -> None:
    base, log_path = served
    log = log_path.read_text()
    assert f"open the page: {base}/ " in log, log
    assert f"try: curl -s {base}/recommend" in log


def test_half_stars_and_no_user_fields_on_ml_latest_small(latest_page: Any) -> None:
    """ml-latest-small's model: ten half stars per movie (0.5..5.0), no "about you" fields to
    fill in, and a 4.5 sent as 4.5; the recommendations come, none of them rated."""
    from playwright.sync_api import expect

    page = latest_page
    sent, answers = _record(page)
    expect(page.get_by_test_id("model-info")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("model-info")).to_contain_text("0.5..5.0 in steps of 0.5")
    # No user fields: the page asks for none, and no onboarding list: no onboarding panel.
    expect(page.get_by_test_id("profile")).to_be_hidden()
    expect(page.get_by_test_id("onboarding")).to_be_hidden()

    results = _search(page, "toy story")
    expect(results.first).to_be_visible()
    labels = results.first.get_by_test_id("stars").locator("label")
    expect(labels).to_have_count(10)
    assert labels.evaluate_all("ls => ls.map(l => l.dataset.testid)") == [
        f"star-{0.5 * i:g}" for i in range(1, 11)
    ]
    rated = {
        _search_and_rate(page, "toy story", 4.5): 4.5,
        _search_and_rate(page, "heat", 0.5): 0.5,
        _search_and_rate(page, "fargo", 4): 4,
    }
    assert len(rated) == 3, rated
    # Four and a half stars lit: the left half of the fifth star too, not its right half.
    stars = page.get_by_test_id("rated-item").first.get_by_test_id("stars")
    expect(stars).to_have_attribute("data-value", "4.5")
    lit = stars.locator("label.is-on").evaluate_all("ls => ls.map(l => l.dataset.testid)")
    assert lit == [f"star-{0.5 * i:g}" for i in range(1, 10)], lit

    recs = _wait_for_recommendations(page, rated=3)
    assert len(recs) == 10
    assert not {r["item_id"] for r in recs} & set(rated)
    assert all(0.5 <= r["rating"] <= 5.0 for r in recs), recs
    _assert_shown_as_served(recs, answers[-1])
    last = sent[-1]
    assert {r["item_id"]: r["rating"] for r in last["ratings"]} == rated
    assert "user" not in last
    assert answers[-1].json()["adaptation"]["ignored_user_fields"] == []
