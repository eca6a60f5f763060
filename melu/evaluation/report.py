"""The evaluation report: tidy rows of every measurement, JSON, a log table and Markdown.

:class:`Report` holds both protocols: MeLU's (rows and comparisons over each user's 10 query
items) and the catalogue protocol (ranking rows, list statistics, the predicted ratings of the
held-out items, the loved-genre test, onboarding). :meth:`Report.to_markdown` opens with a
verdict computed from the paired comparisons, never written by hand, then says what the terms
mean and what the fine-tuning changes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from melu.evaluation.metrics import ALL_SUPPORT, METRICS, RANKING_METRICS, SUPPORT_BUCKETS

MELU = "melu"
# The model's other rows: the same checkpoint with zero local steps (its fast weights at the
# meta-learned start), adapted on the same ratings with no demographics given, and adapted
# with its list not blended with EDLAE's fold-in (melu.fold_in; only where it has one).
ZERO_STEPS = "melu (zero local steps)"
NO_DEMOGRAPHICS = "melu (no demographics)"
NO_FOLD_IN = "melu (no fold-in)"
MODEL_VARIANTS: tuple[str, ...] = (ZERO_STEPS, NO_DEMOGRAPHICS, NO_FOLD_IN)


@dataclass(frozen=True)
class MetricRow:
    """One metric of one method on one scenario, over all users or one support-size bucket."""

    scenario: str
    method: str
    support: str  # "all" or a SUPPORT_BUCKETS label
    metric: str
    value: float | None  # None where the metric does not apply (MAE of a random order)
    ci_low: float | None
    ci_high: float | None
    n_tasks: int


@dataclass(frozen=True)
class Comparison:
    """MeLU minus a baseline on one metric, with a paired bootstrap interval of the difference."""

    scenario: str
    baseline: str
    metric: str
    melu: float
    other: float
    diff: float
    ci_low: float | None
    ci_high: float | None
    melu_better: bool  # on the point estimates
    significant: bool | None  # the interval excludes 0; None without bootstrap


@dataclass(frozen=True)
class RankingRow:
    """One catalogue-protocol metric of one method for users given ``support_size`` ratings."""

    scenario: str
    protocol: str  # "catalogue" (every item with training ratings) | "shelf" (new items)
    support_size: int
    relevance: str  # "liked" (held-out rating >= 4) | "watched" (any held-out rating)
    method: str
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n_users: int


@dataclass(frozen=True)
class RankingComparison:
    """MeLU minus a baseline on a catalogue metric, paired bootstrap over users."""

    scenario: str
    support_size: int
    relevance: str
    baseline: str
    metric: str
    melu: float
    other: float
    diff: float
    ci_low: float | None
    ci_high: float | None
    verdict: str  # "better" | "worse" | "tied" (the interval contains 0) | "-" (no bootstrap)


@dataclass(frozen=True)
class ListRow:
    """What one method's top-10 lists look like over a scenario's users."""

    scenario: str
    protocol: str
    support_size: int
    method: str
    coverage: float  # distinct items in all top-10 lists / candidates
    popularity_percentile: float  # mean percentile of the listed items' training counts
    n_users: int
    setting: str  # the baseline's setting, chosen on validation users ("" if none)


@dataclass(frozen=True)
class OnboardingRow:
    """One onboarding strategy on one scenario: effort (``items_shown``, ``reached_5``) or a
    catalogue metric of the list after adapting on what the onboarding list got."""

    scenario: str
    strategy: str
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n_users: int


@dataclass(frozen=True)
class PredictionRow:
    """The predicted ratings of one model row for users given ``support_size`` ratings:
    against their held-out ratings (MAE, calibration error over half-star bins of the
    prediction, mean predicted and actual), the share of their top 10 predicted at or above
    their own mean, and their support's (top-rated, bottom-rated) pairs ordered right."""

    scenario: str
    support_size: int
    method: str
    mae: float
    calibration_error: float
    mean_predicted: float
    mean_actual: float
    top_above_mean: float
    pairs: int  # (5-star, 1-star) pairs of support items
    pairs_ordered: float | None  # share predicted in the right order; None without pairs
    n_users: int
    n_ratings: int


