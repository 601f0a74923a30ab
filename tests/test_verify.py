"""verify(): greedy semantics exactly, and lossless sampling statistically (see conftest.ALPHA).

The statistical tests run against every backend: the PyTorch reference and the Triton kernel (under
TRITON_INTERPRET=1 on machines without CUDA).
"""
import importlib.util

import pytest
import torch

from conftest import ALPHA, binom_pvalue, chi2_pvalue
from specdec import verify as _verify
from specdec.engine.sampling import probs_from_logits
from specdec.engine.verify import lenient_target

HAS_TRITON_KERNEL = importlib.util.find_spec("specdec.kernels.verify_triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not HAS_TRITON_KERNEL, reason="Triton verification kernel not built"))]
# Under TRITON_INTERPRET=1 each Triton program runs in Python (~10 ms a row here), so the kernel's
# statistical tests use fewer rows; on CUDA they use as many as the reference.
SLOW_TRITON = not torch.cuda.is_available()


def verify(*args, backend="torch", **kw):
    """specdec.verify, with the Triton backend's inputs on CUDA where there is a GPU (the compiled
    kernel; bench/gpu_check.sh runs this file there) and results back on the CPU for the checks."""
    if backend == "triton" and torch.cuda.is_available():
        def cuda(x):
            return x.cuda() if isinstance(x, torch.Tensor) else x
        res = _verify(*map(cuda, args), backend=backend, **{k: cuda(v) for k, v in kw.items()})
        return type(res)(res.tokens.cpu(), res.num_accepted.cpu())
    return _verify(*args, backend=backend, **kw)


def rows_for(backend, n):
    return n // 4 if backend == "triton" and SLOW_TRITON else n


def _setup(V=6, K=2, N=3000, temperature=1.0, seed=0, closeness=0.7):
    """One fixed (p, q) per position, repeated over N rows; drafts sampled from q independently per row."""
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(1, K + 1, V, generator=g) * 1.5
    d_logits = t_logits[:, :K] + closeness * torch.randn(1, K, V, generator=g)
    q = probs_from_logits(d_logits, temperature)[0]                                 # [K, V]
    drafts = torch.stack([torch.multinomial(q[k], N, replacement=True, generator=g) for k in range(K)], 1)
    return t_logits.expand(N, K + 1, V).contiguous(), d_logits.expand(N, K, V).contiguous(), drafts


@pytest.mark.parametrize("backend,temperature", [("torch", 1.0), ("torch", 0.6),
                                                 pytest.param("triton", 0.6, marks=BACKENDS[1].marks)])
def test_sampling_is_lossless(backend, temperature):
    V, K, N = 6, 2, rows_for(backend, 4000)
    t_logits, d_logits, drafts = _setup(V, K, N, temperature)
    g = torch.Generator().manual_seed(1)
    res = verify(t_logits, d_logits, drafts, temperature=temperature, generator=g, backend=backend)
    p = probs_from_logits(t_logits[0], temperature)                                 # [K+1, V]
    q = probs_from_logits(d_logits[0], temperature)
    tok, acc = res.tokens, res.num_accepted
    assert ((acc >= 0) & (acc <= K)).all()
    # Emitted token at the first position ~ p_1.
    assert chi2_pvalue(torch.bincount(tok[:, 0], minlength=V), p[0]) > ALPHA
    # Given position 1 accepted, the token at position 2 ~ p_2 (accepted draft or recovered).
    sel = acc >= 1
    assert sel.sum() > N / 6
    assert chi2_pvalue(torch.bincount(tok[sel, 1], minlength=V), p[1]) > ALPHA
    # Bonus: all K accepted -> token K ~ p_{K+1}.
    sel = acc == K
    assert sel.sum() > N / 10
    assert chi2_pvalue(torch.bincount(tok[sel, K], minlength=V), p[K]) > ALPHA
    # Acceptance probability at position 1 = sum_x min(p, q) = 1 - TVD.
    beta = torch.minimum(p[0], q[0]).sum().item()
    assert binom_pvalue(int((acc >= 1).sum()), N, beta) > ALPHA
    # Layout: accepted drafts, then one token, then -1.
    ar = torch.arange(K + 1)[None]
    assert (tok[ar > acc[:, None]] == -1).all()
    assert (tok[ar <= acc[:, None]] >= 0).all()
    assert torch.equal(tok[:, :K][ar[:, :K] < acc[:, None]], drafts[ar[:, :K] < acc[:, None]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_q_is_caught(backend):
    """Negative control: verifying against a q that the drafts were not sampled from (the bug of
    transformers #32867) skews the output, and the same chi-square threshold catches it."""
    V, K, N = 6, 2, rows_for(backend, 3000)
    t_logits, d_logits, _ = _setup(V, K, N)
    g = torch.Generator().manual_seed(2)
    wrong_drafts = torch.zeros(N, K, dtype=torch.long)                    # sampled from a point mass
    res = verify(t_logits, d_logits, wrong_drafts, temperature=1.0, generator=g, backend=backend)
    p = probs_from_logits(t_logits[0], 1.0)
    assert chi2_pvalue(torch.bincount(res.tokens[:, 0], minlength=V), p[0]) < ALPHA


@pytest.mark.parametrize("backend,kind,eps", [("torch", "lin", 0.5), ("torch", "sq", 0.7), ("torch", "exp", 0.5),
                                              pytest.param("triton", "exp", 0.3, marks=BACKENDS[1].marks)])
def test_lenience_acceptance_rate(backend, kind, eps):
    """Lenient acceptance min(1, f(p)/q) accepts with probability sum_x min(q, f(p)) (DistillSpec)."""
    V, K, N = 6, 1, rows_for(backend, 3000)
    t_logits, d_logits, drafts = _setup(V, K, N, seed=3)
    g = torch.Generator().manual_seed(4)
    res = verify(t_logits, d_logits, drafts, temperature=1.0, generator=g, backend=backend,
                 lenience=kind, lenience_eps=eps)
    p = probs_from_logits(t_logits[0], 1.0)[0]
    q = probs_from_logits(d_logits[0], 1.0)[0]
    rate = torch.minimum(q, lenient_target(p, kind, eps)).sum().item()
    lossless = torch.minimum(q, p).sum().item()
    assert rate > lossless + 0.03  # the test below can tell the two apart
    assert binom_pvalue(int(res.num_accepted.sum()), N, rate) > ALPHA
    assert binom_pvalue(int(res.num_accepted.sum()), N, lossless) < ALPHA


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_exact(backend):
    g = torch.Generator().manual_seed(0)
    B, K, V = 4, 3, 37
    t_logits = torch.randn(B, K + 1, V, generator=g)
    d_logits = torch.randn(B, K, V, generator=g)
    am = t_logits.argmax(-1)                                             # [B, K+1]
    drafts = am[:, :K].clone()
    drafts[1, 0] = (am[1, 0] + 1) % V      # row 1 rejects at once
    drafts[2, 2] = (am[2, 2] + 1) % V      # row 2 accepts 2
    res = verify(t_logits, d_logits, drafts, temperature=0.0, backend=backend,
                 num_draft_tokens=torch.tensor([3, 3, 3, 1]))
    assert res.num_accepted.tolist() == [3, 0, 2, 1]
    exp = torch.full((B, K + 1), -1)
    exp[0] = am[0]                                     # all accepted + bonus argmax p_4
    exp[1, 0] = am[1, 0]                               # recovered = argmax p_1
    exp[2, :3] = am[2, :3]
    exp[3, :2] = am[3, :2]                             # one draft allowed, then bonus from p_2
    assert torch.equal(res.tokens, exp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_temperature_rows(backend):
    """A [B] temperature: greedy rows behave exactly greedily beside sampled rows."""
    V, K, N = 6, 2, rows_for(backend, 2000)
    t_logits, d_logits, drafts = _setup(V, K, N, seed=5)
    temp = torch.where(torch.arange(N) % 2 == 0, torch.tensor(0.0), torch.tensor(1.0))
    res = verify(t_logits, d_logits, drafts, temperature=temp, generator=torch.Generator().manual_seed(6),
                 backend=backend)
    am = t_logits[0].argmax(-1)
    greedy_rows = torch.arange(N) % 2 == 0
    exp_acc = (drafts[greedy_rows] == am[:K]).long().cumprod(1).sum(1)
    assert torch.equal(res.num_accepted[greedy_rows], exp_acc)
    assert torch.equal(res.tokens[greedy_rows].gather(1, exp_acc[:, None]).squeeze(1), am[exp_acc])
    p = probs_from_logits(t_logits[0], 1.0)
    sampled = res.tokens[~greedy_rows, 0]
    assert chi2_pvalue(torch.bincount(sampled, minlength=V), p[0]) > ALPHA


def test_seeded_repeatable_and_no_drafts():
    t_logits, d_logits, drafts = _setup(V=9, K=3, N=50)
    a = verify(t_logits, d_logits, drafts, 1.0, generator=torch.Generator().manual_seed(7))
    b = verify(t_logits, d_logits, drafts, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    # K = 0: one token from p per row.
    r = verify(t_logits[:, :1], d_logits[:, :0], drafts[:, :0], 0.0)
    assert torch.equal(r.tokens[:, 0], t_logits[:, 0].argmax(-1)) and (r.num_accepted == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    t_logits, d_logits, drafts = _setup(V=11, K=2, N=8)
    r = verify(t_logits.to(dtype), d_logits.to(dtype), drafts, 0.0)
    am = t_logits.to(dtype).argmax(-1)
    assert torch.equal(r.tokens[:, 0], torch.where(drafts[:, 0] == am[:, 0], drafts[:, 0], am[:, 0]))


def test_bad_inputs():
    t_logits, d_logits, drafts = _setup(V=5, K=2, N=3)
    with pytest.raises(ValueError, match="draft_logits must be"):
        verify(t_logits, d_logits[:, :1], drafts)
    with pytest.raises(ValueError, match="draft_tokens must be"):
        verify(t_logits, d_logits, drafts[:, :1])
    for bad in (-1.0, float("nan"), float("inf"), torch.tensor([1.0, float("nan"), 1.0])):
        with pytest.raises(ValueError, match="temperature must be"):
            verify(t_logits, d_logits, drafts, temperature=bad)
    with pytest.raises(ValueError, match="backend"):
        verify(t_logits, d_logits, drafts, backend="cuda")
    with pytest.raises(ValueError, match="lenience"):
        verify(t_logits, d_logits, drafts, lenience="cubic")
    with pytest.raises(ValueError, match="lenience_eps"):
        verify(t_logits, d_logits, drafts, lenience="lin", lenience_eps=0.0)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        verify(t_logits, d_logits, drafts, num_draft_tokens=torch.tensor([1]))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_of_range_drafts_and_nan_logits_are_errors(backend):
    """A draft id outside [0, V) was once emitted as is ([15, 15, 15, 9] with V = 10; -7 came back as -7)
    and NaN logits emitted token 0: both are now errors that say what is wrong."""
    t_logits, d_logits, drafts = _setup(V=10, K=3, N=2)
    for bad_id in (15, -7):
        x = drafts.clone()
        x[1, 0] = bad_id
        with pytest.raises(ValueError, match=r"row 1 hold ids outside \[0, 10\)"):
            verify(t_logits, d_logits, x, temperature=1.0, backend=backend)
    # An id beyond a row's num_draft_tokens is never verified, so it is not an error.
    x = drafts.clone()
    x[0, 2] = 99
    out = verify(t_logits, d_logits, x, temperature=0.0, num_draft_tokens=torch.tensor([2, 3]), backend=backend)
    assert int(out.tokens.max()) < 10
    for which in ("target", "draft"):
        t, d = t_logits.clone(), d_logits.clone()
        (t if which == "target" else d)[0, 0, 3] = float("nan")
        with pytest.raises(ValueError, match=f"{which}_logits contain NaN"):
            verify(t, d, drafts, temperature=1.0, backend=backend)
    masked = t_logits.clone()
    masked[:, :, 5:] = float("-inf")   # top-k masking: -inf is legitimate
    verify(masked, d_logits, drafts, temperature=1.0, backend=backend)


def test_greedy_cpu_path_equals_the_reference():
    """backend="auto" on CPU greedy logits takes verify_greedy_cpu (NumPy): the reference's result,
    ties (the first maximum), per-row draft counts and K = 0 included."""
    from specdec.engine.verify import verify_greedy_cpu, verify_reference
    g = torch.Generator().manual_seed(0)
    for B, K, V in ((1, 1, 50), (4, 3, 7), (3, 0, 9), (5, 5, 4)):
        p = torch.randint(0, 3, (B, K + 1, V), generator=g).float()      # many ties
        t = p.argmax(-1)[:, :K].clone()
        d = torch.where(torch.rand((B, K), generator=g) < 0.7, t, torch.randint(0, V, (B, K), generator=g))
        for n in (None, torch.randint(0, K + 1, (B,), generator=g)):
            want = verify_reference(p, p[:, :K], d, torch.zeros(B), n, all_greedy=True)
            got = verify_greedy_cpu(p, d, n)
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
            via = verify(p, p[:, :K], d, temperature=0.0, num_draft_tokens=n, backend="auto")
            assert torch.equal(via.tokens, want.tokens)


@pytest.mark.parametrize("lenience,eps", [(None, 1.0), ("sq", 0.5)])
def test_sampled_cpu_path_equals_the_reference(lenience, eps):
    """backend="auto" on CPU logits at one temperature takes verify_sampled_cpu (NumPy): the same random
    numbers in the same order as the reference, so the same result from the same seed, up to float
    rounding at a boundary (p and q computed in another order): over 400 random cases, per-row counts,
    K = 0, one-hot q (a deterministic draft) and -inf-masked logits included, at most 1 % may differ."""
    from specdec.engine.verify import verify_reference, verify_sampled_cpu
    g = torch.Generator().manual_seed(0)
    cases = same = accepted = 0
    for i in range(400):
        B, K, V = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g)), 11
        T = (0.6, 1.0, 1.7)[i % 3]
        p = torch.randn(B, K + 1, V, generator=g) * 2
        q = p[:, :K] + torch.randn(B, K, V, generator=g)                     # a draft near the target
        if i % 4 == 1:
            q = torch.full((B, K, V), float("-inf")).scatter(-1, torch.randint(0, V, (B, K, 1), generator=g), 0.0)
        if i % 5 == 2:
            p[..., :3] = float("-inf")                                        # top-k-style masking
        d = torch.distributions.Categorical(logits=q / T).sample() if K else torch.zeros(B, 0, dtype=torch.long)
        n = torch.randint(0, K + 1, (B,), generator=g) if i % 2 else None
        seed = 1000 + i
        want = verify_reference(p, q, d, torch.full((B,), T), n, torch.Generator().manual_seed(seed), lenience, eps)
        got = verify_sampled_cpu(p, q, d, T, n, torch.Generator().manual_seed(seed), lenience, eps)
        via = verify(p, q, d, temperature=T, num_draft_tokens=n, generator=torch.Generator().manual_seed(seed),
                     backend="auto", lenience=lenience, lenience_eps=eps)
        assert torch.equal(via.tokens, got.tokens)                           # auto takes the NumPy path
        cases += 1
        same += torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
        accepted += int(got.num_accepted.sum())
        assert (got.tokens[:, :1] >= 3).all() or i % 5 != 2                   # a masked id is never emitted
    assert same >= 0.99 * cases and accepted > 100


@pytest.mark.parametrize("lenience,eps", [(None, 1.0), ("sq", 0.5)])
def test_sampled_cpu_implicit_one_hot_q_gives_the_same_bits(lenience, eps):
    """verify_sampled_cpu with no draft logits (a deterministic draft: the n-gram lookup's q, one-hot at
    each proposed id, left implicit) equals it with ngram.one_hot_logits bit for bit, from the same seed:
    over 300 random cases with drafts the target accepts and rejects, per-row counts, K = 0 and masked
    logits. A mutation that kept x's mass in the residual, or tested u against p(x) differently, fails."""
    from specdec.engine.ngram import one_hot_logits
    from specdec.engine.verify import verify_sampled_cpu
    g = torch.Generator().manual_seed(1)
    accepted = rejected = 0
    for i in range(300):
        B, K, V = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g)), 7
        T = (0.6, 1.0, 1.7)[i % 3]
        p = torch.randn(B, K + 1, V, generator=g) * 2
        if i % 5 == 2:
            p[..., :2] = float("-inf")
        if i % 7 == 3:
            p[0, :, 4] = 30.0                                                 # p(x) = 1 in float32: residual empty
        d = torch.where(torch.rand((B, K), generator=g) < 0.6, p[:, :K].argmax(-1),
                        torch.randint(0, V, (B, K), generator=g))
        n = torch.randint(0, K + 1, (B,), generator=g) if i % 2 else None
        want = verify_sampled_cpu(p, one_hot_logits(d, V), d, T, n, torch.Generator().manual_seed(i), lenience, eps)
        got = verify_sampled_cpu(p, None, d, T, n, torch.Generator().manual_seed(i), lenience, eps)
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
        lim = torch.full((B,), K) if n is None else n
        accepted += int(got.num_accepted.sum())
        rejected += int((got.num_accepted < lim).sum())
    assert accepted > 100 and rejected > 100
