"""DAMSM and contrastive losses against explicit per-element references (python floats, loops
written straight from gan_anchors 3.3 and 4), plus behavioural checks."""
import math

import pytest
import torch

from t2i_ray.losses.contrastive import info_nce, nt_xent
from t2i_ray.losses.damsm import damsm_loss, damsm_loss_from_scores, sentence_loss, word_scores, words_loss

G1, G2, G3 = 4.0, 5.0, 10.0


# ---------------------------------------------------------------- loop references (floats)

def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / max(na * nb, 1e-8)


def _ce_both_ways(sim: list[list[float]], masked: set[tuple[int, int]]) -> tuple[float, float]:
    """sim[j][i]: image j, caption i. Masked (j, i) pairs are left out of the softmax."""
    B = len(sim)
    l0 = l1 = 0.0
    for j in range(B):  # image j must pick caption j among the captions
        l0 += -sim[j][j] + math.log(sum(math.exp(sim[j][i]) for i in range(B) if (j, i) not in masked))
    for i in range(B):  # caption i must pick image i among the images
        l1 += -sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(B) if (j, i) not in masked))
    return l0 / B, l1 / B


def _masked_pairs(class_ids: list[int] | None) -> set[tuple[int, int]]:
    if class_ids is None:
        return set()
    B = len(class_ids)
    return {(j, i) for j in range(B) for i in range(B) if i != j and class_ids[i] == class_ids[j]}


def ref_words_loss(regions, words, cap_lens, g1, g2, g3, class_ids=None):
    """regions (B, D, R), words (B, D, T) as nested lists; steps 1-6 of gan_anchors 3.3."""
    B, D, R = len(regions), len(regions[0]), len(regions[0][0])
    sim = [[0.0] * B for _ in range(B)]
    for i in range(B):  # caption i
        Ti = cap_lens[i]
        e = [[words[i][d][t] for d in range(D)] for t in range(Ti)]  # Ti word vectors
        for j in range(B):  # image j
            v = [[regions[j][d][r] for d in range(D)] for r in range(R)]  # R region vectors
            s = [[sum(e[t][d] * v[r][d] for d in range(D)) for r in range(R)] for t in range(Ti)]
            # softmax over words, per region
            sbar = [[0.0] * R for _ in range(Ti)]
            for r in range(R):
                z = sum(math.exp(s[t][r]) for t in range(Ti))
                for t in range(Ti):
                    sbar[t][r] = math.exp(s[t][r]) / z
            score = 0.0
            for t in range(Ti):
                # gamma1-softmax over regions, then the attended context c_t
                z = sum(math.exp(g1 * sbar[t][r]) for r in range(R))
                alpha = [math.exp(g1 * sbar[t][r]) / z for r in range(R)]
                c = [sum(alpha[r] * v[r][d] for r in range(R)) for d in range(D)]
                score += math.exp(g2 * _cos(c, e[t]))
            sim[j][i] = g3 * math.log(score)
    return _ce_both_ways(sim, _masked_pairs(class_ids))


def ref_sentence_loss(img, sent, g3, class_ids=None):
    B = len(img)
    sim = [[g3 * _cos(img[j], sent[i]) for i in range(B)] for j in range(B)]
    return _ce_both_ways(sim, _masked_pairs(class_ids))


def ref_nt_xent(z1, z2, tau):
    z = z1 + z2  # 2N vectors; partner of k is (k + N) mod 2N
    n2, N = len(z), len(z1)
    total = 0.0
    for k in range(n2):
        pos = (k + N) % n2
        denom = sum(math.exp(_cos(z[k], z[m]) / tau) for m in range(n2) if m != k)
        total += -math.log(math.exp(_cos(z[k], z[pos]) / tau) / denom)
    return total / n2


def ref_info_nce(a, b, tau):
    N = len(a)
    l_ab = sum(-_cos(a[i], b[i]) / tau + math.log(sum(math.exp(_cos(a[i], b[j]) / tau) for j in range(N)))
               for i in range(N)) / N
    l_ba = sum(-_cos(b[i], a[i]) / tau + math.log(sum(math.exp(_cos(b[i], a[j]) / tau) for j in range(N)))
               for i in range(N)) / N
    return 0.5 * (l_ab + l_ba)


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def tiny():
    """B=3, D=4, T=3 with cap_lens (3, 1, 2), regions as a 2x2 map (R=4)."""
    g = torch.Generator().manual_seed(0)
    return dict(regions=torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64),
                words=torch.randn(3, 4, 3, generator=g, dtype=torch.float64),
                cap_lens=torch.tensor([3, 1, 2]),
                img=torch.randn(3, 4, generator=g, dtype=torch.float64),
                sent=torch.randn(3, 4, generator=g, dtype=torch.float64))


