"""The meta-learner's gradients, checked against a per-task loop and a hand derivation (float64)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from melu.config import MetaConfig, ModelConfig
from melu.features import FieldSpec
from melu.maml import BATCHED, MetaLearner, TaskFeatures, masked_mse
from melu.model import MeLUNet

USER_SPECS = [FieldSpec("gender", 3, 0, 1, False), FieldSpec("age", 8, 1, 1, False)]
ITEM_SPECS = [
    FieldSpec("rate", 5, 0, 1, False),
    FieldSpec("genre", 7, 1, 3, True),
]
ITEM_WIDTH = 4


def make_learner(
    hidden: tuple[int, ...] = (8, 8),
    residual: bool = True,
    context: bool = False,
    **meta: object,
) -> MetaLearner:
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        embedding_dim=4,
        hidden=hidden,
        item_fields=("rate", "genre"),
        user_fields=("gender", "age"),
        residual=residual,
        embedding_dropout=0.0,
        task_context=context,
    )
    meta_cfg = dataclasses.replace(MetaConfig(local_steps=3, local_lr=0.1), **meta)  # type: ignore[arg-type]
    return MetaLearner(MeLUNet(USER_SPECS, ITEM_SPECS, model_cfg), meta_cfg).double()


def make_batch(n_tasks: int = 5, support: int = 7, query: int = 4, seed: int = 1) -> TaskFeatures:
    """Random tasks with ragged supports (padding at the end of each row)."""
    g = torch.Generator().manual_seed(seed)
    users = torch.stack(
        [
            torch.randint(0, 3, (n_tasks,), generator=g),
            torch.randint(0, 8, (n_tasks,), generator=g),
        ],
        dim=1,
    )

    def items(n: int) -> torch.Tensor:
        rate = torch.randint(0, 5, (n_tasks, n, 1), generator=g)
        genre = torch.randint(0, 7, (n_tasks, n, 3), generator=g)
        return torch.cat([rate, genre], dim=-1)

    sizes = torch.randint(2, support + 1, (n_tasks,), generator=g)
    mask_spt = torch.arange(support).unsqueeze(0) < sizes.unsqueeze(1)
    x_spt = items(support) * mask_spt.unsqueeze(-1)
    y_spt = torch.randint(1, 6, (n_tasks, support), generator=g).double() * mask_spt
    x_qry = items(query)
    y_qry = torch.randint(1, 6, (n_tasks, query), generator=g).double()
    return TaskFeatures(users, x_spt, y_spt, mask_spt, x_qry, y_qry, torch.ones_like(y_qry).bool())


def meta_grads(learner: MetaLearner, batch: TaskFeatures) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    learner.meta_loss(batch).backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def loop_grads(learner: MetaLearner, batch: TaskFeatures) -> dict[str, torch.Tensor]:
    """The reference public MeLU code uses: one task at a time, no padding at all."""
    learner.zero_grad()
    params, rates = learner.meta_params(), learner.rates()
    losses = []
    for t in range(batch.users.shape[0]):
        n = int(batch.mask_spt[t].sum())
        losses.append(
            learner.query_loss_task(
                params, rates, batch.users[t], batch.x_spt[t, :n], batch.y_spt[t, :n],
                batch.mask_spt[t, :n], batch.x_qry[t], batch.y_qry[t], batch.mask_qry[t],
                learner.cfg.local_steps, learner.cfg.first_order,
            )
        )  # fmt: skip
    torch.stack(losses).mean().backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("learn_lr", [False, True])
def test_vmapped_meta_gradient_equals_per_task_loop(
    first_order: bool, adapt: str, learn_lr: bool
) -> None:
    learner = make_learner(
        first_order=first_order, adapt=adapt, learn_local_lr=learn_lr, context=True
    )
    batch = make_batch()
    batched, looped = meta_grads(learner, batch), loop_grads(learner, batch)
    assert batched.keys() == looped.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(
    ("hidden", "residual", "context"),
    [((8, 8), True, True), ((8,), False, False), ((), True, False), ((6, 5, 4), False, True)],
)
def test_closed_form_equals_vmapped_autograd(
    first_order: bool, hidden: tuple[int, ...], residual: bool, context: bool
) -> None:
    """The closed-form local update (melu.closed_form) against torch.func.grad under vmap."""
    closed = make_learner(hidden, residual, context, first_order=first_order)
    generic = make_learner(hidden, residual, context, first_order=first_order, local_update="vmap")
    assert closed.closed_form and not generic.closed_form
    batch = make_batch()
    torch.testing.assert_close(
        closed.task_losses(batch), generic.task_losses(batch), rtol=1e-12, atol=1e-12
    )
    expected = meta_grads(generic, batch)
    got = meta_grads(closed, batch)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_closed_form_adapt_gives_the_vmapped_fast_weights(steps: int) -> None:
    closed = make_learner(context=True).eval()
    generic = make_learner(context=True, local_update="vmap").eval()
    batch = make_batch()
    args = (batch.users, batch.x_spt, batch.y_spt, batch.mask_spt)
    with torch.no_grad():
        got, expected = closed.adapt(*args, steps=steps), generic.adapt(*args, steps=steps)
    assert got.fast.keys() == expected.fast.keys()
    for name in got.fast:
        torch.testing.assert_close(got.fast[name], expected.fast[name], msg=name)
    for field in ("offset", "context", "loss_before", "loss_after"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), msg=field)


def test_batched_prediction_equals_vmapped_per_task_prediction() -> None:
    learner = make_learner(context=True).eval()
    batch = make_batch()
    catalogue = batch.x_qry.reshape(-1, ITEM_WIDTH)
    params = learner.meta_params()
    with torch.no_grad():
        adaptation = learner.adapt(batch.users, batch.x_spt, batch.y_spt, batch.mask_spt)
        # Every tensor of the adaptation per task, its kernel included.
        dims = BATCHED._replace(kernel=0)
        expected = torch.vmap(learner.predict_task, in_dims=(None, dims, 0, 0))(
            params, adaptation, batch.users, batch.x_qry
        )
        torch.testing.assert_close(learner.predict(adaptation, batch.users, batch.x_qry), expected)
        features = learner.item_features(catalogue)
        expected = torch.vmap(learner.predict_task_from_features, in_dims=(None, dims, 0, None))(
            params, adaptation, batch.users, features
        )
        assert adaptation.kernel is not None  # the closed form scores in kernel form...
        got = learner.predict_from_features(adaptation, batch.users, features)
        torch.testing.assert_close(got, expected)
        explicit = adaptation._replace(kernel=None)  # ...or with explicit fast weights
        got = learner.predict_from_features(explicit, batch.users, features)
        torch.testing.assert_close(got, expected)


def hand_derived_grads(
    learner: MetaLearner, batch: TaskFeatures, first_order: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One local step on a linear head p = w.x + b, derived by hand.

    Support loss L_s = mean_j (w.x_j + b - y_j)^2 with Hessian H = 2/n sum_j [x_j;1][x_j;1]^T;
    after w' = w - a grad L_s, the meta-gradient is (I - a H) grad L_q(w') (second order) or
    grad L_q(w') (first order), averaged over tasks.
    """
    layer = learner.net.head.layers[0]
    w = torch.cat([layer.weight.detach().reshape(-1), layer.bias.detach()])
    lr = learner.cfg.local_lr
    total = torch.zeros_like(w)
    with torch.no_grad():
        for t in range(batch.users.shape[0]):
            n = int(batch.mask_spt[t].sum())

            def design(items: torch.Tensor, t: int = t) -> torch.Tensor:
                task, item = learner.net.encoder(batch.users[t], items)
                x = torch.cat([task.expand(item.shape[0], -1), item], dim=-1)
                return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=-1)

            xs, ys = design(batch.x_spt[t, :n]), batch.y_spt[t, :n]
            xq, yq = design(batch.x_qry[t]), batch.y_qry[t]
            grad_s = 2.0 / n * xs.T @ (xs @ w - ys)
            w_fast = w - lr * grad_s
            grad_q = 2.0 / len(yq) * xq.T @ (xq @ w_fast - yq)
            if not first_order:
                hessian = 2.0 / n * xs.T @ xs
                grad_q = (torch.eye(len(w), dtype=w.dtype) - lr * hessian) @ grad_q
            total += grad_q
    total /= batch.users.shape[0]
    return total[:-1].reshape(layer.weight.shape), total[-1:]


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_hand_derivation_for_a_linear_head(first_order: bool) -> None:
    learner = make_learner(hidden=(), residual=False, local_steps=1, first_order=first_order)
    batch = make_batch()
    grads = meta_grads(learner, batch)
    expected_w, expected_b = hand_derived_grads(learner, batch, first_order)
    torch.testing.assert_close(grads["net.head.layers.0.weight"], expected_w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads["net.head.layers.0.bias"], expected_b, rtol=1e-9, atol=1e-12)
    looped = loop_grads(learner, batch)
    torch.testing.assert_close(
        looped["net.head.layers.0.weight"], expected_w, rtol=1e-9, atol=1e-12
    )


