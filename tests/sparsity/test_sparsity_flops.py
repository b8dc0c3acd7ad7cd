"""FLOPs accounting: dense FLOPs from FlopCounterMode, sparse = dense x density, per-step training cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.sparsity import FlopsAccountant, Sparsifier
from sparseforge.sparsity.flops import rigl_train_flops_per_step
from tests.helpers.engine import train_on_noise


def lenet_300_100():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


# Forward FLOPs per example written out by hand: 2 x multiply-accumulates of each linear layer.
HAND_FLOPS = {"1": 2 * 784 * 300, "3": 2 * 300 * 100, "5": 2 * 100 * 10}


def run(model, sparsifier, optimizer, steps: int, batch: int = 32):
    train_on_noise(model, optimizer, sparsifier, steps, (1, 28, 28), batch=batch, seed=0)


def test_dense_forward_flops_come_from_flop_counter_mode():
    model = lenet_300_100()
    acc = FlopsAccountant(model, ["1", "3", "5"], example_input=torch.zeros(1, 1, 28, 28))
    acc.measure()
    assert acc.f_dense == sum(HAND_FLOPS.values())
    assert acc.f_layer == HAND_FLOPS


def test_static_training_charges_three_sparse_forwards_per_example():
    model = lenet_300_100()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = Sparsifier(model, opt, density=0.1, distribution="erk", update_rule="static")
    run(model, sp, opt, steps=7)
    f_s = sum(HAND_FLOPS[n] * d for n, d in sp.layer_densities().items())
    f_d = sum(HAND_FLOPS.values())
    assert sp.flops.train_total == pytest.approx(7 * 32 * 3 * f_s, rel=1e-12)
    assert sp.flops.dense_total == pytest.approx(7 * 32 * 3 * f_d, rel=1e-12)
    assert sp.inference_relative_to_dense() == pytest.approx(f_s / f_d, rel=1e-12)


def test_rigl_update_steps_pay_for_the_dense_weight_gradient():
    model = lenet_300_100()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = Sparsifier(model, opt, density=0.1, update_rule="rigl", delta_t=5, total_steps=40)
    run(model, sp, opt, steps=40)
    assert sp.updates_done == 5  # after steps 5, 10, 15, 20, 25 (< 0.75 * 40)
    f_s = sum(HAND_FLOPS[n] * d for n, d in sp.layer_densities().items())
    f_d = sum(HAND_FLOPS.values())
    expected = 32 * (35 * 3 * f_s + 5 * (2 * f_s + f_d))
    assert sp.flops.train_total == pytest.approx(expected, rel=1e-12)
    # While updates run, a period of ΔT steps is the paper's closed form with ΔT-1 regular steps.
    period = sp.flops.train_total - 32 * 15 * 3 * f_s  # the 15 steps after T_end are static
    assert period / (25 * 32) == pytest.approx(rigl_train_flops_per_step(f_s, f_d, 5 - 1), rel=1e-12)


def test_only_training_mode_forwards_count_and_no_grad_ones_cost_a_forward():
    model = lenet_300_100()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = Sparsifier(model, opt, density=0.2, update_rule="static")
    f_s = sum(HAND_FLOPS[n] * d for n, d in sp.layer_densities().items())
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y) + F.cross_entropy(model(x[:8]), y[:8])  # two trained forwards
    with torch.no_grad():
        model(x[:4])  # e.g. logits for a replay buffer: forward only
    model.eval()
    with torch.no_grad():
        model(x)  # evaluation: not training FLOPs
    model.train()
    loss.backward()
    sp.before_optimizer_step()
    opt.step()
    sp.after_optimizer_step()
    assert sp.flops.samples_trained == 24 and sp.flops.samples_forward_only == 4
    assert sp.flops.train_total == pytest.approx(24 * 3 * f_s + 4 * f_s, rel=1e-12)


def test_gradient_density_scales_only_the_weight_gradient_part():
    model = lenet_300_100()
    acc = FlopsAccountant(model, ["1", "3", "5"], example_input=torch.zeros(1, 1, 28, 28))
    model(torch.randn(10, 1, 28, 28)).sum().backward()
    dens = {"1": 0.25, "3": 0.25, "5": 1.0}
    grad = {"1": 0.05, "3": 0.05, "5": 0.2}
    spent = acc.step(dens, grad)
    f = HAND_FLOPS
    forward = f["1"] * 0.25 + f["3"] * 0.25 + f["5"]
    weight_grad = f["1"] * 0.05 + f["3"] * 0.05 + f["5"] * 0.2
    assert spent == pytest.approx(10 * (2 * forward + weight_grad), rel=1e-12)


def test_dense_sparsifier_counts_flops_at_relative_one():
    model = lenet_300_100()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = Sparsifier(model, opt, update_rule="dense", density=1.0)
    run(model, sp, opt, steps=3)
    assert sp.masks is None and sp.global_density() == 1.0
    assert sp.flops.train_relative_to_dense == 1.0 and sp.inference_relative_to_dense() == 1.0
    assert sp.flops.train_total == 3 * 32 * 3 * sum(HAND_FLOPS.values())


def test_layer_meter_charges_each_layer_for_the_examples_that_pass_through_it():
    """SHARP's step: stream images through the whole net, replayed cut-off activations through the
    upper layers only, a head on detached features; every count written out by hand."""
    from sparseforge.models.sharp import sharp_mnistlike
    from sparseforge.sparsity.flops import LayerFlopsMeter

    torch.manual_seed(0)
    net = sharp_mnistlike(num_classes=10)
    layers = {layer.name: layer.module for layer in net.weight_layers()} | {"head": net.head}
    meter = LayerFlopsMeter(layers)
    meter.densities = {"conv_early.1": 0.5, "hidden.0": 0.25, "penultimate": 0.4}
    f = {  # dense forward FLOPs per example: 2 x MACs
        "conv_early.0": 2 * (1 * 9) * 16 * 28 * 28,
        "conv_early.1": 2 * (16 * 9) * 16 * 14 * 14,
        "hidden.0": 2 * 784 * 500,
        "penultimate": 2 * 500 * 500,
        "head": 2 * 500 * 10,
    }
    d = {name: meter.densities.get(name, 1.0) for name in f}
    stream, replayed = 6, 4
    net.train()
    z = torch.cat(
        [net.represent(torch.randn(stream, 1, 28, 28)), net.represent_from_cutoff(torch.rand(replayed, 16, 7, 7))]
    )
    (z.sum() + net.head(z.detach()).sum()).backward()
    # passes: forward, weight gradient, input gradient only where the input needs one
    passes = {
        "conv_early.0": stream * 2,  # the images need no gradient
        "conv_early.1": stream * 3,
        "hidden.0": stream * 3 + replayed * 2,  # replayed activations enter here, without gradient
        "penultimate": (stream + replayed) * 3,
        "head": (stream + replayed) * 2,  # detached features
    }
    assert meter.f_layer == pytest.approx(f)
    assert meter.train_total == pytest.approx(sum(passes[n] * f[n] * d[n] for n in f))
    assert meter.dense_total == pytest.approx(sum(passes[n] * f[n] for n in f))
    with torch.no_grad():  # a forward-only pass in training mode: one pass per layer
        net.represent(torch.randn(3, 1, 28, 28))
    net.eval()  # evaluation is not training compute
    net(torch.randn(5, 1, 28, 28))
    body = [n for n in f if n != "head"]
    assert meter.dense_total == pytest.approx(sum(passes[n] * f[n] for n in f) + 3 * sum(f[n] for n in body))
    assert meter.inference_relative_to_dense(body) == pytest.approx(
        sum(f[n] * d[n] for n in body) / sum(f[n] for n in body)
    )
    restored = LayerFlopsMeter({})
    restored.load_state_dict(meter.state_dict())
    assert restored.train_relative_to_dense == meter.train_relative_to_dense