def _aligned_batch(B=6, D=8, T=4, R=5, noise=0.3, seed=1):
    """Image j's regions and caption j's words are noisy copies of one concept vector."""
    g = torch.Generator().manual_seed(seed)
    concept = torch.randn(B, D, 1, generator=g)
    regions = concept + noise * torch.randn(B, D, R, generator=g)
    words = concept + noise * torch.randn(B, D, T, generator=g)
    cap_lens = torch.randint(1, T + 1, (B,), generator=g)
    return regions, words, cap_lens, concept[:, :, 0]


# ---------------------------------------------------------------- DAMSM words / sentence

@pytest.mark.parametrize("class_ids", [None, [7, 2, 7]])
def test_words_loss_matches_loop_reference(tiny, class_ids):
    cid = None if class_ids is None else torch.tensor(class_ids)
    l0, l1 = words_loss(tiny["regions"], tiny["words"], tiny["cap_lens"], G1, G2, G3, cid)
    r0, r1 = ref_words_loss(tiny["regions"].flatten(2).tolist(), tiny["words"].tolist(),
                            tiny["cap_lens"].tolist(), G1, G2, G3, class_ids)
    assert l0.item() == pytest.approx(r0, abs=1e-5)
    assert l1.item() == pytest.approx(r1, abs=1e-5)


def test_words_loss_accepts_flat_regions(tiny):
    a = words_loss(tiny["regions"], tiny["words"], tiny["cap_lens"], G1, G2, G3)
    b = words_loss(tiny["regions"].flatten(2), tiny["words"], tiny["cap_lens"], G1, G2, G3)
    assert torch.equal(torch.stack(a), torch.stack(b))


def test_word_score_rows_of_some_images_are_those_rows_of_the_full_matrix():
    """What a data-parallel worker computes: its images against every caption of the batch."""
    regions, words, cap_lens, _ = _aligned_batch(B=6)
    full = word_scores(regions, words, cap_lens, G1, G2)
    assert full.shape == (6, 6)
    torch.testing.assert_close(torch.cat([word_scores(regions[:2], words, cap_lens, G1, G2),
                                          word_scores(regions[2:], words, cap_lens, G1, G2)]), full)
    img, sent = regions.mean(2), words.mean(2)
    assert torch.equal(damsm_loss_from_scores(full, img, sent, G3), damsm_loss(regions, img, words, sent, cap_lens,
                                                                               G1, G2, G3))


def test_words_loss_ignores_padded_words(tiny):
    words = tiny["words"].clone().requires_grad_(True)
    l0, l1 = words_loss(tiny["regions"], words, tiny["cap_lens"], G1, G2, G3)
    (l0 + l1).backward()
    garbage = tiny["words"].clone()
    for i, n in enumerate(tiny["cap_lens"].tolist()):
        garbage[i, :, n:] = 100 * torch.randn(4, 3 - n, dtype=torch.float64)
    g0, g1 = words_loss(tiny["regions"], garbage, tiny["cap_lens"], G1, G2, G3)
    assert g0.item() == pytest.approx(l0.item(), abs=1e-12)
    assert g1.item() == pytest.approx(l1.item(), abs=1e-12)
    # Padded positions get exactly zero gradient, real ones do not.
    assert torch.isfinite(words.grad).all()
    assert words.grad[1, :, 1:].abs().max() == 0 and words.grad[2, :, 2:].abs().max() == 0
    assert words.grad[1, :, 0].abs().max() > 0


def test_words_loss_float32_agrees_with_float64():
    # |c|^2 comes from a Gram matrix, not from c itself: check float32 rounding stays small at
    # the cnn encoder's sizes (R=64 zero-mean regions, so contexts are short vectors).
    g = torch.Generator().manual_seed(6)
    regions = torch.randn(8, 256, 64, generator=g, dtype=torch.float64)
    words = torch.randn(8, 256, 18, generator=g, dtype=torch.float64)
    cap_lens = torch.randint(1, 19, (8,), generator=g)
    l64 = torch.stack(words_loss(regions, words, cap_lens, G1, G2, G3))
    l32 = torch.stack(words_loss(regions.float(), words.float(), cap_lens, G1, G2, G3))
    torch.testing.assert_close(l32.double(), l64, rtol=1e-4, atol=1e-4)


def test_words_loss_zero_padding_has_finite_gradients():
    # The text encoder emits exact zeros at padded steps: norms of zero vectors must not give NaN.
    regions, words, _, _ = _aligned_batch()
    cap_lens = torch.tensor([4, 1, 2, 3, 1, 4])
    words = torch.where(torch.arange(4) < cap_lens.view(-1, 1, 1), words, 0.0).requires_grad_(True)
    regions.requires_grad_(True)
    sum(words_loss(regions, words, cap_lens, G1, G2, G3)).backward()
    assert torch.isfinite(words.grad).all() and torch.isfinite(regions.grad).all()