def test_second_order_differs_from_first_order() -> None:
    batch = make_batch()
    second = meta_grads(make_learner(first_order=False), batch)
    first = meta_grads(make_learner(first_order=True), batch)
    diff = max((second[n] - first[n]).abs().max().item() for n in second)
    assert diff > 1e-6


def test_meta_gradients_reach_the_embeddings() -> None:
    learner = make_learner()
    grads = meta_grads(learner, make_batch())
    for name, _ in learner.named_parameters():
        assert name in grads, f"{name} got no gradient"
        if "tables" in name:
            assert grads[name].abs().sum() > 0, f"{name} got a zero gradient"


def test_padding_changes_nothing() -> None:
    learner = make_learner()
    batch = make_batch()
    base = learner.task_losses(batch).detach()
    extra = 6
    pad = torch.nn.functional.pad
    padded = batch._replace(
        x_spt=pad(batch.x_spt, (0, 0, 0, extra), value=3),  # garbage ids under the mask
        y_spt=pad(batch.y_spt, (0, extra), value=5.0),
        mask_spt=pad(batch.mask_spt, (0, extra)),
    )
    torch.testing.assert_close(learner.task_losses(padded).detach(), base, rtol=1e-12, atol=1e-12)


def test_adapt_lowers_support_loss_and_leaves_meta_parameters_untouched() -> None:
    learner = make_learner(local_steps=5)
    batch = make_batch()
    before = {n: p.detach().clone() for n, p in learner.state_dict().items()}
    with torch.no_grad():
        adaptation = learner.adapt(batch.users, batch.x_spt, batch.y_spt, batch.mask_spt)
    assert (adaptation.loss_after < adaptation.loss_before).all()
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name]), name
    # The fast weights are new tensors per task, not the meta-parameters.
    weight = adaptation.fast["head.layers.0.weight"]
    assert weight.shape[0] == batch.users.shape[0]
    assert not torch.equal(weight[0], learner.net.head.layers[0].weight)


