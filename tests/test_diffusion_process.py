"""The Gaussian-categorical process (t2i_ray/models/diffusion/gaussian_categorical.py): schedules,
forward moments, the Hoogeboom posterior against Bayes' rule, the KL, the loss, and the samplers
(determinism, guidance, RePaint outpainting) on a tiny JointUNet."""
import itertools
import math

import pytest
import torch

from t2i_ray.models.diffusion import gaussian_categorical as gc
from t2i_ray.models.diffusion.unet import JointUNet

K = 3


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_net(image_only: bool = False, seed: int = 0) -> JointUNet:
    torch.manual_seed(seed)
    net = JointUNet(num_classes=K, dim=8, dim_mults=(1, 2), blocks=(1, 1),
                    attention_levels=(False, True), heads=2, text_dim=16, norm_groups=4,
                    image_only=image_only)
    with torch.no_grad():  # off the zero init, so that every output depends on every input
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def tiny_text(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(batch, 5, 16, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return words, mask, torch.randn(batch, 16, generator=g)


def test_cosine_schedule_endpoints_and_closed_form():
    T = 1000
    abar = gc.cosine_alpha_bar(T)
    assert abar.shape == (T + 1,) and abar.dtype == torch.float64
    assert abar[0] == 1.0 and abar[T] < 1e-8
    assert (abar[1:] < abar[:-1]).all()
    betas = 1 - abar[1:] / abar[:-1]
    assert betas.max() <= 0.999 + 1e-12 and betas[0] < 1e-4
    # away from the clipped last steps, abar_t = f(t) / f(0) (Nichol & Dhariwal eq. 17)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 250, 500, 900):
        assert abar[t].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    lin = gc.linear_alpha_bar(T)
    assert lin[0] == 1.0 and lin[1] == pytest.approx(1 - 1e-4) and lin[T] < 1e-4


def test_sampling_timesteps_cover_both_ends():
    assert gc.sampling_timesteps(1000, 100)[[0, -1]].tolist() == [1, 1000]
    assert gc.sampling_timesteps(1000, 1000).tolist() == list(range(1, 1001))
    assert len(set(gc.sampling_timesteps(1000, 7).tolist())) == 7


def test_q_sample_image_moments():
    proc = gc.GaussianCategoricalDiffusion(K)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).view(1, 1, 2, 2).expand(20000, 3, 2, 2)
    for t in (10, 500, 990):
        tt = torch.full((20000,), t)
        x_t = proc.q_sample_image(x0, tt, torch.randn(x0.shape, generator=g))
        abar = proc.image_alpha_bar[t].item()
        torch.testing.assert_close(x_t.mean(0), math.sqrt(abar) * x0[0], atol=0.03, rtol=0)
        torch.testing.assert_close(x_t.var(0), torch.full_like(x0[0], 1 - abar), atol=0.03,
                                   rtol=0.05)


def test_q_sample_layout_frequencies():
    proc = gc.GaussianCategoricalDiffusion(K)
    g = torch.Generator().manual_seed(0)
    y0 = torch.zeros(4000, 4, 4, dtype=torch.long)
    for t in (100, 600):
        y_t = proc.q_sample_layout(y0, torch.full((4000,), t), g)
        freq = torch.bincount(y_t.flatten(), minlength=K).double() / y_t.numel()
        abar = proc.layout_alpha_bar[t].item()
        expected = torch.tensor([abar + (1 - abar) / K, (1 - abar) / K, (1 - abar) / K])
        torch.testing.assert_close(freq, expected.double(), atol=0.01, rtol=0)


def test_categorical_posterior_equals_bayes_rule():
    """q(y_s | y_t, y_0) = q(y_t | y_s) q(y_s | y_0) / q(y_t | y_0), enumerating y_s, for K = 3."""
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=50)
    abar = proc.layout_alpha_bar

    def cat(prob_keep: float, frm: int, to: int) -> float:  # Cat(a e_frm + (1 - a)/K)[to]
        return prob_keep * (frm == to) + (1 - prob_keep) / K

    for t, s in ((1, 0), (2, 1), (30, 29), (50, 10), (50, 0)):
        a = (abar[t] / abar[s]).item()
        for y0, yt in itertools.product(range(K), range(K)):
            joint = torch.tensor([cat(a, ys, yt) * cat(abar[s].item(), y0, ys) for ys in range(K)],
                                 dtype=torch.float64)
            bayes = joint / cat(abar[t].item(), y0, yt)
            assert bayes.sum().item() == pytest.approx(1.0, abs=1e-9)
            log_post = proc.layout_posterior(
                torch.tensor([[[yt]]]), gc.log_onehot(torch.tensor([[[y0]]]), K).double(),
                torch.tensor([t]), torch.tensor([s]))
            torch.testing.assert_close(log_post.exp().flatten(), bayes, atol=1e-12,
                                       rtol=1e-9)


