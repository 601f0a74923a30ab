"""The DistillSpec divergences against hand-computed values on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from specdec.distill.losses import (KINDS, acceptance, divergence, divergence_from_logprobs, divergence_topk,
                                    teacher_topk)


def _logits(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2


def test_hand_computed_two_token_values():
    # p = [0.5, 0.5], q = [0.25, 0.75]
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    tl, sl = p.log(), q.log()
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = [0.375, 0.625]
    jsd = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert divergence(tl, sl, "fkl").item() == pytest.approx(fkl, abs=1e-6)
    assert divergence(tl, sl, "rkl").item() == pytest.approx(rkl, abs=1e-6)
    assert divergence(tl, sl, "jsd", beta=0.5).item() == pytest.approx(jsd, abs=1e-6)
    assert divergence(tl, sl, "tvd").item() == pytest.approx(0.25, abs=1e-6)
    # beta = 0.2 weights: m = 0.2 p + 0.8 q
    b = 0.2
    m2 = [b * 0.5 + (1 - b) * 0.25, b * 0.5 + (1 - b) * 0.75]
    jsd2 = b * sum(pi * math.log(pi / mi) for pi, mi in zip([0.5, 0.5], m2)) \
        + (1 - b) * sum(qi * math.log(qi / mi) for qi, mi in zip([0.25, 0.75], m2))
    assert divergence(tl, sl, "jsd", beta=b).item() == pytest.approx(jsd2, abs=1e-6)


def test_jsd_mixture_in_probability_space_not_log_space():
    t, s = _logits(0, (5, 7)), _logits(1, (5, 7))
    ours = divergence(t, s, "jsd", beta=0.3, reduction="none")
    p, q = t.softmax(-1), s.softmax(-1)
    m = 0.3 * p + 0.7 * q
    ref = 0.3 * (p * (p / m).log()).sum(-1) + 0.7 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-5)
    # the wrong mixture (log m = beta log p + (1-beta) log q) gives something else
    log_m_wrong = 0.3 * p.log() + 0.7 * q.log()
    wrong = 0.3 * (p * (p.log() - log_m_wrong)).sum(-1) + 0.7 * (q * (q.log() - log_m_wrong)).sum(-1)
    assert not torch.allclose(ours, wrong.float(), atol=1e-3)


def test_fkl_rkl_match_torch_kl_div():
    t, s = _logits(2, (2, 3, 5)), _logits(3, (2, 3, 5))
    t_lp, s_lp = t.log_softmax(-1), s.log_softmax(-1)
    fkl_ref = F.kl_div(s_lp, t_lp, log_target=True, reduction="sum")   # KL(p || q)
    rkl_ref = F.kl_div(t_lp, s_lp, log_target=True, reduction="sum")   # KL(q || p)
    assert divergence(t, s, "fkl").item() == pytest.approx(fkl_ref.item(), rel=1e-5)
    assert divergence(t, s, "rkl").item() == pytest.approx(rkl_ref.item(), rel=1e-5)


def test_jsd_half_is_symmetric_and_tvd_is_one_minus_acceptance():
    t, s = _logits(4, (2, 3, 5)), _logits(5, (2, 3, 5))
    assert divergence(t, s, "jsd", beta=0.5).item() == pytest.approx(divergence(s, t, "jsd", beta=0.5).item(), rel=1e-6)
    assert divergence(t, s, "jsd", beta=0.3).item() != pytest.approx(divergence(s, t, "jsd", beta=0.3).item(), rel=1e-3)
    p, q = t.softmax(-1), s.softmax(-1)
    ref = (1 - torch.minimum(p, q).sum(-1)).sum()
    assert divergence(t, s, "tvd").item() == pytest.approx(ref.item(), rel=1e-5)
    acc = acceptance(t.reshape(-1, 5), s.reshape(-1, 5), temperature=1.0)
    torch.testing.assert_close(acc, torch.minimum(p, q).sum(-1).reshape(-1).float())


@pytest.mark.parametrize("kind", KINDS)
def test_zero_on_equal_and_positive_otherwise(kind):
    t, s = _logits(6, (4, 9)), _logits(7, (4, 9))
    assert divergence(t, t, kind).abs().item() < 1e-5
    assert (divergence(t, s, kind, reduction="none") > 0).all()


def test_masking_only_counts_generated_tokens():
    t, s = _logits(8, (2, 4, 6)), _logits(9, (2, 4, 6))
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    got = divergence(t, s, "fkl", mask=mask)
    ref = sum(divergence(t[b, i][None], s[b, i][None], "fkl") for b, i in [(0, 1), (0, 2), (1, 0)])
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # garbage at masked positions has no effect
    t2 = t.clone()
    t2[0, 0] = 1e4
    assert divergence(t2, s, "fkl", mask=mask).item() == pytest.approx(got.item(), rel=1e-6)
    assert divergence(t, s, "fkl", mask=mask, normalizer=3).item() == pytest.approx(got.item() / 3, rel=1e-6)


def test_temperature_scales_both_models():
    t, s = _logits(10, (3, 6)), _logits(11, (3, 6))
    for T in (0.5, 2.0):
        got = divergence(t, s, "rkl", temperature=T)
        ref = F.kl_div((t / T).log_softmax(-1), (s / T).log_softmax(-1), log_target=True, reduction="sum")
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    # temperature 0 (greedy deployment) trains at T = 1
    assert divergence(t, s, "fkl", temperature=0).item() == pytest.approx(divergence(t, s, "fkl").item())
    # greedy acceptance is argmax agreement
    assert acceptance(t, s, 0).tolist() == (t.argmax(-1) == s.argmax(-1)).float().tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_global_normalisation_under_accumulation(kind):
    """Two micro-batches with different token counts, each divided by the GLOBAL count, give the same
    gradient as the one batch they came from; per-micro-batch normalisation does not."""
    V = 7
    t = _logits(12, (10, V)).float()
    w0 = _logits(13, (10, V)).float()
    mask_a = torch.zeros(10, dtype=torch.bool)
    mask_a[:3] = True                    # micro-batch A: 3 tokens, B: 7 tokens
    n = 10

    w = w0.clone().requires_grad_(True)
    divergence(t, w, kind, normalizer=n).backward()
    g_one = w.grad.clone()

    w = w0.clone().requires_grad_(True)
    for m in (mask_a, ~mask_a):
        divergence(t[m], w[m], kind, normalizer=torch.tensor(float(n))).backward()
    torch.testing.assert_close(w.grad, g_one, atol=1e-6, rtol=1e-5)

    w = w0.clone().requires_grad_(True)
    for m in (mask_a, ~mask_a):
        divergence(t[m], w[m], kind, normalizer=int(m.sum())).backward()
    assert not torch.allclose(w.grad, g_one, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_does_not_change_value_or_gradient(kind):
    t, s0 = _logits(14, (11, 8)).float(), _logits(15, (11, 8)).float()
    grads, vals = [], []
    for cs in (3, 1024):
        s = s0.clone().requires_grad_(True)
        v = divergence(t, s, kind, beta=0.4, chunk_size=cs, normalizer=11)
        v.backward()
        vals.append(v.item())
        grads.append(s.grad)
    assert vals[0] == pytest.approx(vals[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_topk_with_tail_equals_full_loss_when_k_is_v(kind, T):
    V = 9
    t, s0 = _logits(16, (6, V)).float(), _logits(17, (6, V)).float()
    idx, lp, tail = teacher_topk(t, V, temperature=T)
    assert torch.isinf(tail).all()
    s = s0.clone().requires_grad_(True)
    got = divergence_topk(idx, lp, tail, s, kind, beta=0.3, temperature=T)
    got.backward()
    s2 = s0.clone().requires_grad_(True)
    full = divergence(t, s2, kind, beta=0.3, temperature=T)
    full.backward()
    assert got.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(s.grad, s2.grad, atol=1e-5, rtol=1e-4)


def test_topk_tail_bucket_collapses_student_and_bounds_full_loss():
    V, K = 12, 3
    t, s = _logits(18, (5, V)).float(), _logits(19, (5, V)).float()
    idx, lp, tail = teacher_topk(t, K)
    p = t.softmax(-1)
    torch.testing.assert_close(tail.exp(), 1 - p.gather(-1, idx).sum(-1), atol=1e-6, rtol=1e-5)
    got = divergence_topk(idx, lp, tail, s, "fkl", reduction="none")
    # by hand: K+1 buckets for both models
    q = s.softmax(-1)
    pb = torch.cat([p.gather(-1, idx), tail.exp()[:, None]], -1)
    qb = torch.cat([q.gather(-1, idx), 1 - q.gather(-1, idx).sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(got, (pb * (pb / qb).log()).sum(-1), atol=1e-5, rtol=1e-5)
    # data processing inequality: the bucketed divergence never exceeds the full one
    full = divergence(t, s, "fkl", reduction="none")
    assert (got <= full + 1e-6).all()
    # a top-K loss WITHOUT the tail bucket is something else (and is not what we compute)
    no_tail = (pb[:, :K] * (pb[:, :K].log() - q.gather(-1, idx).log())).sum(-1)
    assert not torch.allclose(got, no_tail, atol=1e-3)


def test_bad_arguments_fail_clearly():
    t = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="divergence must be one of"):
        divergence(t, t, "kl")
    with pytest.raises(ValueError, match="beta"):
        divergence(t, t, "jsd", beta=1.0)
    with pytest.raises(ValueError, match="shared vocabulary"):
        divergence(t, torch.zeros(2, 4), "fkl")


def test_divergence_from_logprobs_handles_empty_buckets():
    t = torch.tensor([[0.0, float("-inf")]])          # p = [1, 0]
    s = torch.tensor([[math.log(0.5), math.log(0.5)]])
    assert divergence_from_logprobs(t, s, "fkl").item() == pytest.approx(math.log(2))
    assert divergence_from_logprobs(t, s, "tvd").item() == pytest.approx(0.5)
    assert math.isfinite(divergence_from_logprobs(t, s, "jsd").item())
