"""Gaussian-categorical diffusion (GCDP, Park et al., arXiv:2308.08157, Sec. 3.1-3.2): an image x
noised by a Gaussian process and its semantic layout y (one class per pixel, K classes) by a
uniform categorical process, both at one shared timestep t in 1..T.

  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)              (DDPM, arXiv:2006.11239 eq. 4)
  q(y_t | y_0) = Cat(abar_t y_0 + (1 - abar_t) / K)                 (Hoogeboom et al.,
  q(y_s | y_t, y_0) ∝ (a y_t + (1 - a) / K) ⊙ (abar_s y_0 + (1 - abar_s) / K),  arXiv:2102.05379
      a = abar_t / abar_s, s < t (s = t - 1 in training)             Sec. 4, eqs. 12-13)

GCDP's eq. 11-12 as printed swap or mix abar_t / abar_{t-1}; these are the forms its code and
Hoogeboom's use (`ehoogeboom/multinomial_diffusion` `diffusion_utils/diffusion_multinomial.py`).
The network predicts eps and y_0 logits; p(y_s | y_t) plugs softmax(logits) in for y_0 (the
"x0-parameterisation"). Timestep index 0 is the data (abar_0 = 1); tables have T + 1 entries.

Everything random takes a torch.Generator, so a seed fixes a run. Sampling is free functions
over (net, process); respacing to fewer steps only indexes the abar tables at a subsequence of
timesteps, since both forward processes compose: the transition from s to t has a = abar_t /
abar_s (improved-DDPM `respace.py`, Nichol & Dhariwal, arXiv:2102.09672 Sec. 4; for the uniform
categorical process the transition matrices commute and multiply the same way).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

SCHEDULES = ("cosine", "linear")
LOG_ZERO = -69.0  # log(1e-30): a one-hot y_0 in log space without -inf (Hoogeboom's clamp)


# --- schedules -----------------------------------------------------------------------------

def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """abar_t for t = 0..T, float64 (T + 1,): f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2)
    (Nichol & Dhariwal, arXiv:2102.09672 eq. 17), with beta_t = 1 - abar_t / abar_{t-1} clipped
    to max_beta so that the last steps stay finite (their Sec. 3.2). abar_0 = 1, abar_T ≈ 0."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((steps / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat((torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)))


def linear_alpha_bar(num_steps: int) -> torch.Tensor:
    """DDPM's linear betas 1e-4 .. 0.02 (arXiv:2006.11239 Sec. 4), rescaled to T steps as in
    improved-DDPM's `get_named_beta_schedule`; abar for t = 0..T, float64."""
    scale = 1000 / num_steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    return torch.cat((torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)))


def alpha_bar_schedule(name: str, num_steps: int) -> torch.Tensor:
    if name == "cosine":
        return cosine_alpha_bar(num_steps)
    if name == "linear":
        return linear_alpha_bar(num_steps)
    raise ValueError(f"unknown noise schedule {name!r}; use one of {SCHEDULES}")


def sampling_timesteps(num_steps: int, sample_steps: int) -> torch.Tensor:
    """sample_steps timesteps, evenly spaced in 1..T and including both ends, ascending (long).
    The sampler walks them from T down and lands on 0 (improved-DDPM `space_timesteps`)."""
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample_steps must be in 1..{num_steps}, got {sample_steps}")
    if sample_steps == 1:
        return torch.tensor([num_steps])
    return torch.linspace(1, num_steps, sample_steps, dtype=torch.float64).round().long()


def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] as (B, 1, 1, 1) in like's dtype and device (tables stay float64 on the CPU)."""
    return table[t.cpu()].to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


# --- categorical pieces (pure functions) --------------------------------------------------

