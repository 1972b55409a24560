"""Hinge losses, mismatched pairs and MA-GP (t2i_ray/losses/adversarial.py; gan_anchors.md §1.4)."""
import math

import pytest
import torch
import torch.nn as nn

from t2i_ray.losses.adversarial import (
    discriminator_hinge_loss,
    generator_hinge_loss,
    ma_gradient_penalty,
    mismatched,
)


def test_discriminator_hinge_loss_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0], requires_grad=True)  # relu(1 - r) = [0, 0.5, 2]: mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0], requires_grad=True)  # relu(1 + f) = [0, 1, 2]: mean 1
    mis = torch.tensor([0.5, -0.5, -3.0], requires_grad=True)  # relu(1 + m) = [1.5, 0.5, 0]: mean 2/3
    loss = discriminator_hinge_loss(real, fake, mis)
    assert loss.item() == pytest.approx(5 / 6 + 0.5 * (1 + 2 / 3))  # = 5/3
    loss.backward()
    # d/dr = -1/3 where 1 - r > 0; fake and mismatch carry the 1/2: +1/6 where 1 + x > 0.
    assert real.grad.tolist() == pytest.approx([0.0, -1 / 3, -1 / 3])
    assert fake.grad.tolist() == pytest.approx([0.0, 1 / 6, 1 / 6])
    assert mis.grad.tolist() == pytest.approx([1 / 6, 1 / 6, 0.0])


def test_discriminator_hinge_loss_is_zero_beyond_the_margins():
    real, fake, mis = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0]), torch.tensor([-2.0, -1.0])
    loss = discriminator_hinge_loss(real, fake, mis)
    assert loss.item() == 0.0


def test_generator_hinge_loss_by_hand():
    fake = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    loss = generator_hinge_loss(fake)
    assert loss.item() == pytest.approx(-1.0)  # -(1 - 2 + 4) / 3
    loss.backward()
    assert fake.grad.tolist() == pytest.approx([-1 / 3] * 3)


def test_mismatched_rolls_by_one():
    assert mismatched(torch.arange(4)).tolist() == [1, 2, 3, 0]
    for B in range(2, 6):
        x = torch.randn(B, 3, 4, 4)
        m = mismatched(x)
        for i in range(B):
            assert torch.equal(m[i], x[(i + 1) % B])
            assert not torch.equal(m[i], x[i])  # a derangement: nobody keeps its own image


def linear_critic(w: torch.Tensor, v: torch.Tensor):
    """logits_i = <w, x_i> + <v, e_i>: grad_x = w and grad_e = v for every sample."""
    return lambda x, e: (w * x).flatten(1).sum(1) + (v * e).sum(1)


def test_ma_gp_on_linear_critic_matches_closed_form():
    torch.manual_seed(0)
    B = 4
    w = nn.Parameter(torch.randn(3, 2, 2))
    v = nn.Parameter(torch.randn(5))
    x = torch.randn(B, 3, 2, 2, requires_grad=True)
    e = torch.randn(B, 5, requires_grad=True)
    penalty = ma_gradient_penalty(linear_critic(w, v)(x, e), x, e)  # k = 2, p = 6
    S = sum(wi**2 for wi in w.detach().flatten().tolist()) + sum(vi**2 for vi in v.detach().tolist())
    assert penalty.item() == pytest.approx(2 * S**3, rel=1e-5)  # k * mean(sqrt(S)^6), same for all i
    # create_graph=True makes it trainable: dP/dw = k * p/2 * S^(p/2 - 1) * 2w = 12 S^2 w.
    penalty.backward()
    torch.testing.assert_close(w.grad, 12 * S**2 * w.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(v.grad, 12 * S**2 * v.detach(), rtol=1e-5, atol=0)


def test_ma_gp_per_sample_norms_and_custom_k_p():
    # logits_i = ||x_i||^2 / 2 + <v, e_i>: grad_x_i = x_i (differs per sample), grad_e_i = v.
    torch.manual_seed(1)
    B, k, p = 3, 0.5, 3.0
    v = torch.randn(4)
    x = torch.randn(B, 2, 3, requires_grad=True)
    e = torch.randn(B, 4, requires_grad=True)
    logits = 0.5 * x.square().flatten(1).sum(1) + (v * e).sum(1)
    penalty = ma_gradient_penalty(logits, x, e, k=k, p=p)
    v_sq = sum(b**2 for b in v.tolist())
    sq = [sum(a**2 for a in x[i].detach().flatten().tolist()) + v_sq for i in range(B)]  # S_i
    expected = k * sum(math.sqrt(s) ** p for s in sq) / B
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    # d/dx_i of k/B * S_i^(p/2) with dS_i/dx_i = 2 x_i:  k/B * p * S_i^(p/2 - 1) * x_i.
    penalty.backward()
    for i in range(B):
        expected_grad = k / B * p * sq[i] ** (p / 2 - 1) * x[i].detach()
        torch.testing.assert_close(x.grad[i], expected_grad, rtol=1e-5, atol=0)


def test_ma_gp_matches_reference_formula_on_a_conv_critic():
    """Reference `MA_GP`: cat of flattened grads, sqrt(sum of squares), 2 * mean(norm ** 6)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lin = nn.Linear(4 * 16 + 5, 1)

    def critic(x, e):
        return lin(torch.cat((torch.tanh(conv(x)).flatten(1), e), 1)).squeeze(1)

    x = torch.randn(3, 3, 4, 4, requires_grad=True)
    e = torch.randn(3, 5, requires_grad=True)
    ours = ma_gradient_penalty(critic(x, e), x, e)
    gx, ge = torch.autograd.grad(critic(x, e).sum(), (x, e), create_graph=True)
    norm = torch.cat((gx.flatten(1), ge.flatten(1)), 1).square().sum(1).sqrt()
    ref = 2.0 * (norm**6).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    params = [conv.weight, conv.bias, lin.weight]  # lin.bias does not move input gradients
    g_ours = torch.autograd.grad(ours, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_ma_gp_keeps_the_logit_graph_for_the_d_loss():
    w, v = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    x, e = torch.randn(2, 2, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    logits = linear_critic(w, v)(x, e)
    penalty = ma_gradient_penalty(logits, x, e)
    (discriminator_hinge_loss(logits, -logits, -logits) + penalty).backward()  # no "graph freed" error
    assert w.grad is not None


def test_ma_gp_zero_gradient_is_finite():
    # At a zero input-gradient, sqrt-then-power (the reference) back-propagates 0 * inf = NaN.
    w, v = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    x, e = torch.randn(4, 3, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    penalty = ma_gradient_penalty(linear_critic(w, v)(x, e), x, e)
    penalty.backward()
    assert penalty.item() == 0.0
    assert torch.equal(w.grad, torch.zeros(3)) and torch.equal(v.grad, torch.zeros(2))


def test_ma_gp_requires_input_gradients():
    x, e = torch.randn(2, 3), torch.randn(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="requires_grad_"):
        ma_gradient_penalty((x.sum(1) + e.sum(1)), x, e)
