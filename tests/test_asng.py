"""The ASNG update against hand-computed values, its invariants, and convergence on a toy objective."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_autoaug.search import CategoricalASNG


def test_one_update_matches_hand_computation() -> None:
    # 4 variables x 3 levels; the two samples differ only in variable 0 (level 0 wins over level 2).
    # G = (M_best - M_worst) / 2 = [.5, 0, -.5] on variable 0; Fisher vector [1.183013, 0.316987] (norm sqrt(1.5));
    # theta_0 + G / norm = [0.741582, 1/3, -0.074915] -> clip at 1/(4*2) and renormalise -> [0.592155, 0.282844, .125]
    # beta = 1/sqrt(8); gamma = beta(2 - beta) = 0.582107 = |s|^2; Delta = exp(beta (gamma - gamma / 1.5)) = 1.071010
    asng = CategoricalASNG([3, 3, 3, 3])
    best, worst = asng.one_hot([0, 1, 1, 1]), asng.one_hot([2, 1, 1, 1])
    assert asng.update([worst, best], [2.0, 1.0])
    np.testing.assert_allclose(asng.theta[0], [0.592155, 0.282844, 0.125], atol=1e-6)
    np.testing.assert_allclose(asng.theta[1:], 1 / 3, atol=1e-12)
    np.testing.assert_allclose(asng.s[:2], [0.736962, 0.197468], atol=2e-6)
    assert asng.gamma == pytest.approx(0.582107, abs=1e-6)
    assert asng.Delta == pytest.approx(1.071010, abs=1e-6)
    assert asng.delta == pytest.approx(1 / 1.071010, abs=1e-6)


@pytest.mark.parametrize("losses", [[0.3, 0.3], [-0.6619, -0.6619]])
def test_ties_skip_the_update_also_for_negative_losses(losses) -> None:
    asng = CategoricalASNG([11] * 18)
    before = asng.state_dict()
    samples = asng.sample(2, torch.Generator().manual_seed(0))
    assert not asng.update(samples, losses)
    assert np.array_equal(asng.theta, before["theta"]) and asng.Delta == before["Delta"]


def test_fisher_norm_identity_and_theta_bounds() -> None:
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(1)
    asng = CategoricalASNG([11] * 18)
    for _ in range(300):
        samples = asng.sample(2, g)
        asng.update(samples, rng.normal(size=2).tolist())
    assert np.allclose(asng.theta.sum(axis=1), 1)
    assert asng.theta.min() >= 1 / 180 - 1e-12 and asng.theta.max() <= 1 - 1 / 18 + 1e-12
    grad = rng.normal(size=asng.theta.shape)
    fisher = asng.fisher_vector(grad)
    # ||F^(1/2) G|| = sqrt(sum G^2 / theta) for G whose rows sum to zero (tangent to the simplex)
    grad -= grad.mean(axis=1, keepdims=True)
    assert np.sqrt((asng.fisher_vector(grad) ** 2).sum()) == pytest.approx(np.sqrt((grad ** 2 / asng.theta).sum()))
    assert fisher.shape == (180,)


def test_concentrates_on_the_best_level_of_each_variable() -> None:
    target = np.arange(18) % 11
    asng, g = CategoricalASNG([11] * 18), torch.Generator().manual_seed(0)
    for _ in range(2000):
        samples = asng.sample(2, g)
        asng.update(samples, [-(m.argmax(1) == target).sum() for m in samples])
    assert np.array_equal(asng.best(), target)
    assert asng.convergence() > 0.9  # bound: 1 - 1/18 = 0.944


def test_state_dict_continues_identically() -> None:
    rng = np.random.default_rng(3)
    losses = rng.normal(size=(40, 2))
    a, g_a = CategoricalASNG([11] * 18), torch.Generator().manual_seed(5)
    for f in losses[:20]:
        a.update(a.sample(2, g_a), f)
    b, g_b = CategoricalASNG([11] * 18), torch.Generator()
    b.load_state_dict(a.state_dict())
    g_b.set_state(g_a.get_state())
    for f in losses[20:]:
        a.update(a.sample(2, g_a), f)
        b.update(b.sample(2, g_b), f)
    assert np.array_equal(a.theta, b.theta) and a.Delta == b.Delta
    with pytest.raises(ValueError, match="categories"):
        CategoricalASNG([3]).load_state_dict(a.state_dict())
