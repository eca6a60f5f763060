"""The taste model: its co-occurrence, its local update and its meta-gradient, on small
hand-made catalogues in float64, and its ranking floor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from melu.config import FAST_WEIGHTS, RATING_WEIGHTS, MetaConfig, ModelConfig, RatingScale
from melu.cooccurrence import Cooccurrence, neighbour_lists, normalised_cooccurrence
from melu.features import FieldSpec
from melu.objectives import ITEM_ID_COLUMN, Episode
from melu.ranking import rank, top_k_row
from melu.taste import TasteNet
from melu.taste_learner import TasteLearner

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 12  # catalogue rows 1..12; row 0 is padding
N_IDS = 10  # rows 1..9 have training ratings (ids 1..9); rows 10..12 are new items (id 0)
USER_SPECS = [
    FieldSpec("gender", 3, 0, 1, False),
    FieldSpec("age", 4, 1, 1, False),
]
ITEM_SPECS = [
    FieldSpec("item", N_IDS, ITEM_ID_COLUMN, 1, False),
    FieldSpec("rate", 3, 1, 1, False),
    FieldSpec("year", 1, 2, 1, False),
    FieldSpec("genre", 5, 3, 2, True),
]
MODEL = ModelConfig(
    objective="taste",
    taste_dim=6,
    rating_dim=3,
    embedding_dim=4,
    item_fields=("rate", "genre"),
    user_fields=("gender", "age"),
    taste_id_dropout=0.0,
    user_field_dropout=0.0,
)
META = MetaConfig(local_steps=2, local_lr=0.3)
STEPPABLE_WITHOUT_COOCCURRENCE = dataclasses.replace(MODEL, cooccurrence=False).taste_fast_weights


def table() -> torch.Tensor:
    rng = np.random.default_rng(0)
    rows = [[0, 0, 0, 0, 0]]
    for r in range(1, N_ITEMS + 1):
        item_id = r if r < N_IDS else 0
        genres = sorted(rng.choice(np.arange(1, 5), size=2, replace=False).tolist())
        rows.append([item_id, int(rng.integers(1, 3)), 0, *genres])
    return torch.tensor(rows, dtype=torch.long)


TABLE = table()
RECOMMENDABLE = TABLE[:, ITEM_ID_COLUMN] > 0
USERS = torch.tensor([[1, 2], [2, 1], [0, 0]])
# Training ratings: (user, item id) pairs for the co-occurrence.
PAIRS = np.array(
    [(u, i) for u in range(8) for i in range(1, N_IDS) if (u * 7 + i * 3) % 4 != 0],
    dtype=np.int64,
)


def learner(
    dtype: torch.dtype = torch.float64,
    cooccurrence: bool = True,
    genre: bool = False,
    **meta: object,
) -> TasteLearner:
    """A small taste model (``cooccurrence``: with the co-occurrence term, fitted on
    :data:`PAIRS`; ``genre``: with the genre preference)."""
    torch.manual_seed(0)
    if not cooccurrence:
        meta.setdefault("fast_weights", STEPPABLE_WITHOUT_COOCCURRENCE)
    if genre and "fast_weights" in meta:
        meta["fast_weights"] = (*meta["fast_weights"], "genre")  # type: ignore[misc]
    cfg = dataclasses.replace(META, **meta)  # type: ignore[arg-type]
    model_cfg = dataclasses.replace(MODEL, cooccurrence=cooccurrence, genre_preference=genre)
    net = TasteNet(USER_SPECS, ITEM_SPECS, model_cfg, cfg, RatingScale())
    out = TasteLearner(net, cfg)
    if net.cooccurrence_table is not None:
        net.cooccurrence_table.fit(PAIRS[:, 0], PAIRS[:, 1])
    with torch.no_grad():
        for p in out.parameters():  # away from the init's symmetries
            p.add_(0.05 * torch.randn_like(p))
    return out.to(dtype)


def support() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, ratings and mask of three users; the second is padded, the third has one rating
    of a new item."""
    rows = torch.tensor([[1, 4, 7, 2], [3, 5, 0, 0], [11, 0, 0, 0]])
    ratings = torch.tensor([[5.0, 4.0, 1.0, 4.0], [4.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    return rows, ratings.double(), rows > 0


def episode(own: bool = True) -> Episode:
    rows, ratings, mask = support()
    targets = torch.tensor([[3, 6, 8], [1, 9, 0], [2, 4, 0]])
    target_ratings = torch.tensor([[4.0, 2.0, 5.0], [5.0, 4.0, 0.0], [3.0, 4.0, 0.0]]).double()
    target_mask = targets > 0
    owned = None
    if own:
        owned = torch.zeros(3, N_IDS, dtype=torch.float64)
        every = torch.cat([rows, targets], 1)
        owned.scatter_(1, TABLE[every, ITEM_ID_COLUMN], 1.0)
        owned[:, 0] = 0.0
    return Episode(
        users=USERS,
        x_spt=TABLE[rows],
        rows_spt=rows,
        y_spt=ratings,
        mask_spt=mask,
        targets=targets,
        target_ratings=target_ratings,
        target_mask=target_mask,
        liked=(target_mask & (target_ratings >= 4)).double(),
        own=owned,
    )


# --- co-occurrence ------------------------------------------------------------------------------


def dense(pairs: np.ndarray) -> np.ndarray:
    """GF-CF's R~^T R~ by hand, diagonal zero."""
    r = np.zeros((pairs[:, 0].max() + 1, N_IDS))
    r[pairs[:, 0], pairs[:, 1]] = 1.0
    du, di = r.sum(1), r.sum(0)
    norm = r / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    p = norm.T @ norm
    np.fill_diagonal(p, 0.0)
    return p


def test_cooccurrence_is_the_normalised_item_item_matrix() -> None:
    p, degree = normalised_cooccurrence(PAIRS[:, 0], PAIRS[:, 1], N_IDS)
    np.testing.assert_allclose(p.toarray(), dense(PAIRS), atol=1e-12)
    np.testing.assert_array_equal(degree, np.bincount(PAIRS[:, 1], minlength=N_IDS))


@pytest.mark.parametrize("block", [1, 4, 64])
def test_neighbour_lists_keep_the_largest_entries_whatever_the_block(block: int) -> None:
    p, degree = normalised_cooccurrence(PAIRS[:, 0], PAIRS[:, 1], N_IDS)
    found = neighbour_lists(PAIRS[:, 0], PAIRS[:, 1], N_IDS, 3, block=block)
    full = p.toarray()
    for row in range(1, N_IDS):
        expected = np.sort(full[row])[::-1][:3]
        np.testing.assert_allclose(found.values[row], expected, rtol=1e-6)
        np.testing.assert_allclose(full[row, found.items[row]], found.values[row], rtol=1e-6)
    np.testing.assert_array_equal(found.degree, degree)
    assert found.scale == pytest.approx(float(p.data.std()), rel=1e-9)


def test_leaving_the_user_out_equals_the_matrix_without_them() -> None:
    """The training-time correction gives exactly the co-occurrence of the other users."""
    table = Cooccurrence(N_IDS, 0).double()
    table.fit(PAIRS[:, 0], PAIRS[:, 1])
    user = 3
    mine = PAIRS[PAIRS[:, 0] == user, 1]
    own = torch.zeros(1, N_IDS, dtype=torch.float64)
    own[0, mine] = 1.0
    ids = torch.tensor([mine[:3]])
    weights = torch.tensor([[1.0, 0.5, 2.0]], dtype=torch.float64)
    corrected = table.scores(ids, weights, own)[0].numpy()
    # The matrix of the others, scaled as the fitted one (degrees stay the full data's).
    others = PAIRS[PAIRS[:, 0] != user]
    r = np.zeros((PAIRS[:, 0].max() + 1, N_IDS))
    r[others[:, 0], others[:, 1]] = 1.0
    di = np.bincount(PAIRS[:, 1], minlength=N_IDS)
    du = np.bincount(PAIRS[:, 0])
    norm = r / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    p = norm.T @ norm
    np.fill_diagonal(p, 0.0)
    expected = weights.numpy()[0] @ p[mine[:3]] / float(table.scale)
    expected[0] = 0.0
    np.testing.assert_allclose(corrected, expected, atol=1e-10)


# --- the local update and the meta-gradient -----------------------------------------------------


@pytest.mark.parametrize(("cooccurrence", "genre"), [(True, False), (False, False), (False, True)])
def test_second_order_meta_gradient_matches_finite_differences(
    cooccurrence: bool, genre: bool
) -> None:
    """Gradcheck of the episode loss, through two local steps, w.r.t. meta-parameters the
    steps depend on (the step sizes, the pooled embeddings, the rating biases)."""
    model = learner(cooccurrence=cooccurrence, genre=genre)
    model.train()
    ep = episode()
    names = ["net.step_size.user", "net.rating_scale", "net.item_id.weight", "net.mean"]
    names += ["net.step_size.genre"] if genre else []
    base = dict(model.named_parameters())
    inputs = tuple(base[n].detach().clone().requires_grad_() for n in names)

    def loss(*values: torch.Tensor) -> torch.Tensor:
        params = {**base, **dict(zip(names, values, strict=True))}
        return torch.func.functional_call(
            model, params, (ep, TABLE, RECOMMENDABLE), strict=False
        ).sum()

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_first_order_drops_the_second_order_terms() -> None:
    second, first = learner(), learner(first_order=True)
    grads = []
    for model in (second, first):
        model.train()
        model.zero_grad()
        model.losses(episode(), TABLE, RECOMMENDABLE).sum().backward()
        grads.append(model.net.step_size["user"].grad.clone())
    # A step size reaches the query loss only through the step, in both orders, but the
    # second order also differentiates the step's gradient: the two differ.
    assert not torch.allclose(grads[0], grads[1])
    assert torch.isfinite(grads[1]).all()


@pytest.mark.parametrize("cooccurrence", [True, False])
def test_batched_losses_equal_one_user_at_a_time(cooccurrence: bool) -> None:
    model = learner(cooccurrence=cooccurrence)
    model.train()
    ep = episode(own=cooccurrence)
    batched = model.losses(ep, TABLE, RECOMMENDABLE)
    for b in range(3):
        one = Episode(*(None if t is None else t[b : b + 1] for t in ep))
        alone = model.losses(one, TABLE, RECOMMENDABLE)
        torch.testing.assert_close(alone[0], batched[b], rtol=1e-10, atol=1e-10)


def test_padding_changes_nothing() -> None:
    model = learner().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    narrow = model.adapt(USERS[:1], rows[:1, :3], TABLE[rows[:1, :3]], ratings[:1, :3],
                         mask[:1, :3], side)  # fmt: skip
    wide = torch.cat([rows[:1, :3], torch.zeros(1, 5, dtype=torch.long)], 1)
    padded = model.adapt(
        USERS[:1],
        wide,
        TABLE[wide],
        torch.cat([ratings[:1, :3], torch.zeros(1, 5, dtype=torch.float64)], 1),
        wide > 0,
        side,
    )
    a, b = model.scores(narrow, side), model.scores(padded, side)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cooccurrence", [True, False])
def test_local_steps_lower_the_support_loss_and_leave_the_meta_parameters(
    cooccurrence: bool,
) -> None:
    model = learner(cooccurrence=cooccurrence).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    state = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=3)
    assert bool((state.loss_after < state.loss_before).all())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    zero = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=0)
    torch.testing.assert_close(zero.loss_before, zero.loss_after)
    assert not torch.allclose(model.scores(state, side)[0], model.scores(zero, side)[0])


def test_rating_start_shrinks_towards_the_population() -> None:
    """One 5-star rating moves the predicted ratings less than ten."""
    model = learner().eval()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    shifts = []
    for n in (1, 9):
        rows = torch.arange(1, n + 1).unsqueeze(0)
        ratings = torch.full((1, n), 5.0, dtype=torch.float64)
        state = model.adapt(USERS[2:3], rows, TABLE[rows], ratings, rows > 0, side, steps=0)
        shifts.append(float(state.fast.rating_bias[0]))
    assert 0 < shifts[0] < shifts[1]


def test_half_star_levels() -> None:
    net = TasteNet(USER_SPECS, ITEM_SPECS, MODEL, META, RatingScale(0.5, 5.0, 0.5))
    levels = net.levels(torch.tensor([0.5, 1.0, 4.5, 5.0, 0.0]))
    assert levels.tolist() == [1, 2, 9, 10, 0]
    assert net.rating_scale.shape[0] == 11


def test_a_model_without_user_fields() -> None:
    net = TasteNet([], ITEM_SPECS, MODEL, META, RatingScale())
    model = TasteLearner(net, META).double().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    users = torch.zeros(3, 0, dtype=torch.long)
    state = model.adapt(users, rows, TABLE[rows], ratings, mask, side)
    assert torch.isfinite(model.scores(state, side)[0]).all()


def test_field_dropout_trains_the_not_given_index() -> None:
    cfg = dataclasses.replace(MODEL, user_field_dropout=0.5)
    torch.manual_seed(1)
    net = TasteNet(USER_SPECS, ITEM_SPECS, cfg, META, RatingScale())
    model = TasteLearner(net, META).double().train()
    model.losses(episode(own=False), TABLE, RECOMMENDABLE).sum().backward()
    grad = net.user.tables["gender"].weight.grad
    assert grad is not None and bool(grad[0].abs().sum() > 0)


# --- the ranking floor ----------------------------------------------------------------------------


def test_rank_puts_rows_below_the_floor_last() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    allowed = torch.tensor([[False, True, True, True, True]])
    above = torch.tensor([[True, False, True, False, True]])
    order, n = rank(scores, allowed, above)
    assert order[0, : int(n[0])].tolist() == [2, 4, 1, 3]
    pool = torch.arange(1, 5)
    assert top_k_row(scores[0], pool, 3, above[0]).tolist() == [2, 4, 1]
    assert top_k_row(scores[0], pool, 1, above[0]).tolist() == [2]


# --- MAML's guarantees, as tests/test_maml.py gives them for MeLU's network ----------------------


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(("cooccurrence", "genre"), [(True, False), (False, False), (False, True)])
def test_every_meta_parameter_gets_a_meta_gradient(
    first_order: bool, cooccurrence: bool, genre: bool
) -> None:
    """The query loss reaches every meta-parameter through the start and the local steps:
    the embeddings, the pooling, the shrinkage, the co-occurrence's start (where the model has
    the term) and every step size and gate of the fast weights the steps adapt (first order
    too: it drops the gradient's own derivative, not the step). A model without the term has
    no parameter the query loss cannot reach."""
    model = learner(first_order=first_order, cooccurrence=cooccurrence, genre=genre)
    model.train()
    model.zero_grad()
    model.losses(episode(own=cooccurrence), TABLE, RECOMMENDABLE).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().sum()) > 0, name