def test_categorical_kl_nonnegative_and_zero_for_equal():
    g = torch.Generator().manual_seed(0)
    log_q = torch.log_softmax(3 * torch.randn(64, K, generator=g), dim=1)
    log_p = torch.log_softmax(3 * torch.randn(64, K, generator=g), dim=1)
    assert (gc.categorical_kl(log_q, log_p) >= 0).all()
    assert (gc.categorical_kl(log_q, log_p) > 0).any()
    assert (gc.categorical_kl(log_q, log_q) == 0).all()


def test_training_losses_terms_and_gradients():
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=100)
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    layouts = torch.randint(0, K, (4, 8, 8), generator=g)
    words, mask, sent = tiny_text(4)
    drop = gc.text_drop_mask(4, 0.5, g)
    out = proc.training_losses(net, images, layouts, words, mask, sent, drop, g, layout_weight=0.5)
    assert set(out) == {"loss", "image_loss", "layout_loss"}
    assert torch.isfinite(out["loss"]) and out["layout_loss"] > 0
    torch.testing.assert_close(out["loss"].detach(), out["image_loss"] + 0.5 * out["layout_loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # image-only: the MSE alone
    only = proc.training_losses(tiny_net(image_only=True), images, None, words, mask, sent, drop, g)
    assert set(only) == {"loss", "image_loss"}


def test_layout_vb_is_the_scaled_kl_and_the_nll_at_t1():
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=10)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randint(0, K, (2, 4, 4), generator=g)
    logits = torch.randn(2, K, 4, 4, generator=g)
    # a perfect prediction (logits = large multiple of the one-hot) gives KL ~ 0 at t > 1
    perfect = 50.0 * gc.log_onehot(y0, K).exp()
    y_t = proc.q_sample_layout(y0, torch.tensor([5, 5]), g)
    assert proc.layout_vb(perfect, y0, y_t, torch.tensor([5, 5])).abs().max() < 1e-5
    # at t = 1: T * mean(-log p(y_0 | y_1)) / (K ln 2), p from the posterior with s = 0
    t1 = torch.tensor([1, 1])
    y1 = proc.q_sample_layout(y0, t1, g)
    log_p = proc.layout_posterior(y1, torch.log_softmax(logits, 1), t1, t1 - 1)
    nll = -log_p.gather(1, y0[:, None]).squeeze(1).mean(dim=(1, 2))
    torch.testing.assert_close(proc.layout_vb(logits, y0, y1, t1), nll * 10 / (K * math.log(2)))


def test_sampling_is_deterministic_under_a_seed():
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=20)
    net = tiny_net()
    words, mask, sent = tiny_text()

    def run(seed: int, scale: float):
        return gc.sample(net, proc, 2, 8, 8, words, mask, sent, torch.Generator().manual_seed(seed),
                         sample_steps=4, guidance_scale=scale)

    x1, y1 = run(0, 2.0)
    x2, y2 = run(0, 2.0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (2, 3, 8, 8) and y1.shape == (2, 8, 8) and y1.dtype == torch.long
    assert x1.abs().max() <= 1
    assert not torch.equal(run(1, 2.0)[0], x1)
    x_img, y_img = gc.sample(tiny_net(image_only=True), proc, 2, 8, 8, words, mask, sent,
                             torch.Generator().manual_seed(0), sample_steps=3, with_layout=False)
    assert x_img.shape == (2, 3, 8, 8) and y_img is None


def test_gumbel_sample_draws_each_class_at_its_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    log_probs = probs.log().view(1, 4, 1, 1).expand(4, 4, 100, 100).contiguous()
    draws = gc.gumbel_sample(log_probs, torch.Generator().manual_seed(0))
    assert draws.shape == (4, 100, 100)
    share = torch.bincount(draws.flatten(), minlength=4) / draws.numel()
    sigma = (probs * (1 - probs) / draws.numel()).sqrt()
    assert ((share - probs).abs() < 5 * sigma).all(), (share, probs)


class ConstantHead(torch.nn.Module):
    """A joint net with eps = 0 and the given layout logits everywhere."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x, y, t, words, mask, sentence, drop=None):
        B, _, H, W = x.shape
        return torch.zeros_like(x), self.logits.view(1, -1, 1, 1).expand(B, -1, H, W).clone()


@pytest.mark.parametrize("logits, expected", [
    (torch.zeros(K), torch.full((K,), 1 / K)),  # no information: the layouts stay uniform
    (torch.tensor([0.0, 0.0, 6.0]), None),      # a confident head: its class everywhere
])
def test_sampled_layouts_follow_the_layout_head(logits, expected):
    """The sampler's layout draws: from p(y_s | y_t) built from the head's y_0, never a constant."""
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=100)
    _, layouts = gc.sample(ConstantHead(logits), proc, 4, 16, 16, None, None, None,
                           torch.Generator().manual_seed(0), sample_steps=10)
    share = torch.bincount(layouts.flatten(), minlength=K) / layouts.numel()
    if expected is None:
        expected = torch.softmax(logits, 0)
    assert (share - expected).abs().max() < 0.06, share


def test_guidance_scale_one_is_the_conditional_prediction():
    net = tiny_net()
    words, mask, sent = tiny_text()
    x = torch.randn(2, 3, 8, 8)
    y = torch.randint(0, K, (2, 8, 8))
    t = torch.tensor([3, 7])
    cond = net(x, y, t, words, mask, sent)
    uncond = net(x, y, t, words, mask, sent, torch.ones(2, dtype=torch.bool))
    for a, b in zip(gc.guided_prediction(net, x, y, t, words, mask, sent, 1.0), cond):
        assert torch.equal(a, b)
    for c, u in zip(cond, uncond):
        torch.testing.assert_close(gc.apply_guidance(c, u, 1.0), c)
    # the doubled batch of the guided path equals separate cond / uncond forwards
    guided = gc.guided_prediction(net, x, y, t, words, mask, sent, 3.0)
    for gd, c, u in zip(guided, cond, uncond):
        torch.testing.assert_close(gd, u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)


class Spy(torch.nn.Module):
    """Records the (x_t, y_t, t) each call of the wrapped net sees."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x_t, y_t, t, *text):
        self.calls.append((x_t.clone(), y_t.clone(), t.clone()))
        return self.net(x_t, y_t, t, *text)


@pytest.mark.parametrize("known", ["layout", "image"])
def test_outpaint_step_feeds_the_forward_sample_of_the_known_modality(known):
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=20)
    spy = Spy(tiny_net())
    words, mask, sent = tiny_text()
    g = torch.Generator().manual_seed(0)
    known_images = torch.rand(2, 3, 8, 8) * 2 - 1 if known == "image" else None
    known_layouts = torch.randint(0, K, (2, 8, 8), generator=g) if known == "layout" else None
    x_t, y_t = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, K, (2, 8, 8), generator=g)
    t, s = 15, 10
    tt = torch.full((2,), t)
    ref = torch.Generator().manual_seed(7)
    if known == "image":
        expected = proc.q_sample_image(known_images, tt, torch.randn(2, 3, 8, 8, generator=ref))
    else:
        expected = proc.q_sample_layout(known_layouts, tt, ref)
    gc.outpaint_step(spy, proc, x_t, y_t, t, s, known_images, known_layouts, words, mask, sent,
                     1.0, torch.Generator().manual_seed(7))
    seen_x, seen_y, seen_t = spy.calls[0]
    assert torch.equal(seen_t, tt)
    if known == "image":
        assert torch.equal(seen_x, expected) and torch.equal(seen_y, y_t)
    else:
        assert torch.equal(seen_y, expected) and torch.equal(seen_x, x_t)


def test_outpaint_returns_the_known_modality_and_resamples():
    proc = gc.GaussianCategoricalDiffusion(K, num_steps=20)
    spy = Spy(tiny_net())
    words, mask, sent = tiny_text()
    layouts = torch.randint(0, K, (2, 8, 8))
    x, y = gc.outpaint(spy, proc, words, mask, sent, torch.Generator().manual_seed(0),
                       known_layouts=layouts, sample_steps=3, resample_steps=2)
    assert torch.equal(y, layouts) and x.shape == (2, 3, 8, 8)
    assert len(spy.calls) == 3 * 2  # n denoising passes per step
    assert [c[2][0].item() for c in spy.calls] == [20, 20, 10, 10, 1, 1]
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    x, y = gc.outpaint(spy, proc, words, mask, sent, torch.Generator().manual_seed(0),
                       known_images=images, sample_steps=3, guidance_scale=2.0)
    assert torch.equal(x, images) and y.shape == (2, 8, 8) and y.dtype == torch.long
    with pytest.raises(ValueError, match="exactly one"):
        gc.outpaint(spy, proc, words, mask, sent, torch.Generator(), sample_steps=3)