def test_zero_steps_is_the_meta_model() -> None:
    learner = make_learner()
    batch = make_batch()
    with torch.no_grad():
        adaptation = learner.adapt(batch.users, batch.x_spt, batch.y_spt, batch.mask_spt, steps=0)
        pred = learner.predict(adaptation, batch.users, batch.x_qry)
        task, item = learner.net.encoder(batch.users.unsqueeze(1), batch.x_qry, adaptation.context)
        offset = adaptation.offset.unsqueeze(-1)
        torch.testing.assert_close(pred, learner.net.head(task.squeeze(1), item) + offset)


def test_scoring_from_precomputed_item_features_matches_predict() -> None:
    learner = make_learner(context=True).eval()
    batch = make_batch()
    catalogue = batch.x_qry.reshape(-1, ITEM_WIDTH)
    with torch.no_grad():
        adaptation = learner.adapt(batch.users, batch.x_spt, batch.y_spt, batch.mask_spt)
        full = learner.predict(
            adaptation, batch.users, catalogue.expand(batch.users.shape[0], -1, -1)
        )
        fast = learner.predict_from_features(
            adaptation, batch.users, learner.item_features(catalogue)
        )
    torch.testing.assert_close(fast, full)


def test_learned_local_rates_are_clamped_non_negative() -> None:
    learner = make_learner(learn_local_lr=True)
    with torch.no_grad():
        for p in learner.local_lr.values():
            p.fill_(-1.0)
    assert all(float(r.detach().min()) == 0.0 for r in learner.rates().values())  # type: ignore[union-attr]


def test_masked_mse_ignores_masked_entries() -> None:
    pred = torch.tensor([1.0, 2.0, 100.0])
    target = torch.tensor([2.0, 2.0, 0.0])
    mask = torch.tensor([True, True, False])
    assert masked_mse(pred, target, mask).item() == pytest.approx(0.5)


def test_compiled_meta_loss_gives_the_eager_gradients() -> None:
    learner = make_learner()
    batch = make_batch()
    eager = meta_grads(learner, batch)
    compiled_loss = torch.compile(learner.meta_loss, dynamic=False)
    learner.zero_grad()
    compiled_loss(batch).backward()
    for name, param in learner.named_parameters():
        assert param.grad is not None
        torch.testing.assert_close(param.grad, eager[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_network_without_user_fields_runs_in_its_dtype(dtype: torch.dtype) -> None:
    """The CSV releases have no user fields: the user embedding has no columns and follows
    the network's dtype (an empty float32 tensor beside float64 weights broke `--dtype
    float64`), and gradients reach the item side."""
    cfg = ModelConfig(embedding_dim=4, hidden=(8,), item_fields=("rate", "genre"), user_fields=())
    net = MeLUNet([], ITEM_SPECS, cfg).to(dtype)
    items = torch.cat([torch.randint(0, 5, (2, 6, 1)), torch.randint(0, 7, (2, 6, 3))], dim=-1)
    out = net(torch.zeros((2, 0), dtype=torch.long), items)
    assert out.shape == (2, 6) and out.dtype == dtype and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.encoder.item.parameters())