def test_zero_steps_leave_the_meta_learned_start() -> None:
    model = learner().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    state = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=0)
    start = model.net.start(model.net.pool(model.support(USERS, rows, TABLE[rows], ratings, mask)))
    for name, got, expected in zip(start._fields, state.fast, start, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


def test_only_the_chosen_fast_weights_take_the_step() -> None:
    """``MetaConfig.fast_weights`` (``melu train --fast-weights``): the step moves the fast
    weights named there and leaves the others at their meta-learned start."""
    rows, ratings, mask = support()
    for chosen in (("user",), ("user", "rating_bias")):
        model = learner(fast_weights=chosen).eval()
        side = model.catalogue_side(TABLE, RECOMMENDABLE)
        start = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=0).fast
        moved = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=1).fast
        for name, before, after in zip(FAST_WEIGHTS, start, moved, strict=True):
            assert torch.equal(before, after) == (name not in chosen), name


def test_skipping_the_step_the_schedule_scales_by_0_changes_nothing() -> None:
    """Where the schedule gives every user of a batch a multiple of 0 (as validation chose
    for 1-7 ratings on MeLU's data), CatalogueScorer skips the step's passes over the
    catalogue: the same fast weights and scores as the step scaled by 0, the loss before the
    step equal to the loss after. One user whose bucket moves makes the batch step."""
    from melu.scoring import CatalogueScorer

    model = learner().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    with torch.no_grad():
        model.net.step_schedule.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
        scorer = CatalogueScorer(model, TABLE, RECOMMENDABLE)
        state = scorer.adapt(USERS, rows, ratings, mask)
        scaled = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=1)
        for got, expected in zip(state.fast, scaled.fast, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(state.loss_before, state.loss_after, rtol=0, atol=0)
        logits, predicted = model.scores(scaled, side)
        ours = scorer.scores(state, USERS)
        kept = RECOMMENDABLE.clone()
        kept[0] = False
        torch.testing.assert_close(ours.rating[:, kept], predicted[:, kept], rtol=0, atol=0)
        assert torch.isfinite(logits[:, kept]).all()
        # A bucket that moves: the batch takes its step, the others still by 0.
        model.net.step_schedule.copy_(torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0]))
        moved = CatalogueScorer(model, TABLE, RECOMMENDABLE).adapt(USERS, rows, ratings, mask)
    assert not torch.equal(moved.fast.user, state.fast.user)
    assert not torch.equal(moved.loss_before, moved.loss_after)


