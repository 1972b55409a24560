"""DAMSM losses (AttnGAN, Xu et al. CVPR 2018, Eqs. 7-14; code: taoxugit/AttnGAN
`code/miscc/losses.py` words_loss / sent_loss and `code/GlobalAttention.py` func_attention).

Pure functions of tensors. Score matrices are laid out with images as rows and captions as
columns, as in the reference: loss 0 is image -> caption (pick the right caption for each image),
loss 1 is caption -> image. Both are mean-reduced cross-entropies with the diagonal as labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    # The reference's form: a.b / max(|a||b|, eps) (not F.cosine_similarity, which clamps each norm).
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)


def _symmetric_ce(scores: torch.Tensor, class_ids: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B images, B captions) -> (CE over captions per image, CE over images per caption)."""
    if class_ids is not None:
        # A caption of another image of the same class is not a wrong answer (CUB): drop such
        # off-diagonal pairs from the softmax by setting them to -inf.
        same = class_ids.view(-1, 1) == class_ids.view(1, -1)  # (B, B), symmetric
        same.fill_diagonal_(False)
        scores = scores.masked_fill(same, float("-inf"))
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def word_scores(regions: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor,
                gamma1: float, gamma2: float) -> torch.Tensor:
    """Image-caption scores R_w of the word-level DAMSM loss (gan_anchors 3.3 steps 1-5) for every
    (image j, caption i) pair: (B_img, B_cap).

    regions (B_img, D, h, w) or (B_img, D, R); words (B_cap, D, T); cap_lens (B_cap,): only the
    first cap_lens[i] words of caption i take part (padding is masked out of both softmaxes over
    words and out of the log-sum-exp). Each row depends on its image alone, so a data-parallel
    worker computes the rows of its own images against the global batch's captions.
    """
    B, D, T = words.shape
    v = regions.reshape(regions.shape[0], D, -1)  # (B_img, D, R): the region vectors of image j
    R = v.shape[2]
    valid = torch.arange(T, device=words.device) < cap_lens.to(words.device).view(B, 1)  # (B_cap, T)
    # 1. s[j, r, i, t] = v_{j,r} . e_{i,t}: every image j against every caption i (Eq. 7).
    s = torch.einsum("jdr,idt->jrit", v, words)  # (B_img, R, B_cap, T)
    # 2. Softmax over the (real) words of caption i, separately for each region (Eq. 8).
    s_bar = s.masked_fill(~valid, float("-inf")).softmax(dim=3)
    # 3. Attention of each word over the regions, sharpened by gamma1 (Eq. 9).
    alpha = (gamma1 * s_bar).softmax(dim=1)  # (B_img, R, B_cap, T)
    # 4. Relevance R = cos(c_t, e_t) of word t to its context c_t = sum_r alpha_rt v_r (Eq. 9-10).
    #    c (B_img x B_cap x D x T floats) is never built: c.e_t = sum_r alpha_rt s_rt and
    #    |c_t|^2 = alpha_t^T (V^T V) alpha_t need only the R x R Gram matrix of each image, which
    #    is ~3x faster on CPU for the cnn encoder's R=64 < D=256 and no slower for R=289.
    dot = (alpha * s).sum(dim=1)  # (B_img, B_cap, T)
    gram = v.transpose(1, 2) @ v  # (B_img, R, R)
    c_sq = (alpha * torch.bmm(gram, alpha.reshape(v.shape[0], R, -1)).view_as(alpha)).sum(dim=1)
    # The floor keeps sqrt's gradient finite if a context is exactly zero; the reference's
    # cosine floors |c||e| at 1e-8 the same way.
    rel = dot / (c_sq.clamp_min(1e-16).sqrt() * words.norm(dim=1)).clamp_min(1e-8)  # (B_img, B_cap, T)
    # 5. Image-caption score R_w = log sum_t exp(gamma2 R) (Eq. 10 without the paper's 1/gamma2,
    #    exactly as the reference code).
    return (gamma2 * rel).masked_fill(~valid, float("-inf")).logsumexp(dim=2)  # (B_img, B_cap)


def words_loss(regions: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor,
               gamma1: float, gamma2: float, gamma3: float,
               class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-level DAMSM loss (gan_anchors 3.3 steps 1-6) for every (image j, caption i) pair of a
    batch: regions (B, D, h, w) or (B, D, R), words (B, D, T), cap_lens (B,) as `word_scores`.
    Returns (loss_img2cap, loss_cap2img)."""
    # 6. Logits gamma3 * R_w, images as rows (Eq. 11-13).
    return _symmetric_ce(gamma3 * word_scores(regions, words, cap_lens, gamma1, gamma2), class_ids)


def sentence_loss(img_global: torch.Tensor, sent: torch.Tensor, gamma3: float,
                  class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence-level DAMSM loss (step 7): logits gamma3 * cos(v_bar_j, e_bar_i), images as rows.
    img_global (B, D), sent (B, D). Returns (loss_img2cap, loss_cap2img)."""
    scores = gamma3 * _cosine(img_global.unsqueeze(1), sent.unsqueeze(0), dim=2)  # (B_img, B_cap)
    return _symmetric_ce(scores, class_ids)


def damsm_loss(regions: torch.Tensor, img_global: torch.Tensor, words: torch.Tensor,
               sent: torch.Tensor, cap_lens: torch.Tensor, gamma1: float, gamma2: float,
               gamma3: float, class_ids: torch.Tensor | None = None) -> torch.Tensor:
    """L_DAMSM = L_w0 + L_w1 + L_s0 + L_s1 (step 8), a scalar."""
    return damsm_loss_from_scores(word_scores(regions, words, cap_lens, gamma1, gamma2), img_global, sent,
                                  gamma3, class_ids)


def damsm_loss_from_scores(r_w: torch.Tensor, img_global: torch.Tensor, sent: torch.Tensor, gamma3: float,
                           class_ids: torch.Tensor | None = None) -> torch.Tensor:
    """L_DAMSM from the word-level scores R_w (B, B) (`word_scores`), img_global (B, D), sent (B, D)."""
    w0, w1 = _symmetric_ce(gamma3 * r_w, class_ids)
    s0, s1 = sentence_loss(img_global, sent, gamma3, class_ids)
    return w0 + w1 + s0 + s1
