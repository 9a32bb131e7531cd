"""The functional look-ahead equals a real optimizer step and leaves weights and optimizer state untouched."""
from __future__ import annotations

import copy

import torch

from nnunet_autoaug.lookahead import clip_gradients, evaluate_at, parameter_gradients, sgd_lookahead, \
    trainable_parameters


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                               torch.nn.LeakyReLU(), torch.nn.ConvTranspose3d(4, 2, 2, stride=2))


def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


def test_lookahead_matches_nnunets_sgd_step_without_side_effects() -> None:
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    x, y = torch.randn(2, 1, 6, 6, 6), torch.randn(2, 2, 12, 12, 12)
    for _ in range(2):  # give the optimizer a momentum buffer
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    weights = copy.deepcopy(net.state_dict())
    state = copy.deepcopy(opt.state_dict())
    grads_before = [p.grad.clone() for p in net.parameters()]

    params = trainable_parameters(net)
    grads = clip_gradients(parameter_gradients(params, loss_fn(net(x * 3), y) * 1e3))  # large: clipping is active
    stepped = sgd_lookahead(params, grads, opt)
    val_x, val_y = torch.randn(2, 1, 6, 6, 6), torch.randn(2, 2, 12, 12, 12)
    lookahead_loss = evaluate_at(net, stepped, val_x, loss_fn, val_y)

    for k, v in net.state_dict().items():  # nothing moved
        assert torch.equal(v, weights[k])
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads_before))
    assert str(opt.state_dict()) == str(state)

    # the same step taken for real on a copy: identical weights and loss
    real_net = copy.deepcopy(net)
    real_opt = torch.optim.SGD(real_net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    real_opt.load_state_dict(state)
    real_opt.zero_grad()
    (loss_fn(real_net(x * 3), y) * 1e3).backward()
    torch.nn.utils.clip_grad_norm_(real_net.parameters(), 12)
    real_opt.step()
    for name, p in real_net.named_parameters():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert abs(lookahead_loss - float(loss_fn(real_net(val_x), val_y))) < 1e-5
    # parameter order stays fixed after functional_call (which re-inserts parameters into the modules)
    assert list(trainable_parameters(net)) == list(params)