def test_the_step_schedule_scales_the_step_per_support_size() -> None:
    """``TasteNet.step_schedule`` multiplies the step of a user whose support size falls in
    its bucket (the three users: 4 ratings, bucket 4-7; 2 and 1 ratings, bucket 1-3): a
    multiple of 0 keeps the start, 1.5 goes half as far again."""
    model = learner().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)

    def fast_weights(schedule: list[float]) -> list[torch.Tensor]:
        with torch.no_grad():
            model.net.step_schedule.copy_(torch.tensor(schedule))
        return list(model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=1).fast)

    start = fast_weights([0.0] * 5)
    learned = fast_weights([1.0] * 5)
    scheduled = fast_weights([1.5, 0.0, 1.0, 1.0, 1.0])
    multiple = torch.tensor([0.0, 1.5, 1.5], dtype=torch.float64)  # per user
    for base, one, got in zip(start, learned, scheduled, strict=True):
        shape = (-1,) + (1,) * (base.dim() - 1)
        expected = base + multiple.view(shape) * (one - base)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        # (The genre preference of a model without one is empty.)
        assert base.numel() == 0 or not torch.equal(one, base)


def test_the_ratings_take_the_line_of_their_support_size() -> None:
    """``TasteNet.rating_calibration``: every predicted rating of a user (the catalogue's and
    MeLU's query items alike) goes through the line of the user's support-size bucket (the
    three users: 4 ratings, bucket 4-7; 2 and 1 ratings, bucket 1-3), so a user's films keep
    their order; the ranking logits do not change."""
    model = learner().eval()
    rows, ratings, mask = support()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    with torch.no_grad():
        state = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=1)
        logits, raw = model.scores(state, side)
        raw_query = model.predict(state, TABLE[rows])
        lines = [[0.5, 0.9], [-0.2, 1.1], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
        model.net.rating_calibration.copy_(torch.tensor(lines, dtype=torch.float64))
        moved_logits, moved = model.scores(state, side)
        query = model.predict(state, TABLE[rows])
    offset = torch.tensor([-0.2, 0.5, 0.5], dtype=torch.float64).unsqueeze(-1)
    slope = torch.tensor([1.1, 0.9, 0.9], dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(moved, offset + slope * raw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(query, offset + slope * raw_query, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moved_logits, logits, rtol=0, atol=0)
    assert torch.equal(moved.argsort(-1), raw.argsort(-1))


def test_the_rating_fast_weights_can_start_with_their_own_step_size() -> None:
    """``MetaConfig.rating_local_lr`` (``melu train --rating-local-lr``): the rating bias and
    taste start at that step size, the other fast weights at ``local_lr``; unset, all take
    ``local_lr``."""
    for rating_lr, expected in ((None, 0.3), (0.05, 0.05)):
        cfg = dataclasses.replace(META, rating_local_lr=rating_lr)
        net = TasteNet(USER_SPECS, ITEM_SPECS, MODEL, cfg, RatingScale())
        assert set(net.step_size) == set(MODEL.taste_fast_weights)
        for name, size in net.step_size.items():
            want = expected if name in RATING_WEIGHTS else 0.3
            assert torch.allclose(size, torch.full_like(size, want)), name
    # The genre preference's own start (MetaConfig.genre_local_lr), or local_lr's.
    for genre_lr, expected in ((None, 0.3), (0.7, 0.7)):
        cfg = dataclasses.replace(META, genre_local_lr=genre_lr)
        model = dataclasses.replace(MODEL, genre_preference=True)
        size = TasteNet(USER_SPECS, ITEM_SPECS, model, cfg, RatingScale()).step_size["genre"]
        assert size.shape == (4,) and torch.allclose(size, torch.full_like(size, expected))


def test_item_genres_are_the_genre_ids_as_0_1() -> None:
    """``ItemSide.genres``: a film's genres (the table's padded genre ids) as 0/1 over the
    genre vocabulary without "unknown"; a model without the genre preference has none."""
    net = learner(genre=True).net
    got = net.item_side(TABLE).genres
    assert got.shape == (TABLE.shape[0], 4)
    for row, hot in zip(TABLE.tolist(), got.tolist(), strict=True):
        assert {g for g in row[3:] if g > 0} == {g + 1 for g, h in enumerate(hot) if h == 1.0}
    assert learner().net.item_side(TABLE).genres.shape == (TABLE.shape[0], 0)


def test_the_genre_preference_is_the_steps_alone_and_follows_the_liked_genre() -> None:
    """The genre preference starts at 0 (the meta-learned start has no genre term, so its
    lists are the model's without one) and one step turns it to the genres the user liked:
    a user who liked only films of genre 1 ranks the other films of genre 1 higher than the
    start did."""
    model = learner(genre=True).eval()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    genre_1 = [r for r in range(1, TABLE.shape[0]) if 1 in TABLE[r, 3:].tolist()]
    liked = [r for r in genre_1 if bool(RECOMMENDABLE[r])][:3]
    rows = torch.tensor([liked])
    ratings = torch.full((1, 3), 5.0, dtype=torch.float64)
    mask = rows > 0
    users = USERS[:1]
    start = model.adapt(users, rows, TABLE[rows], ratings, mask, side, steps=0)
    moved = model.adapt(users, rows, TABLE[rows], ratings, mask, side, steps=1)
    assert torch.equal(start.fast.genre, torch.zeros_like(start.fast.genre))
    preference = moved.fast.genre[0]
    assert int(preference.argmax()) == 0  # genre id 1
    assert float(preference[0]) > 0
    # Genre 1's other films gain on the rest of the catalogue.
    before, _ = model.scores(start, side)
    after, _ = model.scores(moved, side)
    others = [r for r in range(1, TABLE.shape[0]) if bool(RECOMMENDABLE[r]) and r not in liked]
    ones = torch.tensor([r in genre_1 for r in others])
    gain = (after - before)[0, others]
    assert float(gain[ones].mean()) > float(gain[~ones].mean())


def test_explanations_split_the_genre_term_among_the_liked_items_that_share_a_genre() -> None:
    """With the genre preference, what "because you loved X" weighs (``support_parts``) holds
    each listed item's genre term, split among the liked support items sharing a genre with
    it: the parts beside the pooled ones sum to the term, and a support item rated below
    "liked" gets none of it."""
    model = learner(cooccurrence=False, genre=True).eval()
    side = model.catalogue_side(TABLE, RECOMMENDABLE)
    rows, ratings, mask = support()
    state = model.adapt(USERS, rows, TABLE[rows], ratings, mask, side, steps=1)
    listed = RECOMMENDABLE.nonzero().squeeze(1)
    parts = model.support_parts(state, 0, side, listed)
    support_side = state.support.side.take(torch.tensor(0))
    items = side.items.take(listed)
    assert state.support.parts is not None
    genre_parts = parts - state.support.parts[0] @ items.out.t()
    term = state.fast.genre[0] @ items.genres.t()
    liked = state.support.liked[0]
    shares = (support_side.genres @ items.genres.t())[liked].sum(0) > 0
    torch.testing.assert_close(genre_parts.sum(0)[shares], term[shares])
    assert torch.equal(genre_parts[:, ~shares], torch.zeros_like(genre_parts[:, ~shares]))
    assert torch.equal(genre_parts[~liked], torch.zeros_like(genre_parts[~liked]))
    assert bool(shares.any()) and float(term[shares].abs().sum()) > 0