def log_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) long -> (B, K, H, W) log one-hot, LOG_ZERO off the label."""
    hit = torch.arange(num_classes, device=labels.device)[None, :, None, None] == labels[:, None]
    return torch.where(hit, 0.0, LOG_ZERO)


def categorical_posterior_log_probs(y_t: torch.Tensor, log_y0: torch.Tensor, abar_t: torch.Tensor,
                                    abar_s: torch.Tensor) -> torch.Tensor:
    """log q(y_s | y_t, y_0), normalised over classes: (B, K, H, W).

    y_t (B, H, W) long; log_y0 (B, K, H, W) log-probabilities of y_0 (a log one-hot for the true
    posterior, log_softmax(logits) for the model's); abar_t, abar_s (B,) float64 with s < t
    (abar_s = 1 at s = 0, where the second factor is y_0 itself). Hoogeboom eq. 13, in log space
    (`diffusion_multinomial.py` q_posterior).
    """
    K = log_y0.shape[1]
    a = abar_t / abar_s  # the one-step (or respaced) transition s -> t
    view = (-1, 1, 1, 1)
    # factor q(y_t | y_s) as a function of y_s: a + (1 - a)/K where y_s = y_t, (1 - a)/K elsewhere
    log_same = torch.log(a + (1 - a) / K).to(log_y0.dtype).view(view)
    log_diff = torch.log((1 - a) / K).to(log_y0.dtype).view(view)
    hit = torch.arange(K, device=y_t.device)[None, :, None, None] == y_t[:, None]
    log_step = torch.where(hit, log_same, log_diff)  # (B, K, H, W)
    # factor q(y_s | y_0) = abar_s y_0 + (1 - abar_s)/K; at s = 0 the log(0) = -inf term drops
    # out of logaddexp exactly
    log_marginal = torch.logaddexp(log_y0 + torch.log(abar_s).to(log_y0.dtype).view(view),
                                   torch.log((1 - abar_s) / K).to(log_y0.dtype).view(view))
    return torch.log_softmax(log_step + log_marginal, dim=1)


def categorical_kl(log_q: torch.Tensor, log_p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || p) = sum_k q_k (log q_k - log p_k) over `dim`, from log-probabilities (finite)."""
    return (log_q.exp() * (log_q - log_p)).sum(dim)


def draw(fn: Callable, shape, generator: torch.Generator, device: torch.device | str, **kwargs) -> torch.Tensor:
    """fn(shape) (torch.rand / randn / randint with low, high) drawn on the generator's device, then
    moved to `device`: a run's random draws are the same on a CPU and a GPU, and one checkpointed
    CPU generator serves both."""
    if fn is torch.randint:
        out = fn(kwargs.pop("low"), kwargs.pop("high"), tuple(shape), generator=generator,
                 device=generator.device, **kwargs)
    else:
        out = fn(tuple(shape), generator=generator, device=generator.device, **kwargs)
    return out.to(device)


def gumbel_sample(log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One class per pixel from (B, K, H, W) log-probabilities: argmax(log p + Gumbel) -> (B, H, W)."""
    u = draw(torch.rand, log_probs.shape, generator, log_probs.device, dtype=log_probs.dtype)
    # -log(-log u), with both logs kept finite: -log u in [1e-20, 46] (u = 1 would give log 0)
    neg_log_u = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)
    gumbel = -torch.log(neg_log_u)
    return (log_probs + gumbel).argmax(dim=1)


def uniform_resample(labels: torch.Tensor, keep_prob: torch.Tensor, num_classes: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Cat(a y + (1 - a)/K) for one-hot y: keep each label with probability a (B,), else draw a
    class uniformly (which may be the same one). Exact and cheaper than sampling K-way."""
    keep = draw(torch.rand, labels.shape, generator, labels.device)
    fresh = draw(torch.randint, labels.shape, generator, labels.device, low=0, high=num_classes)
    return torch.where(keep < keep_prob.to(labels.device, torch.float32).view(-1, 1, 1), labels, fresh)


# --- the process ----------------------------------------------------------------------------

class GaussianCategoricalDiffusion:
    """The two forward processes at a shared t, their posteriors, and the training loss.

    num_classes: K (0 for an image-only process, the ablation baseline); num_steps: T;
    image_schedule / layout_schedule: "cosine" (GCDP's MM CelebA-HQ setting, both) or "linear".
    GCDP uses abar itself for the categorical schedule (not Hoogeboom's square root).
    """

    def __init__(self, num_classes: int, num_steps: int = 1000, image_schedule: str = "cosine",
                 layout_schedule: str = "cosine"):
        self.num_classes = num_classes
        self.num_steps = num_steps
        self.image_alpha_bar = alpha_bar_schedule(image_schedule, num_steps)    # (T + 1,) f64
        self.layout_alpha_bar = alpha_bar_schedule(layout_schedule, num_steps)  # (T + 1,) f64

    # forward process

    def sample_timesteps(self, batch: int, generator: torch.Generator,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """t ~ U{1..T}, (B,) long."""
        return torch.randint(1, self.num_steps + 1, (batch,), generator=generator, device=device)

    def q_sample_image(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                       ) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, x0 (B, 3, H, W)."""
        abar = _at(self.image_alpha_bar, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_sample_layout(self, y0: torch.Tensor, t: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        """y_t ~ Cat(abar_t y_0 + (1 - abar_t)/K), y0 (B, H, W) long -> (B, H, W) long."""
        return uniform_resample(y0, self.layout_alpha_bar[t.cpu()], self.num_classes, generator)

    def layout_posterior(self, y_t: torch.Tensor, log_y0: torch.Tensor, t: torch.Tensor,
                         s: torch.Tensor) -> torch.Tensor:
        """log q(y_s | y_t, y_0) for timesteps t > s >= 0 (B,), see the module docstring."""
        return categorical_posterior_log_probs(
            y_t, log_y0, self.layout_alpha_bar[t.cpu()].to(y_t.device),
            self.layout_alpha_bar[s.cpu()].to(y_t.device))

    # training loss

    def training_losses(self, net: Callable, images: torch.Tensor, layouts: torch.Tensor | None,
                        words: torch.Tensor | None, word_mask: torch.Tensor | None,
                        sentence: torch.Tensor | None, drop_text: torch.Tensor | None,
                        generator: torch.Generator, layout_weight: float = 1.0,
                        p2_gamma: float = 0.0, draws: dict[str, torch.Tensor] | None = None,
                        cond: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One Monte-Carlo draw of the GCDP loss for a batch: t, eps and y_t drawn from `generator`.

        images (B, 3, H, W) in [-1, 1]; layouts (B, H, W) long in 0..K-1, None for an image-only
        net; text as JointUNet.forward takes it, drop_text (B,) bool drawn by the caller
        (`text_drop_mask`; pass one even at p = 0, so that the null text stays in the graph and
        DDP sees a gradient for every parameter).

        Returns scalar tensors: "loss" (the one to backpropagate) = image_loss + layout_weight *
        layout_loss, "image_loss" = MSE(eps_hat, eps) (the simple loss, DDPM eq. 14),
        "layout_loss" = T * L_{t-1} / (K ln 2) per pixel, where L_{t-1} =
        KL(q(y_{t-1}|y_t,y_0) || p(y_{t-1}|y_t)) and at t = 1 the decoder NLL -log p(y_0|y_1):
        the uniform-t estimate of the categorical VLB (Hoogeboom `loss_fn`: vb = L_t / p_t),
        normalised per logit in bits as GCDP's `MultinomialDiffusion.loss_fn` does (so GCDP's
        lambda = 1 means the same here). The constant prior term KL(q(y_T|y_0) || U) is left out.
        p2_gamma > 0 weights each sample by (1 + SNR_t)^-gamma (Choi et al., arXiv:2204.00227;
        GCDP trains with imagen-pytorch's default 0.5 on both terms); 0 (default) = unweighted.
        `draws` (training_draws' dict) gives t, eps and y_t instead of drawing them. `cond`: more
        per-sample inputs of the net as keyword arguments (a super-resolution stage's low-res pair).
        """
        B = images.shape[0]
        if draws is None:
            draws = self.training_draws(images, layouts, generator)
        t, noise, y_t = draws["t"], draws["noise"], draws.get("y_t")
        x_t = self.q_sample_image(images, t, noise)
        eps_hat, logits = net(x_t, y_t, t, words, word_mask, sentence, drop_text, **(cond or {}))
        weight = torch.ones(B, device=images.device, dtype=images.dtype)
        if p2_gamma:
            abar = self.image_alpha_bar[t.cpu()]
            weight = ((1 + abar / (1 - abar)) ** -p2_gamma).to(images)  # (B,)
        image_loss = (weight * (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        if layouts is None:
            return {"loss": image_loss, "image_loss": image_loss.detach()}
        per_sample = self.layout_vb(logits, layouts, y_t, t)  # (B,)
        layout_loss = (weight * per_sample).mean()
        return {"loss": image_loss + layout_weight * layout_loss,
                "image_loss": image_loss.detach(), "layout_loss": layout_loss.detach()}

    def training_draws(self, images: torch.Tensor, layouts: torch.Tensor | None,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parts of one training_losses call: t (B,), noise like images, y_t (B, H, W)
        (absent for an image-only batch). Drawn from the CPU `generator` and moved to the images'
        device, so that a run's draws do not depend on where it trains and a resume replays them."""
        B, device = images.shape[0], images.device
        t = self.sample_timesteps(B, generator)
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
        out = {"t": t.to(device), "noise": noise.to(device)}
        if layouts is not None:
            out["y_t"] = self.q_sample_layout(layouts.cpu(), t, generator).to(device)
        return out

    def layout_vb(self, logits: torch.Tensor, y0: torch.Tensor, y_t: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """Per-sample T * L_{t-1} / (K ln 2), mean over pixels: (B,). See training_losses."""
        K = self.num_classes
        log_p = self.layout_posterior(y_t, F.log_softmax(logits.float(), dim=1), t, t - 1)
        log_q = self.layout_posterior(y_t, log_onehot(y0, K), t, t - 1)
        kl = categorical_kl(log_q, log_p)  # (B, H, W) nats
        nll = -log_p.gather(1, y0[:, None]).squeeze(1)  # (B, H, W): -log p(y_0 | y_1)
        term = torch.where((t == 1).view(-1, 1, 1), nll, kl)
        return term.mean(dim=(1, 2)) * self.num_steps / (K * math.log(2))


def lowres_alpha_bar(level: torch.Tensor) -> torch.Tensor:
    """abar at a continuous level in [0, 1] of the linear log-SNR schedule that noise-augments a
    cascade's low-res conditioning: log SNR = -log(expm1(1e-4 + 10 level²)), so abar = sigmoid(log
    SNR) = exp(-(1e-4 + 10 level²)) (imagen-pytorch `beta_linear_log_snr`, its default
    `lowres_noise_schedule='linear'`, which GCDP keeps)."""
    return torch.exp(-(1e-4 + 10 * level.double() ** 2))


def augment_lowres(images: torch.Tensor, layouts: torch.Tensor | None, level: torch.Tensor,
                   num_classes: int, generator: torch.Generator
                   ) -> dict[str, torch.Tensor | None]:
    """Noise conditioning augmentation of a super-resolution stage's low-res input (Imagen,
    Saharia et al., arXiv:2205.11487 Sec. 2.5; GCDP applies it to both modalities): the image
    through its Gaussian forward process and the layout through the uniform categorical one, both
    at `level` (B,) in [0, 1) with `lowres_alpha_bar`. Training draws level ~ U(0, 1) per sample;
    sampling uses one fixed level (GCDP `lowres_sample_noise_level` 0.2), which the net is told.
    images (B, 3, h, w), layouts (B, h, w) long or None. Returns the net's keyword inputs
    lowres_image, lowres_layout, lowres_level (float32, like images)."""
    abar = lowres_alpha_bar(level.cpu())  # (B,) float64
    noise = draw(torch.randn, images.shape, generator, images.device, dtype=images.dtype)
    view = (-1, 1, 1, 1)
    image = (abar.sqrt().to(images).view(view) * images
             + (1 - abar).sqrt().to(images).view(view) * noise)
    layout = (None if layouts is None
              else uniform_resample(layouts, abar, num_classes, generator))
    return {"lowres_image": image, "lowres_layout": layout,
            "lowres_level": level.to(device=images.device, dtype=torch.float32)}


def text_drop_mask(batch: int, p: float, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) bool, True (use the null text) with probability p: classifier-free guidance training
    (GCDP cond_drop_prob = 0.1)."""
    return draw(torch.rand, (batch,), generator, device) < p


# --- sampling (free functions; randomness passed in) ----------------------------------------

def guided_prediction(net: Callable, x_t: torch.Tensor, y_t: torch.Tensor | None, t: torch.Tensor,
                      words: torch.Tensor | None, word_mask: torch.Tensor | None,
                      sentence: torch.Tensor | None, guidance_scale: float,
                      cond: Mapping[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eps, logits) with classifier-free guidance, uncond + w (cond - uncond), applied to eps and
    to the raw layout logits (GCDP `JointUnet.forward_with_cond_scale`). w = 1 is the conditional
    prediction (one forward); otherwise cond and uncond run as one doubled batch. `cond`: more
    per-sample keyword inputs of the net (the low-res pair of a super-resolution stage), kept in
    both halves: only the text is dropped."""
    cond = dict(cond or {})
    if guidance_scale == 1.0 or words is None:
        return net(x_t, y_t, t, words, word_mask, sentence, **cond)
    B = x_t.shape[0]
    drop = torch.cat((torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)))

    def twice(v: torch.Tensor | None) -> torch.Tensor | None:
        return None if v is None else torch.cat((v, v))

    eps, logits = net(twice(x_t), twice(y_t), twice(t), twice(words), twice(word_mask),
                      twice(sentence), drop.to(x_t.device), **{k: twice(v) for k, v in cond.items()})
    eps = apply_guidance(eps[:B], eps[B:], guidance_scale)
    if logits is not None:
        logits = apply_guidance(logits[:B], logits[B:], guidance_scale)
    return eps, logits


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def denoise_step(net: Callable, process: GaussianCategoricalDiffusion, x_t: torch.Tensor,
                 y_t: torch.Tensor | None, t: int, s: int, words: torch.Tensor | None,
                 word_mask: torch.Tensor | None, sentence: torch.Tensor | None,
                 guidance_scale: float, generator: torch.Generator, clip_x0: bool = True,
                 cond: Mapping[str, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ancestral step from timestep t to s < t for both modalities: (x_s, y_s).

    Image: x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), clipped to [-1, 1], then a
    draw from the Gaussian posterior q(x_s | x_t, x0_hat) (DDPM eqs. 6-7 with the respaced beta
    = 1 - abar_t / abar_s; variance 0 at s = 0). Layout: a draw from p(y_s | y_t) =
    q(y_s | y_t, softmax(logits)). The image noise is drawn before the layout's Gumbel noise.
    """
    B = x_t.shape[0]
    tt = torch.full((B,), t, dtype=torch.long, device=x_t.device)
    eps_hat, logits = guided_prediction(net, x_t, y_t, tt, words, word_mask, sentence,
                                        guidance_scale, cond)
    abar_t = float(process.image_alpha_bar[t])
    abar_s = float(process.image_alpha_bar[s])
    beta = 1 - abar_t / abar_s
    x0_hat = (x_t - math.sqrt(1 - abar_t) * eps_hat) / math.sqrt(abar_t)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    mean = (math.sqrt(abar_s) * beta / (1 - abar_t)) * x0_hat \
        + (math.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t)) * x_t
    var = (1 - abar_s) / (1 - abar_t) * beta
    noise = draw(torch.randn, x_t.shape, generator, x_t.device, dtype=x_t.dtype)
    x_s = mean + math.sqrt(var) * noise
    if y_t is None:
        return x_s, None
    ss = torch.full_like(tt, s)
    log_p = process.layout_posterior(y_t, F.log_softmax(logits.float(), dim=1), tt, ss)
    return x_s, gumbel_sample(log_p, generator)


def renoise_step(process: GaussianCategoricalDiffusion, x_s: torch.Tensor,
                 y_s: torch.Tensor | None, s: int, t: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The exact forward transition from s back up to t > s for both modalities (RePaint's jump):
    x_t = sqrt(a) x_s + sqrt(1 - a) eps and y_t ~ Cat(a' y_s + (1 - a')/K), a = abar_t / abar_s."""
    a_img = float(process.image_alpha_bar[t] / process.image_alpha_bar[s])
    noise = draw(torch.randn, x_s.shape, generator, x_s.device, dtype=x_s.dtype)
    x_t = math.sqrt(a_img) * x_s + math.sqrt(1 - a_img) * noise
    if y_s is None:
        return x_t, None
    a_lay = (process.layout_alpha_bar[t] / process.layout_alpha_bar[s]).expand(y_s.shape[0])
    return x_t, uniform_resample(y_s, a_lay, process.num_classes, generator)


def _prior(process: GaussianCategoricalDiffusion, batch: int, height: int, width: int,
           with_layout: bool, generator: torch.Generator, device: torch.device | str
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_T ~ N(0, I), y_T ~ Uniform{0..K-1} per pixel."""
    x = draw(torch.randn, (batch, 3, height, width), generator, device)
    y = (draw(torch.randint, (batch, height, width), generator, device, low=0, high=process.num_classes)
         if with_layout else None)
    return x, y


@torch.no_grad()
def sample(net: Callable, process: GaussianCategoricalDiffusion, batch: int, height: int,
           width: int, words: torch.Tensor | None, word_mask: torch.Tensor | None,
           sentence: torch.Tensor | None, generator: torch.Generator, sample_steps: int = 100,
           guidance_scale: float = 1.0, with_layout: bool = True, clip_x0: bool = True,
           device: torch.device | str = "cpu", cond: Mapping[str, torch.Tensor] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ancestral sampling of (images (B, 3, H, W) in [-1, 1], layouts (B, H, W) long) from the
    prior through sample_steps respaced steps (GCDP samples 100 steps, guidance 3). Text as
    JointUNet.forward takes it (all None: unconditional). with_layout=False for an image-only net.
    The final layout is a draw from p(y_0 | y_1), as in GCDP's sampler. `cond`: the net's extra
    per-sample inputs (a super-resolution stage's low-res pair, `augment_lowres`)."""
    timesteps = sampling_timesteps(process.num_steps, sample_steps).tolist()
    x, y = _prior(process, batch, height, width, with_layout, generator, device)
    for t, s in zip(reversed(timesteps), reversed([0] + timesteps[:-1])):
        x, y = denoise_step(net, process, x, y, t, s, words, word_mask, sentence, guidance_scale,
                            generator, clip_x0, cond)
    return x.clamp(-1, 1), y


def outpaint_step(net: Callable, process: GaussianCategoricalDiffusion, x_t: torch.Tensor,
                  y_t: torch.Tensor, t: int, s: int, known_images: torch.Tensor | None,
                  known_layouts: torch.Tensor | None, words: torch.Tensor | None,
                  word_mask: torch.Tensor | None, sentence: torch.Tensor | None,
                  guidance_scale: float, generator: torch.Generator, clip_x0: bool = True,
                  cond: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One RePaint step t -> s: the known modality is first replaced by a fresh draw from its own
    forward process q(. | known_0) at t (drawn first from `generator`), then both are denoised;
    the model's draw for the known modality at s is discarded by the next replacement."""
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    if known_images is not None:
        noise = draw(torch.randn, known_images.shape, generator, x_t.device, dtype=x_t.dtype)
        x_t = process.q_sample_image(known_images, tt, noise)
    else:
        y_t = process.q_sample_layout(known_layouts, tt, generator)
    return denoise_step(net, process, x_t, y_t, t, s, words, word_mask, sentence,
                        guidance_scale, generator, clip_x0, cond)


@torch.no_grad()
def outpaint(net: Callable, process: GaussianCategoricalDiffusion, words: torch.Tensor | None,
             word_mask: torch.Tensor | None, sentence: torch.Tensor | None,
             generator: torch.Generator, known_images: torch.Tensor | None = None,
             known_layouts: torch.Tensor | None = None, sample_steps: int = 100,
             guidance_scale: float = 1.0, resample_steps: int = 1, clip_x0: bool = True,
             cond: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-modal outpainting (GCDP Sec. 4.6 with RePaint, Lugmayr et al., arXiv:2201.09865
    Alg. 1): give exactly one of known_images (B, 3, H, W) (image -> layout, text-guided
    segmentation) or known_layouts (B, H, W) (layout -> image, text-guided semantic synthesis).

    At every step the known modality is replaced by q(. | known_0) at that step; each step is
    denoised resample_steps = n times, going back up with the exact forward transition between
    passes (n = 1: plain replacement; GCDP uses n = 1 for layouts and n = 5 for images, its
    `inpaint_resample_times`). Returns (images, layouts) with the known one equal to the input.
    `cond`: the net's extra per-sample inputs (a super-resolution stage's low-res pair).
    """
    if (known_images is None) == (known_layouts is None):
        raise ValueError("outpaint needs exactly one of known_images or known_layouts")
    if resample_steps < 1:
        raise ValueError(f"resample_steps must be >= 1, got {resample_steps}")
    known = known_images if known_images is not None else known_layouts
    B, H, W = known.shape[0], known.shape[-2], known.shape[-1]
    timesteps = sampling_timesteps(process.num_steps, sample_steps).tolist()
    x, y = _prior(process, B, H, W, True, generator, known.device)
    for t, s in zip(reversed(timesteps), reversed([0] + timesteps[:-1])):
        for r in range(resample_steps):
            if r > 0:  # RePaint jump: back up from s to t with the forward transition
                x, y = renoise_step(process, x, y, s, t, generator)
            x, y = outpaint_step(net, process, x, y, t, s, known_images, known_layouts, words,
                                 word_mask, sentence, guidance_scale, generator, clip_x0, cond)
    if known_images is not None:
        return known_images, y
    return x.clamp(-1, 1), known_layouts
