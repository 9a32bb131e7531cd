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


def test_lookahead_keeps_nnunets_own_parameters_in_place() -> None:
    """nnU-Net's decoder holds the encoder (two names per encoder parameter): the network must still own the
    optimizer's parameters after a look-ahead evaluation, and train as before."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    torch.manual_seed(0)
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", arch,
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, 2, deep_supervision=False)
    assert any(n.startswith("decoder.encoder.") for n, _ in net.named_parameters(remove_duplicate=False))
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
    owned = {name: p for name, p in net.named_parameters()}
    x, y = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 2, 16, 16, 16)

    params = trainable_parameters(net)
    stepped = sgd_lookahead(params, parameter_gradients(params, loss_fn(net(x), y)), opt)
    evaluate_at(net, stepped, x, loss_fn, y)

    assert all(p is owned[name] and isinstance(p, torch.nn.Parameter) for name, p in net.named_parameters())
    assert all(a is b for a, b in zip(net.decoder.encoder.parameters(), net.encoder.parameters()))
    before = {name: p.detach().clone() for name, p in owned.items()}
    opt.zero_grad()
    loss_fn(net(x), y).backward()
    opt.step()  # the real step moves the network's own weights
    assert any(not torch.equal(p, before[name]) for name, p in net.named_parameters())