def test_words_loss_prefers_aligned_pairs():
    regions, words, cap_lens, _ = _aligned_batch()
    aligned = sum(words_loss(regions, words, cap_lens, G1, G2, G3))
    perm = torch.roll(torch.arange(6), 1)  # a derangement: every caption gets another image
    shuffled = sum(words_loss(regions, words[perm], cap_lens[perm], G1, G2, G3))
    assert aligned < shuffled - 1.0


def test_sentence_loss_matches_loop_reference(tiny):
    for class_ids in (None, [1, 1, 1], [0, 5, 0]):
        cid = None if class_ids is None else torch.tensor(class_ids)
        l0, l1 = sentence_loss(tiny["img"], tiny["sent"], G3, cid)
        r0, r1 = ref_sentence_loss(tiny["img"].tolist(), tiny["sent"].tolist(), G3, class_ids)
        assert l0.item() == pytest.approx(r0, abs=1e-5)
        assert l1.item() == pytest.approx(r1, abs=1e-5)


def test_class_masking_removes_negatives():
    regions, words, cap_lens, concept = _aligned_batch(noise=1.0)
    sent = concept + torch.randn(6, 8)
    distinct = torch.arange(6)
    grouped = torch.tensor([0, 0, 1, 1, 2, 2])
    plain = damsm_loss(regions, concept, words, sent, cap_lens, G1, G2, G3)
    # All classes distinct: nothing is masked.
    assert damsm_loss(regions, concept, words, sent, cap_lens, G1, G2, G3, distinct).item() == pytest.approx(plain.item())
    # Masking same-class negatives removes terms from every softmax denominator: strictly lower.
    masked_w = words_loss(regions, words, cap_lens, G1, G2, G3, grouped)
    plain_w = words_loss(regions, words, cap_lens, G1, G2, G3)
    masked_s = sentence_loss(concept, sent, G3, grouped)
    plain_s = sentence_loss(concept, sent, G3)
    for m, p in zip((*masked_w, *masked_s), (*plain_w, *plain_s)):
        assert m < p
    # One class for the whole batch: each softmax has only the positive left, so the loss is 0.
    same = torch.zeros(6, dtype=torch.long)
    assert damsm_loss(regions, concept, words, sent, cap_lens, G1, G2, G3, same).item() == pytest.approx(0.0, abs=1e-6)


def test_damsm_loss_is_sum_of_four_terms(tiny):
    total = damsm_loss(tiny["regions"], tiny["img"], tiny["words"], tiny["sent"], tiny["cap_lens"], G1, G2, G3)
    w0, w1 = ref_words_loss(tiny["regions"].flatten(2).tolist(), tiny["words"].tolist(),
                            tiny["cap_lens"].tolist(), G1, G2, G3)
    s0, s1 = ref_sentence_loss(tiny["img"].tolist(), tiny["sent"].tolist(), G3)
    assert total.dim() == 0
    assert total.item() == pytest.approx(w0 + w1 + s0 + s1, abs=1e-5)


# ---------------------------------------------------------------- NT-Xent / InfoNCE

def test_nt_xent_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    for tau in (0.5, 0.1, 2.0):
        assert nt_xent(z1, z2, tau).item() == pytest.approx(ref_nt_xent(z1.tolist(), z2.tolist(), tau), abs=1e-5)
    assert nt_xent(z1, z2).item() == pytest.approx(ref_nt_xent(z1.tolist(), z2.tolist(), 0.5), abs=1e-5)


def test_nt_xent_identical_views_low_temperature_near_minimum():
    z = torch.eye(4)[:3] * torch.tensor([[1.0], [3.0], [0.5]])  # orthogonal rows, varied norms
    # Minimum is 0 as tau -> 0: each anchor's remaining 4 negatives have cosine 0 -> log(1 + 4 e^{-1/tau}).
    assert nt_xent(z, z, 0.05).item() == pytest.approx(math.log1p(4 * math.exp(-20)), abs=1e-7)
    assert nt_xent(z, z, 0.05).item() < 1e-6
    g = torch.Generator().manual_seed(3)
    assert nt_xent(z, torch.randn(3, 4, generator=g), 0.05) > 1.0


def test_nt_xent_prefers_matching_views():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 0.2 * torch.randn(8, 16, generator=g)
    assert nt_xent(z1, z2) < nt_xent(z1, z2[torch.roll(torch.arange(8), 1)])


def test_info_nce_matches_reference_and_is_symmetric():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert info_nce(a, b, 0.1).item() == pytest.approx(ref_info_nce(a.tolist(), b.tolist(), 0.1), abs=1e-5)
    assert info_nce(a, b, 0.1).item() == pytest.approx(info_nce(b, a, 0.1).item(), abs=1e-12)
    # Aligned pairs beat shuffled ones.
    b_aligned = a + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert info_nce(a, b_aligned, 0.1) < info_nce(a, b_aligned[torch.tensor([1, 2, 0])], 0.1)
