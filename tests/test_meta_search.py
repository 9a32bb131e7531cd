"""The learnable sampling distribution: straight-through Gumbel weights, the finite-difference hypergradient against
exact autograd, the published code's normalisation, Adam state, and a look-ahead that leaves the weights alone."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from nnunet_autoaug.lookahead import parameter_gradients, sgd_lookahead, trainable_parameters
from nnunet_autoaug.policy.meta_space import CHOICES, HARMFUL_PREFIX, META_SPACE, MetaSpace
from nnunet_autoaug.policy.space import PolicyError
from nnunet_autoaug.search import GumbelDraw, MetaDistribution, directional_sample_derivatives


def distribution(groups: int = 1, k: int = 6, seed: int = 0) -> MetaDistribution:
    g = torch.Generator().manual_seed(seed)
    return MetaDistribution(torch.rand(k, generator=g, dtype=torch.float64) + 0.1, groups=groups, lr=0.1)


def test_straight_through_weight_is_exactly_one_and_its_gradient_reaches_the_logits() -> None:
    dist = distribution(groups=2)
    with torch.no_grad():
        dist.logits[1] = torch.linspace(-2, 2, 6, dtype=torch.float64)  # the two groups differ
    draw = dist.draw(torch.tensor([0, 1, 1, 0, 1]), torch.Generator().manual_seed(3))
    w = dist.straight_through_weights(draw)
    assert torch.equal(w, torch.ones(5, dtype=torch.float64))  # exactly 1, not 1 +- rounding
    for b in range(5):
        (grad,) = torch.autograd.grad(w[b], [dist.logits], retain_graph=True)
        g, k = int(draw.groups[b]), int(draw.choices[b])
        y = torch.softmax(dist.logits.detach()[g] + draw.noise[b], dim=0)  # Gumbel-softmax, temperature 1
        expected = -y[k] * y
        expected[k] += y[k]
        torch.testing.assert_close(grad[g], expected)  # d y_k / d logits = y_k (delta_kj - y_j)
        assert grad[1 - g].abs().sum() == 0 and grad[g].abs().sum() > 0  # only the sample's own group


def test_gumbel_max_draws_follow_each_groups_distribution() -> None:
    dist = distribution(groups=2, k=4)
    with torch.no_grad():
        dist.logits[1] = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64))
    n = 20000
    draw = dist.draw(torch.tensor([0, 1]).repeat(n), torch.Generator().manual_seed(0))
    for g in (0, 1):
        freq = torch.bincount(draw.choices[draw.groups == g], minlength=4).double() / n
        torch.testing.assert_close(freq, dist.probabilities()[g], atol=0.015, rtol=0)
    assert torch.equal(draw.choices, (dist.logits.detach()[draw.groups] + draw.noise).argmax(1))


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(3, 5)
        self.out = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))[:, 0]


def augment(x: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
    """A non-differentiable 'augmentation' per choice: the gradient can only reach P through the loss weights."""
    return x * (1 + 0.3 * choices[:, None].double()) + 0.1 * choices[:, None].double()


def per_sample_losses(net: TinyNet, weights: dict[str, torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.cosh(torch.func.functional_call(net, weights, (x,)) - y))  # not quadratic: FD has error


def test_finite_difference_hypergradient_matches_exact_autograd_hypergradient() -> None:
    torch.manual_seed(0)
    net = TinyNet().double()
    dist = MetaDistribution(torch.full((4,), 0.25, dtype=torch.float64))
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    x_val, y_val = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    draw = dist.draw(torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(1))
    x_aug, alpha = augment(x, draw.choices), 0.5
    params = trainable_parameters(net)

    # exact: unroll w' = w - alpha grad L_train(w, P) with create_graph, then d L_val(w') / d logits by autograd
    train_loss = (dist.straight_through_weights(draw) * per_sample_losses(net, params, x_aug, y)).mean()
    grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
    unrolled = {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}
    (exact,) = torch.autograd.grad(per_sample_losses(net, unrolled, x_val, y_val).mean(), [dist.logits])

    # estimator: v at w', finite-difference h_b = grad l_b . v / B, chained through the straight-through weights
    lookahead = {k: w.detach().requires_grad_() for k, w in unrolled.items()}
    v = parameter_gradients(lookahead, per_sample_losses(net, lookahead, x_val, y_val).mean())
    h = directional_sample_derivatives(lambda w: per_sample_losses(net, w, x_aug, y), params, v) / 8
    estimate = dist.logit_gradient(draw, -alpha * h, baseline=False, count_normalise=False)
    assert exact.abs().max() > 1e-4  # a real signal, not two zeros
    torch.testing.assert_close(estimate, exact, rtol=1e-3, atol=1e-9)  # O(eps^2) error of the central difference
    # the finite difference is a real approximation of grad l_b . v: a coarse step moves it measurably
    coarse = directional_sample_derivatives(lambda w: per_sample_losses(net, w, x_aug, y), params, v, r=5.0) / 8
    assert (coarse - h).abs().max() > 1e-3 * h.abs().max()


def test_baseline_and_count_normalisation_as_the_published_code() -> None:
    dist = distribution(groups=2)
    draw = GumbelDraw(choices=torch.tensor([3, 3, 5, 2, 2]), groups=torch.tensor([0, 0, 0, 1, 1]),
                      noise=torch.zeros(5, 6, dtype=torch.float64))
    grads = torch.tensor([1.0, 2.0, 6.0, 4.0, 0.0], dtype=torch.float64)
    # group 0: mean 3 -> [-2, -1, 3]; choice 3 drawn twice -> halved. Group 1: mean 2 -> [2, -2], both halved.
    expected = torch.tensor([-1.0, -0.5, 3.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(dist.normalise(draw, grads), expected)
    torch.testing.assert_close(dist.normalise(draw, grads, baseline=False), torch.tensor(
        [0.5, 1.0, 6.0, 2.0, 0.0], dtype=torch.float64))
    # the logit gradient is sum_b c_b d y_b[k_b] / d logits of the sample's own group row
    y = torch.softmax(dist.logits.detach(), dim=1)  # zero noise: y is P
    manual = torch.zeros(2, 6, dtype=torch.float64)
    for c, k, g in zip(expected, draw.choices, draw.groups):
        manual[g] += c * y[g, k] * (torch.nn.functional.one_hot(k, 6).double() - y[g])
    torch.testing.assert_close(dist.logit_gradient(draw, grads), manual)
    # a shift common to a whole group carries no information: the baseline removes it
    torch.testing.assert_close(dist.logit_gradient(draw, grads + 100.0), manual)


def test_single_sample_groups_are_centred_with_the_running_baseline() -> None:
    dist = distribution(groups=2)
    lonely = GumbelDraw(choices=torch.tensor([1, 4, 2]), groups=torch.tensor([0, 0, 1]),
                        noise=torch.zeros(3, 6, dtype=torch.float64))
    grads = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    # first time: nothing to compare the lone sample with, so it carries no signal
    torch.testing.assert_close(dist.normalise(lonely, grads, fallback=dist.running_baseline),
                               torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64))
    assert dist.step(lonely, grads)
    torch.testing.assert_close(dist.running_baseline, torch.tensor([2.0, 5.0], dtype=torch.float64))
    assert dist.step(lonely, grads + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dist.running_baseline, torch.tensor([2.0, 0.9 * 5 + 0.1 * 6], dtype=torch.float64))
    # later: the lone sample is compared with the group's running mean (5.1), a pair with its own batch mean
    torch.testing.assert_close(dist.normalise(lonely, torch.tensor([0.0, 2.0, 7.0], dtype=torch.float64),
                                              fallback=dist.running_baseline),
                               torch.tensor([-1.0, 1.0, 7.0 - 5.1], dtype=torch.float64))


def test_adam_step_and_state_round_trip() -> None:
    dist, g = distribution(), torch.Generator().manual_seed(0)
    before = dist.logits.detach().clone()
    draw = dist.draw(torch.zeros(4, dtype=torch.long), g)
    grads = torch.tensor([0.3, -0.1, 0.5, -0.2], dtype=torch.float64)
    gradient = dist.logit_gradient(draw, grads)
    assert dist.step(draw, grads, lr=0.05)
    moved = dist.logits.detach() - before
    # Adam's first step (bias-corrected moments m = g, v = g^2): -lr g / (|g| + eps), about lr against the sign
    assert (gradient != 0).all()
    torch.testing.assert_close(moved, -0.05 * gradient / (gradient.abs() + 1e-8), rtol=1e-6, atol=1e-12)
    for _ in range(3):
        dist.step(dist.draw(torch.zeros(4, dtype=torch.long), g), torch.randn(4, generator=g, dtype=torch.float64))

    buffer = io.BytesIO()
    torch.save(dist.state_dict(), buffer)
    buffer.seek(0)
    restored = distribution(seed=7)  # different start: everything must come from the state
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert torch.equal(restored.logits.detach(), dist.logits.detach())
    assert int(restored.optimizer.state_dict()["state"][0]["step"]) == 4
    assert torch.equal(restored.running_baseline, dist.running_baseline)
    draw, grads = dist.draw(torch.zeros(4, dtype=torch.long), g), torch.randn(4, generator=g, dtype=torch.float64)
    dist.step(draw, grads, lr=0.01)
    restored.step(draw, grads, lr=0.01)
    assert torch.equal(restored.logits.detach(), dist.logits.detach())  # same moments: identical continuation
    with pytest.raises(ValueError, match="saved logits have shape"):
        distribution(groups=2).load_state_dict(dist.state_dict())


def test_non_finite_signal_leaves_the_distribution_alone() -> None:
    dist = distribution()
    state = copy.deepcopy(dist.state_dict())
    draw = dist.draw(torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0))
    assert not dist.step(draw, torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64))
    assert torch.equal(dist.logits.detach(), state["logits"]) and not dist.optimizer.state


def test_meta_step_leaves_network_weights_and_optimizer_state_unchanged() -> None:
    """Look-ahead, search gradient and finite differences: only P may change; the real step happens after."""
    torch.manual_seed(0)
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    for _ in range(2):  # momentum buffers exist
        opt.zero_grad()
        torch.log(torch.cosh(net(x) - y)).mean().backward()
        opt.step()
    params = trainable_parameters(net)
    opt.zero_grad()
    torch.log(torch.cosh(net(x) - y)).mean().backward()
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in params.values()]

    dist = MetaDistribution(torch.full((4,), 0.25, dtype=torch.float64))
    draw = dist.draw(torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(1))
    lookahead = {k: w.requires_grad_() for k, w in sgd_lookahead(params, grads, opt).items()}
    v = parameter_gradients(lookahead, torch.log(torch.cosh(torch.func.functional_call(net, lookahead, (x,)) - y))
                            .mean())
    h = directional_sample_derivatives(lambda w: per_sample_losses(net, w, augment(x, draw.choices), y), params, v)
    logits = dist.logits.detach().clone()
    assert dist.step(draw, -1e-2 * h / 8)

    assert not torch.equal(dist.logits.detach(), logits)
    for k, value in net.state_dict().items():
        assert torch.equal(value, weights[k])
    assert all(torch.equal(p.grad, g) for p, g in zip(params.values(), grads))
    assert str(opt.state_dict()) == str(state)


def test_nnunet_like_start_and_harmful_space() -> None:
    p = META_SPACE.nnunet_like_probabilities()
    assert p.shape == (len(CHOICES),) and float(p.sum()) == pytest.approx(1.0)
    assert float(p[0]) == pytest.approx(0.8 * 0.9 ** 3 * 0.5 * 0.85 ** 2 * 0.9 * 0.7)  # nnU-Net applies nothing
    per_op = {op: float(sum(p[CHOICES.index(f"{op}:{lv}")] for lv in range(5))) for op in ("mirror", "scale", "rot_x")}
    assert per_op["mirror"] == pytest.approx(2.5 * per_op["scale"]) == pytest.approx(5 * per_op["rot_x"])

    space = MetaSpace(("image_noise", "label_shuffle"))
    q = space.nnunet_like_probabilities(0.2)
    assert space.variables[-2:] == (HARMFUL_PREFIX + "image_noise", HARMFUL_PREFIX + "label_shuffle")
    assert float(q.sum()) == pytest.approx(1.0) and float(q[-1]) == pytest.approx(0.1)
    with pytest.raises(PolicyError, match="proof-of-concept space"):
        space.policy_from_probabilities(q)
    with pytest.raises(PolicyError, match="unknown harmful op"):
        MetaSpace(("erase_everything",))

    choices = torch.tensor([0, len(CHOICES), len(CHOICES) + 1])
    params = space.params_for_choices(choices, torch.Generator().manual_seed(0))
    assert all(params.is_identity(f).all() for f in ("scale", "rotation", "mirror", "gamma", "noise_std"))
    data = torch.rand(3, 1, 4, 4, 4)
    seg = torch.randint(0, 3, (3, 1, 4, 4, 4)).float()
    seg[:, :, 0] = -1  # outside the image: stays
    out, out_seg = space.apply_harmful(choices, data, seg, 3, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], data[0]) and torch.equal(out_seg[:2], seg[:2])  # identity / noise keep their labels
    assert not torch.allclose(out[1], data[1]) and torch.equal(out[2], data[2])
    inside = seg[2] >= 0
    assert (out_seg[2][inside] != seg[2][inside]).all() and torch.equal(out_seg[2][~inside], seg[2][~inside])
    assert set(out_seg[2][inside].unique().tolist()) <= {0.0, 1.0, 2.0}


def test_policy_summary_sums_each_ops_magnitudes() -> None:
    # the nnU-Net-like start: mirroring is the most likely op, 2.5x scaling, spread over five magnitudes
    policy = META_SPACE.policy_from_probabilities(META_SPACE.nnunet_like_probabilities())
    per_op = META_SPACE.op_probabilities([p for _, p in policy.values])
    assert sum(per_op.values()) == pytest.approx(1.0) and per_op["mirror"] == pytest.approx(2.5 * per_op["scale"])
    shown = dict(item.split(":") for item in META_SPACE.summary(policy).split())
    assert len(shown) == 6 and len(set(shown)) == 6  # one entry per op, not one per magnitude
    assert next(iter(shown)) == max(per_op, key=per_op.get) and float(shown["mirror"]) == round(per_op["mirror"], 2)