@dataclass(frozen=True)
class GenreRow:
    """The loved-genre test: share of the top 10 in the genre rated 5 (a far one rated 1)."""

    method: str
    loved: str
    far: str
    share: float


@dataclass(frozen=True)
class Report:
    """Everything one evaluation measured; :meth:`to_frame` gives the tidy table."""

    rows: tuple[MetricRow, ...]
    comparisons: tuple[Comparison, ...]
    info: dict[str, Any]
    ranking: tuple[RankingRow, ...] = ()
    ranking_comparisons: tuple[RankingComparison, ...] = ()
    lists: tuple[ListRow, ...] = ()
    genre: tuple[GenreRow, ...] = ()
    onboarding: tuple[OnboardingRow, ...] = ()
    predictions: tuple[PredictionRow, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """Columns: scenario, method, support, metric, value, ci_low, ci_high, n_tasks."""
        columns = [f.name for f in dataclasses.fields(MetricRow)]
        frame = pd.DataFrame([dataclasses.asdict(r) for r in self.rows], columns=columns)
        for col in ("value", "ci_low", "ci_high"):
            frame[col] = frame[col].astype(float)
        return frame

    def comparisons_frame(self) -> pd.DataFrame:
        columns = [f.name for f in dataclasses.fields(Comparison)]
        return pd.DataFrame([dataclasses.asdict(c) for c in self.comparisons], columns=columns)

    @property
    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(r.scenario for r in self.rows))

    @functools.cached_property
    def _rows_by_key(self) -> dict[tuple[str, str, str, str], MetricRow]:
        return {(r.scenario, r.method, r.metric, r.support): r for r in self.rows}

    @functools.cached_property
    def _ranking_by_key(self) -> dict[tuple[str, str, int, str, str], RankingRow]:
        return {
            (r.scenario, r.method, r.support_size, r.metric, r.relevance): r for r in self.ranking
        }

    def value(
        self, scenario: str, method: str, metric: str, support: str = ALL_SUPPORT
    ) -> float | None:
        return self._rows_by_key[(scenario, method, metric, support)].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
            "ranking": [dataclasses.asdict(r) for r in self.ranking],
            "ranking_comparisons": [dataclasses.asdict(c) for c in self.ranking_comparisons],
            "lists": [dataclasses.asdict(r) for r in self.lists],
            "genre": [dataclasses.asdict(r) for r in self.genre],
            "onboarding": [dataclasses.asdict(r) for r in self.onboarding],
            "predictions": [dataclasses.asdict(r) for r in self.predictions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Report:
        return cls(
            rows=tuple(MetricRow(**r) for r in raw["rows"]),
            comparisons=tuple(Comparison(**c) for c in raw["comparisons"]),
            info=dict(raw["info"]),
            ranking=tuple(RankingRow(**r) for r in raw.get("ranking", [])),
            ranking_comparisons=tuple(
                RankingComparison(**c) for c in raw.get("ranking_comparisons", [])
            ),
            lists=tuple(ListRow(**r) for r in raw.get("lists", [])),
            genre=tuple(GenreRow(**r) for r in raw.get("genre", [])),
            onboarding=tuple(OnboardingRow(**r) for r in raw.get("onboarding", [])),
            predictions=tuple(PredictionRow(**r) for r in raw.get("predictions", [])),
        )

    def ranking_frame(self) -> pd.DataFrame:
        """Catalogue-protocol metrics: scenario, protocol, support_size, relevance, method,
        metric, value, ci_low, ci_high, n_users."""
        columns = [f.name for f in dataclasses.fields(RankingRow)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.ranking], columns=columns)

    def lists_frame(self) -> pd.DataFrame:
        columns = [f.name for f in dataclasses.fields(ListRow)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.lists], columns=columns)

    def onboarding_frame(self) -> pd.DataFrame:
        """Onboarding simulation: scenario, strategy, metric, value, ci_low, ci_high, n_users."""
        columns = [f.name for f in dataclasses.fields(OnboardingRow)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.onboarding], columns=columns)

    def predictions_frame(self) -> pd.DataFrame:
        """The model's predicted ratings by number of ratings (:class:`PredictionRow`)."""
        columns = [f.name for f in dataclasses.fields(PredictionRow)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.predictions], columns=columns)

    def genre_frame(self) -> pd.DataFrame:
        columns = [f.name for f in dataclasses.fields(GenreRow)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.genre], columns=columns)

    def ranking_value(
        self,
        scenario: str,
        method: str,
        size: int,
        metric: str = "recall@10",
        relevance: str = "liked",
    ) -> float:
        return self._ranking_by_key[(scenario, method, size, metric, relevance)].value

    def text_table(self) -> str:
        """Fixed-width tables for the log: Recall@10 by ratings given, then MeLU's protocol."""
        lines = []
        for scenario, protocol in self._ranking_scenarios():
            sizes = self._sizes(scenario)
            lines.append(f"{scenario} ({protocol}): liked Recall@10 by ratings given")
            lines.append(f"  {'method':<25}" + "".join(f"{'S=' + str(s):>9}" for s in sizes))
            for method in self._ranking_methods(scenario):
                cells = [self._ranking_get(scenario, method, s, "recall@10") for s in sizes]
                text = "".join(f"{'-':>9}" if v is None else f"{v:>9.4f}" for v in cells)
                lines.append(f"  {method:<25}{text}")
        for scenario in self.scenarios:
            n = self.info["scenarios"][scenario]["tasks"]
            lines.append(f"{scenario} ({n} tasks): MeLU's protocol")
            lines.append(f"  {'method':<25}" + "".join(f"{m:>9}" for m in METRICS))
            for method in self._methods(scenario):
                cells = [self.value(scenario, method, m) for m in METRICS]
                text = "".join(f"{'-':>9}" if v is None else f"{v:>9.4f}" for v in cells)
                lines.append(f"  {method:<25}{text}")
        return "\n".join(lines)

    def verdict(self) -> list[str]:
        """Bullets saying what beats what, from the paired comparisons alone: per scenario and
        S, melu against the baselines; what the local steps and the demographics add; the
        predicted ratings; MeLU's protocol; the loved-genre test."""
        out = []
        for scenario, protocol in self._ranking_scenarios():
            for size in self._sizes(scenario):
                groups: dict[str, list[str]] = {"better": [], "worse": [], "tied": []}
                for c in self._liked_recall_comparisons(scenario, size):
                    if c.verdict in groups and c.baseline not in MODEL_VARIANTS:
                        groups[c.verdict].append(c.baseline)
                if not any(groups.values()):
                    continue
                melu = self._ranking_get(scenario, MELU, size, "recall@10")
                best = self.best_baseline(scenario, size)
                text = f"{scenario} ({protocol}), {size} ratings: melu Recall@10 {_fmt(melu)}"
                if best is not None:
                    text += f", best baseline {best[0]} {_fmt(best[1])}"
                parts = [f"{v} than {', '.join(m)}" for v, m in groups.items() if m]
                out.append(
                    f"- {text}; melu is " + "; ".join(parts).replace("tied than", "tied with")
                )
            for variant, what in (
                (ZERO_STEPS, "the local steps add (melu minus the same checkpoint with zero "
                 "local steps)"),
                (NO_DEMOGRAPHICS, "demographics add (melu minus the same ratings without them)"),
                (NO_FOLD_IN, "EDLAE's fold-in adds (melu minus its list without the blend)"),
            ):  # fmt: skip
                parts = [
                    f"S={size} {c.diff:+.4f} ({c.verdict})"
                    for size in self._sizes(scenario)
                    for c in self._liked_recall_comparisons(scenario, size)
                    if c.baseline == variant
                ]
                if parts:
                    out.append(f"- {scenario} ({protocol}): what {what}: " + ", ".join(parts))
        out += self._prediction_verdict()
        for scenario in self.scenarios:
            groups = {"better": [], "worse": [], "tied": []}
            for q in self.comparisons:
                if q.scenario != scenario or q.metric != "mae" or q.significant is None:
                    continue
                key = "tied" if not q.significant else "better" if q.melu_better else "worse"
                groups[key].append(q.baseline)
            if any(groups.values()):
                parts = [f"{v} than {', '.join(m)}" for v, m in groups.items() if m]
                mae = _fmt(self._get(scenario, MELU, "mae", ALL_SUPPORT))
                out.append(
                    f"- {scenario} (MeLU protocol), MAE {mae}: melu is "
                    + "; ".join(parts).replace("tied than", "tied with")
                )
        genre = self.genre_frame()
        if len(genre):
            means = genre.groupby("method")["share"].mean().sort_values(ascending=False)
            out.append(
                "- loved-genre share of the top 10: "
                + ", ".join(f"{m} {v:.2f}" for m, v in means.items())
            )
        return out

    def _liked_recall_comparisons(self, scenario: str, size: int) -> list[RankingComparison]:
        return [
            c
            for c in self.ranking_comparisons
            if (c.scenario, c.support_size, c.relevance, c.metric)
            == (scenario, size, "liked", "recall@10")
        ]

    def _prediction_verdict(self) -> list[str]:
        """One bullet per scenario on melu's predicted ratings by number of ratings."""
        out = []
        frame = self.predictions_frame()
        for scenario in dict.fromkeys(frame["scenario"]):
            rows = frame[(frame["scenario"] == scenario) & (frame["method"] == MELU)]
            if rows.empty:
                continue
            sizes = "/".join(str(s) for s in rows["support_size"])
            mae = "/".join(f"{v:.3f}" for v in rows["mae"])
            ece = "/".join(f"{v:.3f}" for v in rows["calibration_error"])
            pairs = int(rows["pairs"].sum())
            ordered = (rows["pairs_ordered"].fillna(0) * rows["pairs"]).sum()
            text = (
                f"- {scenario}, melu's predicted ratings of held-out items from {sizes} "
                f"ratings: MAE {mae}, calibration error {ece}; top 10 at or above the user's "
                f"own mean: {rows['top_above_mean'].min():.1%} at the least"
            )
            if pairs:
                text += (
                    f"; 5-star support items predicted above 1-star ones in "
                    f"{ordered / pairs:.1%} of {pairs} pairs"
                )
            out.append(text)
        return out

    def to_markdown(self) -> str:
        info = self.info
        ci = (
            f"95% percentile bootstrap intervals over users ({info['bootstrap']} resamples, "
            f"seed {info['seed']}) in brackets"
            if info["bootstrap"]
            else "no confidence intervals (bootstrap disabled)"
        )
        out = [
            "# Cold-start evaluation",
            "",
            f"- checkpoint: `{info['checkpoint']}` (best epoch {info['best_epoch']}, "
            f"validation MAE {_fmt(info['best_val_mae'])})",
            f"- data: `{info['data_dir']}` ({info['data_config']['dataset']}, "
            f"data seed {info['data_config']['seed']})",
            f"- {ci}; created {info['created']}",
            "",
            "## Verdict",
            "",
            "Paired bootstrap over users; *tied* where the 95% interval of the difference "
            "contains 0. Catalogue rows use liked Recall@10.",
            "",
            *self.verdict(),
            "",
            "## Terms",
            "",
            "- *scenario*: a group of users and items: `validation` (training-era users and "
            "items, users never trained on), `new_user` (new users, existing items), "
            "`new_item` (existing users, new items), `new_user_new_item`.",
            "- *task*: one user's ratings in a scenario; *support*: the ratings the model is "
            "given (it adapts on them); *query*: held-out ratings it must predict or rank.",
            "- *catalogue protocol* (what `/recommend` serves): S support ratings drawn per "
            "user; every candidate item not in the support is ranked; *liked* = held-out "
            "items rated >= 4 count as hits, *watched* = any held-out item. Candidates: items "
            "with training ratings; on the *shelf* (new releases), new items only. A model "
            "that keeps the ranking floor lists the items it predicts at or above the user's "
            "own (shrunk) mean rating before the others, as `/recommend` does.",
            f"- `{MELU}`: the checkpoint adapted on the S ratings (its local steps); "
            f"`{ZERO_STEPS}`: the same checkpoint with zero local steps, the meta-learned "
            f"start (not a model trained without steps); `{NO_DEMOGRAPHICS}`: adapted on the "
            f"same ratings with no demographics given (user-table row 0); `{NO_FOLD_IN}`: "
            "adapted, its list not blended with EDLAE's fold-in (where the model has one).",
            "- *predicted ratings* (catalogue protocol): the model's rating of each held-out "
            "item, clipped to the data's scale: MAE per user, and the calibration error (the "
            "predictions binned to half stars, each bin's |mean predicted - mean actual| "
            "weighted by its share of the ratings).",
            "- *MeLU's protocol*: all but 10 ratings as support; MAE/RMSE of the 10 query "
            "ratings and nDCG (gain 2^r - 1) of ranking those 10 already-rated items. It "
            "cannot see the catalogue ranking: random order already scores nDCG@3 ~0.6.",
            "- Rows that coincide by construction: on new items every item has the same "
            "(global) item mean, so `item_mean` = `global_mean` and `user_item_bias` = "
            "`user_mean` there; `user_mean` and `global_mean` rank the 10 items alike.",
            "- Baseline settings (in the list table) were chosen per S on validation users; "
            "their `validation` rows are therefore in-sample and optimistic. The shelf has no "
            "validation users of its own: its baselines' settings were chosen on the "
            "validation users' catalogue lists (content only, each item's popularity prior "
            "predicted as if it were new).",
            "",
        ]
        fine_tuning = info.get("fine_tuning", [])
        if fine_tuning:
            out += ["## What the fine-tuning changes", "", *(f"- {line}" for line in fine_tuning)]
            out.append("")
        out += self._ranking_markdown()
        out += self._predictions_markdown()
        out += ["## MeLU's protocol: metrics per scenario", ""]
        for scenario in self.scenarios:
            out += [f"### {scenario} ({info['scenarios'][scenario]['tasks']} tasks)", ""]
            out += _md_table(
                ["method", *METRICS],
                [
                    [method, *(self._cell(scenario, method, m) for m in METRICS)]
                    for method in self._methods(scenario)
                ],
            )
            out.append("")
        out += ["## MeLU's protocol by support size (MAE / nDCG@3)", ""]
        labels = [label for label, _, _ in SUPPORT_BUCKETS]
        body = []
        for scenario in self.scenarios:
            counts = info["scenarios"][scenario]["support_buckets"]
            body.append([f"*{scenario}: tasks*", *(str(counts.get(lb, 0)) for lb in labels)])
            for method in self._methods(scenario):
                if method == "random":
                    continue
                cells = []
                for lb in labels:
                    mae = self._get(scenario, method, "mae", lb)
                    ndcg = self._get(scenario, method, "ndcg@3", lb)
                    cells.append(f"{_fmt(mae)} / {_fmt(ndcg)}" if ndcg is not None else "")
                body.append([f"{scenario}: {method}", *cells])
        out += _md_table(["scenario: method", *labels], body)
        out += [
            "",
            "## MeLU's protocol: MeLU minus each baseline (paired bootstrap)",
            "",
            "Negative MAE differences and positive nDCG differences favour MeLU; "
            "* marks intervals that exclude 0 (else: tied).",
            "",
        ]
        shown = ("mae", "ndcg@3", "ndcg@10")
        body = []
        for scenario in self.scenarios:
            for method in self._methods(scenario):
                if method == MELU:
                    continue
                cells = []
                for metric in shown:
                    c = self._comparison(scenario, method, metric)
                    cells.append("-" if c is None else _fmt_diff(c))
                body.append([scenario, method, *cells])
        out += _md_table(["scenario", "baseline", *(f"Δ {m}" for m in shown)], body)
        tuned = info.get("tuning", {})
        if tuned:
            out += ["", "## Settings chosen on validation users", ""]
            out += [f"- `{name}`: {json.dumps(value)}" for name, value in tuned.items()]
        out += ["", "## Methods", ""]
        out += [f"- `{name}`: {text}" for name, text in info.get("methods", {}).items()]
        return "\n".join(out) + "\n"

    def _predictions_markdown(self) -> list[str]:
        if not self.predictions:
            return []
        out = [
            "## Predicted ratings by number of ratings given",
            "",
            "Held-out items of the catalogue protocol's users (candidates only). *calibration "
            "error*: predictions binned to half stars, |mean predicted - mean actual| per bin "
            "weighted by its share; *top 10 >= own mean*: share of the listed items predicted "
            "at or above the user's own mean (for the taste model, its shrunk mean; for MeLU's "
            "network, the support's mean); *5 over 1*: the support's 5-star items predicted "
            "above its 1-star ones after adapting on them (pairs in brackets).",
            "",
        ]
        body = []
        for r in self.predictions:
            order = "-" if r.pairs_ordered is None else f"{r.pairs_ordered:.3f} ({r.pairs})"
            body.append(
                [
                    str(r.scenario),
                    str(r.support_size),
                    str(r.method),
                    str(r.n_users),
                    str(r.n_ratings),
                    f"{r.mae:.4f}",
                    f"{r.calibration_error:.4f}",
                    f"{r.mean_predicted:.3f} / {r.mean_actual:.3f}",
                    f"{r.top_above_mean:.3f}",
                    order,
                ]
            )
        out += _md_table(
            [
                "scenario",
                "S",
                "method",
                "users",
                "ratings",
                "MAE",
                "calibration error",
                "mean predicted / actual",
                "top 10 >= own mean",
                "5 over 1",
            ],
            body,
        )
        out.append("")
        return out

    def _ranking_markdown(self) -> list[str]:
        out: list[str] = []
        for scenario, protocol in self._ranking_scenarios():
            sizes = self._sizes(scenario)
            methods = self._ranking_methods(scenario)
            for relevance in ("liked", "watched"):
                out += [
                    f"## {scenario} ({protocol}): {relevance} Recall@10 by ratings given",
                    "",
                ]
                header = ["method", *(f"S={s}" for s in sizes)]
                body = [
                    [
                        m,
                        *(
                            self._ranking_cell(scenario, m, s, "recall@10", relevance)
                            for s in sizes
                        ),
                    ]
                    for m in methods
                ]
                users = [str(self._ranking_users(scenario, s, relevance)) for s in sizes]
                out += _md_table(header, [["*users*", *users], *body])
                out.append("")
            for size in sizes:
                out += [f"### {scenario} ({protocol}), S={size}: every metric (liked)", ""]
                body = []
                for m in methods:
                    cells = [
                        self._ranking_cell(scenario, m, size, metric, "liked")
                        for metric in RANKING_METRICS
                    ]
                    row = self._list_row(scenario, size, m)
                    extra = (
                        [f"{row.coverage:.3f}", f"{row.popularity_percentile:.1f}", row.setting]
                        if row
                        else ["-", "-", ""]
                    )
                    body.append([m, *cells, *extra])
                out += _md_table(
                    ["method", *RANKING_METRICS, "coverage", "pop. pct", "setting"], body
                )
                out.append("")
        genre = self.genre_frame()
        if len(genre):
            out += [
                "## Loved-genre test",
                "",
                "A user with no demographics rates the 5 most-rated movies of a genre the "
                "scale's top rating and 3 of the genre least like it its bottom rating; the "
                "share of their top 10 in the loved genre (the model's floor kept; baselines "
                "with the setting chosen for S=10).",
                "",
            ]
            pivot = genre.pivot_table(index="loved", columns="method", values="share")
            methods = list(dict.fromkeys(genre["method"]))
            body = [
                [
                    f"{loved} (far: {genre[genre.loved == loved].far.iloc[0]})",
                    *(f"{pivot.loc[loved, m]:.1f}" for m in methods),
                ]
                for loved in pivot.index
            ]
            body.append(["**mean**", *(f"**{pivot[m].mean():.2f}**" for m in methods)])
            out += _md_table(["loved genre", *methods], body)
            out.append("")
        onboarding = self.onboarding_frame()
        if len(onboarding):
            out += [
                "## Onboarding (simulated with real histories)",
                "",
                "Each user walks down a strategy's list, rating what is in their history and "
                "skipping the rest, until 5 ratings; the model then adapts on those and ranks "
                "the catalogue (liked held-out items are the hits). `random_ratings`: 5 random "
                "ratings of the same users.",
                "",
            ]
            shown = ("items_shown", "reached_5", "recall@10", "ndcg@10")
            body = []
            for key, group in onboarding.groupby(["scenario", "strategy"], sort=False):
                cells = []
                for metric in shown:
                    hit = group[group.metric == metric]
                    if hit.empty:
                        cells.append("-")
                        continue
                    r = hit.iloc[0]
                    text = f"{r.value:.3f}" if metric != "items_shown" else f"{r.value:.1f}"
                    if pd.notna(r.ci_low):
                        text += f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                    cells.append(text)
                body.append([str(key[0]), str(key[1]), *cells])
            out += _md_table(["scenario", "strategy", *shown], body)
            out.append("")
        return out

    # --- helpers ---

    def _ranking_scenarios(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((r.scenario, r.protocol) for r in self.ranking))

    def _sizes(self, scenario: str) -> list[int]:
        return sorted({r.support_size for r in self.ranking if r.scenario == scenario})

    def _ranking_methods(self, scenario: str) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.ranking if r.scenario == scenario))

    def _ranking_get(
        self, scenario: str, method: str, size: int, metric: str, relevance: str = "liked"
    ) -> float | None:
        try:
            return self.ranking_value(scenario, method, size, metric, relevance)
        except KeyError:
            return None

    def _ranking_users(self, scenario: str, size: int, relevance: str) -> int:
        return next(
            (
                r.n_users
                for r in self.ranking
                if (r.scenario, r.support_size, r.relevance) == (scenario, size, relevance)
            ),
            0,
        )

    def _ranking_cell(
        self, scenario: str, method: str, size: int, metric: str, relevance: str
    ) -> str:
        r = self._ranking_by_key.get((scenario, method, size, metric, relevance))
        return "-" if r is None else _with_ci(r.value, r.ci_low, r.ci_high, digits=3)

    def _list_row(self, scenario: str, size: int, method: str) -> ListRow | None:
        for r in self.lists:
            if (r.scenario, r.support_size, r.method) == (scenario, size, method):
                return r
        return None

    def best_baseline(self, scenario: str, size: int) -> tuple[str, float] | None:
        """The baseline with the highest liked Recall@10 of ``scenario`` at ``size`` ratings
        and that value; the model's rows (``melu`` and its variants) are never baselines."""
        values = [
            (r.method, r.value)
            for r in self.ranking
            if (r.scenario, r.support_size, r.relevance, r.metric)
            == (scenario, size, "liked", "recall@10")
            and not r.method.startswith(MELU)
        ]
        return max(values, key=lambda mv: mv[1]) if values else None

    def _methods(self, scenario: str) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows if r.scenario == scenario))

    def _get(self, scenario: str, method: str, metric: str, support: str) -> float | None:
        try:
            return self.value(scenario, method, metric, support)
        except KeyError:
            return None

    def _cell(self, scenario: str, method: str, metric: str) -> str:
        r = self._rows_by_key.get((scenario, method, metric, ALL_SUPPORT))
        return "-" if r is None else _with_ci(r.value, r.ci_low, r.ci_high, digits=4)

    def _comparison(self, scenario: str, baseline: str, metric: str) -> Comparison | None:
        for c in self.comparisons:
            if (c.scenario, c.baseline, c.metric) == (scenario, baseline, metric):
                return c
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _with_ci(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """A value with its bootstrap interval in brackets, when it has one."""
    if value is None:
        return "-"
    if low is None or high is None:
        return _fmt(value)
    return f"{value:.{digits}f} [{low:.3f}, {high:.3f}]"


def _fmt_diff(c: Comparison) -> str:
    text = f"{c.diff:+.4f}"
    if c.ci_low is not None and c.ci_high is not None:
        text += f" [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
    return text + (" *" if c.significant else "")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines
