// MeLU demo page: search the catalogue, rate movies, see the adapted model's recommendations.
// Plain browser JavaScript, no build step and no external resources. What the page asks for
// is the model's to say (GET /model): the rating scale (half stars for ml-latest-small) and
// the user fields it reads (none for the CSV releases).
"use strict";

(() => {
  const SEARCH_LIMIT = 20;
  const SEARCH_DELAY_MS = 250;
  const RECOMMEND_DELAY_MS = 150;
  // Ratings are kept per dataset: a half star saved for ml-latest-small is not a rating of a
  // model of whole stars.
  const STORAGE_PREFIX = "melu.ratings.v2.";
  const SKIPPED_KEY = "melu.skipped.v1";
  const PROFILE_FIELDS = ["gender", "age", "occupation", "zip"];
  // Onboarding: shown a page at a time from the list the server stores.
  const ONBOARDING_PAGE = 10;
  const ONBOARDING_FETCH = 100;

  const $ = (id) => document.getElementById(id);
  const els = {
    modelInfo: $("model-info"),
    searchForm: $("search-form"),
    searchInput: $("search-input"),
    searchStatus: $("search-status"),
    searchResults: $("search-results"),
    ratedList: $("rated-list"),
    ratedCount: $("rated-count"),
    ratingsEmpty: $("ratings-empty"),
    clearRatings: $("clear-ratings"),
    profile: $("profile"),
    profileForm: $("profile-form"),
    kSelect: $("k-select"),
    recPanel: $("recommendations-panel"),
    recStatus: $("rec-status"),
    recList: $("recommendations"),
    adaptation: $("adaptation"),
    steps: $("adaptation-steps"),
    lossBefore: $("support-loss-before"),
    lossAfter: $("support-loss-after"),
    unknownFields: $("unknown-fields"),
    error: $("error"),
    onboardingPanel: $("onboarding-panel"),
    onboardingStatus: $("onboarding-status"),
    onboardingList: $("onboarding-list"),
    onboardingMore: $("onboarding-more"),
  };

  // item_id -> {item_id, title, year, rating}, in the order the user rated them.
  const ratings = new Map();
  let searchItems = [];
  let onboardingItems = [];
  let skipped = new Set();
  let searchTimer = 0;
  let searchController = null;
  let recommendTimer = 0;
  let recommendController = null;
  let recommendSeq = 0;
  // The model's rating scale and user fields; until /model answers, MeLU's (1..5, all).
  let scale = { low: 1, high: 5, step: 1, values: [1, 2, 3, 4, 5] };
  let userFields = PROFILE_FIELDS;
  let storageKey = `${STORAGE_PREFIX}melu`;

  // ---------- helpers ----------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      // Through the CSSOM, not a style attribute: the page's CSP forbids inline styles.
      else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = !message;
  }

  async function errorMessage(response) {
    let detail = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) {
        // The service's error shape: [{field, msg, ...}]
        detail = body.detail
          .map((d) => (d.field ? `${d.field}: ${d.msg}` : d.msg || JSON.stringify(d)))
          .join("; ");
      }
    } catch (_) {
      // not JSON: keep the status line
    }
    return detail;
  }

  async function getJSON(url, options = {}) {
    const response = await fetch(url, {
      headers: { Accept: "application/json", ...(options.headers || {}) },
      ...options,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.json();
  }

  function formatNumber(value, digits = 3) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  // A rating as written on the page and in test ids: 4.5, 5 (not 5.0).
  function formatRating(value) {
    return String(Math.round(value * 1000) / 1000);
  }

  function onScale(value) {
    return typeof value === "number" && scale.values.some((v) => Math.abs(v - value) < 1e-6);
  }

  // How the stars are drawn: one star per whole-star value, or two half stars per star.
  function starMode() {
    if (scale.step === 1 && Number.isInteger(scale.low) && scale.low >= 1) return "whole";
    if (scale.step === 0.5 && scale.low === 0.5) return "half";
    return "plain";
  }

  // The /items answer: a bare list, or an object holding the list under "items".
  function itemsOf(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.items)) return body.items;
    return [];
  }

  // "Title (1997)": two films share the title "Titanic".
  function titleWithYear(item) {
    const title = String(item.title ?? item.item_id);
    return Number.isInteger(item.year) ? `${title} (${item.year})` : title;
  }

  function genresOf(item) {
    return Array.isArray(item.genres) && item.genres.length
      ? el("span", { className: "movie-genres", text: item.genres.join(", ") })
      : null;
  }

  // A listed movie: "Titanic (1997)" over its genres.
  function titleBlock(item) {
    return el(
      "span",
      { className: "movie-title" },
      el("span", {
        className: "movie-name",
        dataset: { testid: "movie-name" },
        text: titleWithYear(item),
      }),
      genresOf(item),
    );
  }

  // ---------- persistence ----------

  function saveRatings() {
    try {
      localStorage.setItem(storageKey, JSON.stringify([...ratings.values()]));
    } catch (_) {
      // storage may be disabled: ratings then last for this page only
    }
  }

  function loadRatings() {
    try {
      const saved = JSON.parse(localStorage.getItem(storageKey) || "[]");
      for (const r of saved) {
        if (Number.isInteger(r.item_id) && onScale(r.rating)) {
          ratings.set(r.item_id, rated(r, r.rating));
        }
      }
    } catch (_) {
      ratings.clear();
    }
  }

  // ---------- star rating widget ----------

  let widgetCount = 0;

  // What a star label shows: a star, the left or right half of one, or the number itself.
  function starFace(value, mode) {
    const text = mode === "plain" ? formatRating(value) : "★";
    return el("span", { className: "glyph", "aria-hidden": "true", text });
  }

  // A radio group styled as stars, one radio per rating of the model's scale (two per star
  // with half stars); keyboard: Tab to it, arrows to change.
  function starRating(item, current, context) {
    widgetCount += 1;
    const mode = starMode();
    const name = `stars-${context}-${item.item_id}-${widgetCount}`;
    const group = el("fieldset", {
      className: `stars stars-${mode}`,
      dataset: { testid: "stars", value: formatRating(current || 0) },
    });
    group.append(el("legend", { className: "visually-hidden", text: `Rate ${item.title}` }));
    for (const value of scale.values) {
      const shown = formatRating(value);
      const words = `${shown} star${value === 1 ? "" : "s"}`;
      const id = `${name}-${shown}`;
      const input = el("input", {
        type: "radio",
        name,
        id,
        value: shown,
        className: "visually-hidden",
        checked: current === value,
        dataset: { context, itemId: String(item.item_id) },
      });
      input.addEventListener("change", () => setRating(item, value));
      const half = mode === "half" ? (Number.isInteger(value) ? " right" : " left") : "";
      const label = el(
        "label",
        {
          for: id,
          title: words,
          className: `${current >= value ? "is-on" : ""}${half}`.trim() || undefined,
          dataset: { testid: `star-${shown}` },
        },
        starFace(value, mode),
        el("span", { className: "visually-hidden", text: words }),
      );
      group.append(input, label);
    }
    return group;
  }

  // ---------- ratings ----------

  // What is kept of a rated movie: enough to show "Titanic (1997)" in the list.
  function rated(item, rating) {
    const year = Number.isInteger(item.year) ? item.year : null;
    return { item_id: item.item_id, title: String(item.title ?? item.item_id), year, rating };
  }

  function setRating(item, rating) {
    ratings.set(item.item_id, rated(item, rating));
    ratingsChanged();
  }

  function removeRating(itemId) {
    ratings.delete(itemId);
    ratingsChanged();
  }

  function ratingsChanged() {
    // Lists are re-rendered: keep keyboard focus on the star the user is on.
    const active = document.activeElement;
    const focused =
      active && active.matches("input[type=radio][data-context]")
        ? `input[data-context="${active.dataset.context}"][data-item-id="${active.dataset.itemId}"][value="${active.value}"]`
        : null;
    saveRatings();
    renderRatings();
    renderSearchResults();
    renderOnboarding();
    scheduleRecommend();
    if (focused) {
      const again = document.querySelector(focused);
      if (again) again.focus();
    }
  }

  function renderRatings() {
    const rows = [...ratings.values()].map((r) => {
      const remove = el("button", {
        type: "button",
        className: "icon-button",
        "aria-label": `Remove rating of ${titleWithYear(r)}`,
        title: "Remove",
        dataset: { testid: "remove-rating" },
        text: "×",
      });
      remove.addEventListener("click", () => removeRating(r.item_id));
      return el(
        "li",
        { className: "movie", dataset: { testid: "rated-item", itemId: String(r.item_id) } },
        titleBlock(r),
        starRating(r, r.rating, "rated"),
        remove,
      );
    });
    els.ratedList.replaceChildren(...rows);
    els.ratedCount.textContent = String(ratings.size);
    els.ratingsEmpty.hidden = ratings.size > 0;
    els.clearRatings.disabled = ratings.size === 0;
  }

  // ---------- search ----------

  function renderSearchResults() {
    const rows = searchItems.map((item) => {
      const rated = ratings.get(item.item_id);
      return el(
        "li",
        {
          className: rated ? "movie is-rated" : "movie",
          dataset: { testid: "search-result", itemId: String(item.item_id) },
        },
        titleBlock(item),
        starRating(item, rated ? rated.rating : 0, "search"),
      );
    });
    els.searchResults.replaceChildren(...rows);
  }

  async function search(query) {
    query = query.trim();
    if (searchController) searchController.abort();
    if (!query) {
      searchItems = [];
      renderSearchResults();
      els.searchStatus.textContent = "Type part of a title.";
      return;
    }
    searchController = new AbortController();
    els.searchStatus.textContent = "Searching…";
    try {
      const params = new URLSearchParams({ query, limit: String(SEARCH_LIMIT) });
      const body = await getJSON(`/items?${params}`, { signal: searchController.signal });
      const total = Number.isInteger(body.total) ? body.total : itemsOf(body).length;
      searchItems = itemsOf(body)
        .filter((it) => Number.isInteger(it.item_id))
        .map((it) => ({
          item_id: it.item_id,
          title: String(it.title ?? it.item_id),
          year: Number.isInteger(it.year) ? it.year : null,
          genres: Array.isArray(it.genres) ? it.genres : [],
        }));
      renderSearchResults();
      const n = searchItems.length;
      els.searchStatus.textContent =
        total === 0
          ? `No movie matches “${query}”.`
          : `${total} movie${total > 1 ? "s match" : " matches"} “${query}”` +
            (total > n ? ` (first ${n} shown).` : ".");
      showError("");
    } catch (err) {
      if (err.name === "AbortError") return;
      els.searchStatus.textContent = "Search failed.";
      showError(`Search failed: ${err.message}`);
    }
  }

  // ---------- onboarding ----------

  function saveSkipped() {
    try {
      localStorage.setItem(SKIPPED_KEY, JSON.stringify([...skipped]));
    } catch (_) {
      // storage may be disabled
    }
  }

  function loadSkipped() {
    try {
      skipped = new Set(JSON.parse(localStorage.getItem(SKIPPED_KEY) || "[]"));
    } catch (_) {
      skipped = new Set();
    }
  }

  // The next movies of the list that are neither rated nor skipped.
  function onboardingPage() {
    return onboardingItems
      .filter((it) => !ratings.has(it.item_id) && !skipped.has(it.item_id))
      .slice(0, ONBOARDING_PAGE);
  }

  function renderOnboarding() {
    if (!onboardingItems.length) return;
    const page = onboardingPage();
    const rows = page.map((item) => {
      const skip = el("button", {
        type: "button",
        className: "secondary skip",
        dataset: { testid: "onboarding-skip" },
        "aria-label": `Not seen: ${item.title}`,
        text: "Not seen",
      });
      skip.addEventListener("click", () => {
        skipped.add(item.item_id);
        saveSkipped();
        renderOnboarding();
      });
      return el(
        "li",
        { className: "movie", dataset: { testid: "onboarding-item", itemId: String(item.item_id) } },
        titleBlock(item),
        starRating(item, 0, "onboarding"),
        skip,
      );
    });
    els.onboardingList.replaceChildren(...rows);
    const rated = ratings.size;
    els.onboardingStatus.textContent = page.length
      ? `Rate the ones you have seen, skip the rest (${rated} rated so far; 5 or more give a good start).`
      : "That was the whole list: search for more titles below.";
    els.onboardingStatus.dataset.state = "ready";
    els.onboardingMore.hidden = page.length === 0;
  }

  async function loadOnboarding(model) {
    if (model && Array.isArray(model.onboarding) && !model.onboarding.includes("diverse")) {
      // The checkpoint stores no lists (GET /onboarding would answer 404): search only.
      els.onboardingPanel.hidden = true;
      return;
    }
    try {
      const params = new URLSearchParams({ n: String(ONBOARDING_FETCH) });
      const body = await getJSON(`/onboarding?${params}`);
      onboardingItems = itemsOf(body).filter((it) => Number.isInteger(it.item_id));
      renderOnboarding();
    } catch (err) {
      // A checkpoint without onboarding lists: the page still works through search.
      els.onboardingPanel.hidden = true;
    }
  }

  // ---------- profile ----------

  // The optional user features: the fields filled in (a missing one is "unknown" to the model),
  // of those the model reads.
  function profile() {
    const data = new FormData(els.profileForm);
    const user = {};
    for (const key of userFields) {
      const value = String(data.get(key) || "").trim();
      if (value) user[key] = value;
    }
    return Object.keys(user).length ? user : null;
  }

  // ---------- recommendations ----------

  function scheduleRecommend() {
    clearTimeout(recommendTimer);
    // Mark the list stale at once, so nobody (a test included) reads an outdated one as final.
    els.recStatus.dataset.state = "pending";
    recommendTimer = setTimeout(recommend, RECOMMEND_DELAY_MS);
  }

  function setBusy(busy) {
    els.recPanel.setAttribute("aria-busy", busy ? "true" : "false");
    els.recPanel.classList.toggle("is-busy", busy);
  }

  async function recommend() {
    if (recommendController) recommendController.abort();
    const seq = ++recommendSeq;
    if (ratings.size === 0) {
      setBusy(false);
      els.recList.replaceChildren();
      els.adaptation.hidden = true;
      els.recStatus.textContent = "Rate at least one movie to get recommendations.";
      els.recStatus.dataset.state = "empty";
      return;
    }
    recommendController = new AbortController();
    const payload = {
      ratings: [...ratings.values()].map((r) => ({ item_id: r.item_id, rating: r.rating })),
      k: Number(els.kSelect.value) || 10,
      exclude_rated: true,
    };
    const user = profile();
    if (user) payload.user = user;
    setBusy(true);
    els.recStatus.textContent = "Adapting to your ratings…";
    els.recStatus.dataset.state = "loading";
    try {
      const body = await getJSON("/recommend", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
        signal: recommendController.signal,
      });
      if (seq !== recommendSeq) return; // a newer request is on its way
      renderRecommendations(body, payload.ratings.length);
      showError("");
    } catch (err) {
      if (err.name === "AbortError" || seq !== recommendSeq) return;
      els.recStatus.textContent = "Could not get recommendations.";
      els.recStatus.dataset.state = "error";
      showError(`Recommendation failed: ${err.message}`);
    } finally {
      if (seq === recommendSeq) setBusy(false);
    }
  }

  function renderRecommendations(body, ratedCount) {
    const items = Array.isArray(body.items) ? body.items : [];
    const top = formatRating(scale.high);
    const rows = items.map((item, index) => {
      const rating = Number(item.predicted_rating ?? item.score);
      const share = Math.max(0, Math.min(1, (rating - scale.low) / (scale.high - scale.low)));
      const title = String(item.title ?? item.item_id);
      const year = Number.isInteger(item.year) ? item.year : null;
      const because =
        item.because && item.because.title
          ? el("span", {
              className: "because",
              dataset: { testid: "because" },
              text: `because you loved ${titleWithYear(item.because)}`,
            })
          : null;
      return el(
        "li",
        {
          className: "rec",
          dataset: { testid: "recommendation", itemId: String(item.item_id) },
        },
        el("span", { className: "rank", "aria-hidden": "true", text: String(index + 1) }),
        el(
          "div",
          { className: "rec-main" },
          el("span", { className: "movie-title", text: titleWithYear({ ...item, title }) }),
          genresOf(item),
          because,
          el(
            "span",
            { className: "score-bar", "aria-hidden": "true" },
            el("span", { className: "score-fill", style: `width: ${(share * 100).toFixed(1)}%` }),
          ),
        ),
        el(
          "span",
          {
            className: "score",
            dataset: { testid: "score", rankScore: formatNumber(Number(item.score), 4) },
            title: `the rating the model predicts you would give (${formatRating(scale.low)}–${top}); the list is ordered by how likely you are to watch and like it`,
          },
          // Words, not a star glyph: "3.8★" beside the five rating stars read as a rating.
          `predicted ${formatNumber(rating, 1)} / ${top}`,
        ),
        starRating({ item_id: item.item_id, title, year }, 0, "rec"),
      );
    });
    els.recList.replaceChildren(...rows);
    els.recList.dataset.ratedCount = String(ratedCount);
    const n = items.length;
    els.recStatus.textContent =
      n === 0
        ? "No unrated movie left to recommend."
        : `Top ${n} of the movies you have not rated: the ones you are most likely to watch and like. Rate one to refine.`;
    els.recStatus.dataset.state = "ready";

    const a = body.adaptation || {};
    els.steps.textContent = a.steps ?? "–";
    els.lossBefore.textContent = formatNumber(a.support_loss_before);
    els.lossAfter.textContent = formatNumber(a.support_loss_after);
    const unknown = Array.isArray(a.unknown_user_fields) ? a.unknown_user_fields : [];
    const ignored = Array.isArray(a.ignored_user_fields) ? a.ignored_user_fields : [];
    const notes = [];
    if (unknown.length) notes.push(`Not seen in training, so treated as unknown: ${unknown.join(", ")}.`);
    for (const f of ignored) notes.push(`${f.field}: ${f.reason}.`);
    els.unknownFields.textContent = notes.join(" ");
    els.unknownFields.hidden = notes.length === 0;
    els.adaptation.hidden = false;
  }

  // ---------- model ----------

  function describeModel(model) {
    if (!model || typeof model !== "object") return "Model ready.";
    const parts = [];
    const pick = (keys) => {
      for (const key of keys) {
        const path = key.split(".");
        let value = model;
        for (const p of path) value = value && typeof value === "object" ? value[p] : undefined;
        if (value !== undefined && value !== null && typeof value !== "object") return value;
      }
      return undefined;
    };
    const dataset = pick(["configs.data.dataset", "dataset"]);
    const items = pick(["items", "n_items"]);
    const steps = pick(["local_steps", "configs.meta.local_steps"]);
    const mae = pick(["info.best_val_mae", "metrics.best_val_mae", "best_val_mae"]);
    const version = pick(["info.version", "version"]);
    const stars = pick(["rating_scale.text"]);
    if (dataset !== undefined) parts.push(`dataset ${dataset}`);
    if (items !== undefined) parts.push(`${items} movies`);
    if (stars !== undefined) parts.push(`ratings ${stars}`);
    if (steps !== undefined) parts.push(`${steps} local steps`);
    if (typeof mae === "number") parts.push(`validation MAE ${mae.toFixed(3)}`);
    if (version !== undefined) parts.push(`melu ${version}`);
    return parts.length ? `Model: ${parts.join(" · ")}` : "Model ready.";
  }

  // The scale and the user fields of the model: the stars, the profile, the stored ratings.
  function adoptModel(model) {
    const given = model && model.rating_scale;
    if (given && Array.isArray(given.values) && given.values.length) {
      scale = {
        low: Number(given.low),
        high: Number(given.high),
        step: Number(given.step),
        values: given.values.map(Number),
      };
    }
    if (model && Array.isArray(model.user_fields)) {
      userFields = PROFILE_FIELDS.filter((f) => model.user_fields.includes(f));
    }
    const dataset = model && model.configs && model.configs.data && model.configs.data.dataset;
    if (typeof dataset === "string") storageKey = `${STORAGE_PREFIX}${dataset}`;
    // No user fields (the CSV releases): the page does not ask for any.
    els.profile.hidden = userFields.length === 0;
    for (const node of els.profileForm.querySelectorAll("[data-field]")) {
      node.hidden = !userFields.includes(node.dataset.field);
    }
    const half = starMode() === "half" ? ", half stars too" : "";
    els.ratingsEmpty.textContent = `No ratings yet: rate movies from the search results (${formatRating(scale.low)}–${formatRating(scale.high)} stars${half}).`;
  }

  async function loadModel() {
    try {
      const model = await getJSON("/model");
      adoptModel(model);
      els.modelInfo.textContent = describeModel(model);
      els.modelInfo.dataset.state = "ready";
      return model;
    } catch (err) {
      els.modelInfo.textContent = "The model service is not reachable.";
      els.modelInfo.dataset.state = "error";
      showError(`Could not reach the model: ${err.message}`);
    }
  }

  // ---------- wiring ----------

  els.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    search(els.searchInput.value);
  });
  els.searchInput.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => search(els.searchInput.value), SEARCH_DELAY_MS);
  });
  els.clearRatings.addEventListener("click", () => {
    ratings.clear();
    ratingsChanged();
  });
  els.kSelect.addEventListener("change", scheduleRecommend);
  els.profileForm.addEventListener("change", scheduleRecommend);
  els.profileForm.addEventListener("submit", (event) => event.preventDefault());

  els.onboardingMore.addEventListener("click", () => {
    for (const item of onboardingPage()) skipped.add(item.item_id);
    saveSkipped();
    renderOnboarding();
  });

  async function start() {
    // The model first: its scale says which stored ratings and which stars the page shows.
    const model = await loadModel();
    loadRatings();
    loadSkipped();
    renderRatings();
    renderSearchResults(); // a search answered before the model was drawn with its stars
    loadOnboarding(model);
    scheduleRecommend();
  }

  start();
})();
