"""The fused Triton verification (specdec/kernels/verify_triton.py) against the PyTorch reference.

On a machine without CUDA the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported), so shapes stay small: the interpreter costs tens of milliseconds per batch row.
Greedy outputs must equal the reference exactly; with one CPU generator seed the accept uniforms are
the reference's too, so accept counts must match; sampled tokens are checked by chi-square tests.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import specdec.kernels.verify_triton as vt  # noqa: E402
from specdec.kernels.verify_triton import verify_triton as _launch  # noqa: E402
from specdec.engine.verify import VerifyResult, verify, verify_reference  # noqa: E402


def verify_triton(*args, **kw) -> VerifyResult:
    """The kernel's (tokens, num_accepted), as the one result type the reference returns."""
    return VerifyResult(*_launch(*args, **kw))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter evaluates masked-off lanes too (log 0, exp overflow in lanes a select discards).
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Each chi-square test below fails a correct kernel with probability ALPHA for a random seed (the seeds
# are fixed, so a run is deterministic); there are 4 such tests on the CPU, a family rate under 0.5%.
ALPHA = 1e-3


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _temps(B, value):
    return torch.full((B,), float(value), device=DEVICE)


def _logits(B, K, V, dtype, seed, slice_extra=0):
    """target [B, K+1, V], draft [B, K, V]; with slice_extra the vocabulary is a slice of a wider
    tensor (rows not contiguous, stride(-1) == 1), as after cutting to a shared vocabulary."""
    g = torch.Generator().manual_seed(seed)
    t = (2 * torch.randn(B, K + 1, V + slice_extra, generator=g)).to(dtype).to(DEVICE)[..., :V]
    d = (2 * torch.randn(B, K, V + slice_extra, generator=g)).to(dtype).to(DEVICE)[..., :V]
    return t, d


def _half_argmax_drafts(t, K, seed):
    """Drafts equal to the target argmax for a row-dependent prefix, random after: varied accept runs."""
    B, _, V = t.shape
    g = torch.Generator().manual_seed(seed)
    x = t[:, :K].argmax(-1).cpu()
    rnd = torch.randint(0, V, (B, K), generator=g)
    for b in range(B):
        x[b, (b * 2 + 1) % (K + 1):] = rnd[b, (b * 2 + 1) % (K + 1):]
    return x.to(DEVICE)


def _assert_same(a, b):
    assert torch.equal(a.num_accepted.cpu(), b.num_accepted.cpu()), (a.num_accepted, b.num_accepted)
    assert torch.equal(a.tokens.cpu(), b.tokens.cpu()), (a.tokens, b.tokens)


def _chi2_pvalue(counts, probs):
    """Pearson chi-square p-value of counts [C] against probs [C] (cells with probs 0 must be empty)."""
    counts = counts.double()
    probs = probs.double()
    assert counts[probs == 0].sum() == 0, f"samples in zero-probability cells: {counts} vs {probs}"
    keep = probs > 0
    n = counts.sum()
    expected = n * probs[keep] / probs[keep].sum()
    assert expected.min() >= 5, "too few samples per cell for the chi-square approximation"
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = keep.sum() - 1
    return float(torch.special.gammaincc(df / 2.0, stat / 2.0))


# ---------------------------------------------------------------------------------------------
# Greedy: exact equality with the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,K,V,slice_extra,block", [
    (3, 4, 4097, 3, None),   # sliced vocabulary, two tiles, a ragged last tile
    (2, 3, 37, 0, 16),       # three tiles of 16, split across programs
    (2, 0, 50, 0, None),     # K = 0: only the bonus
    (3, 1, 64, 0, None),
])
def test_greedy_matches_reference(B, K, V, slice_extra, block, dtype):
    t, d = _logits(B, K, V, dtype, seed=B * 100 + K * 10 + V, slice_extra=slice_extra)
    x = _half_argmax_drafts(t, K, seed=1)
    temp = _temps(B, 0.0)
    out = verify_triton(t, d, x, temp, block=block)
    _assert_same(out, verify_reference(t, d, x, temp))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_greedy_ties_take_the_first_index(dtype):
    # The maximum appears in three tiles (block 16): torch.argmax returns the first, so must we.
    B, K, V = 2, 1, 100
    t = torch.zeros(B, K + 1, V, dtype=dtype, device=DEVICE)
    t[:, :, [40, 5, 90]] = 3.0
    t[1, 1, 5] = 0.0  # row 1, position 1: the tie is between 40 and 90
    d = torch.zeros(B, K, V, dtype=dtype, device=DEVICE)
    x = torch.tensor([[40], [5]], device=DEVICE)  # both rejected: argmax is 5
    for block in (16, None):
        out = verify_triton(t, d, x, _temps(B, 0.0), block=block)
        _assert_same(out, verify_reference(t, d, x, _temps(B, 0.0)))
        assert out.tokens[:, 0].tolist() == [5, 5]
    x = torch.tensor([[5], [5]], device=DEVICE)  # both accepted: bonus argmax 5 and 40
    out = verify_triton(t, d, x, _temps(B, 0.0), block=16)
    assert out.tokens.tolist() == [[5, 5], [5, 40]]


def test_greedy_all_accepted_bonus_and_all_rejected():
    B, K, V = 4, 3, 70
    t, d = _logits(B, K, V, torch.float32, seed=7)
    am = t.argmax(-1)                                   # [B, K+1]
    temp = _temps(B, 0.0)
    out = verify_triton(t, d, am[:, :K].contiguous(), temp)
    assert out.num_accepted.tolist() == [K] * B
    assert torch.equal(out.tokens, am)                  # the drafts, then the bonus argmax p_K
    wrong = (am[:, :K] + 1) % V
    out = verify_triton(t, d, wrong, temp)
    assert out.num_accepted.tolist() == [0] * B
    assert torch.equal(out.tokens[:, 0], am[:, 0]) and bool((out.tokens[:, 1:] == -1).all())


def test_ragged_greedy_matches_reference():
    B, K, V = 5, 4, 33
    t, d = _logits(B, K, V, torch.bfloat16, seed=3)
    x = t[:, :K].argmax(-1)                             # everything the row drafted is accepted
    n = torch.tensor([0, 1, 4, 2, 3], device=DEVICE)
    temp = _temps(B, 0.0)
    out = verify_triton(t, d, x, temp, n)
    _assert_same(out, verify_reference(t, d, x, temp, n))
    assert out.num_accepted.tolist() == n.tolist()      # bonus from target position n


# ---------------------------------------------------------------------------------------------
# Sampling: same accept decisions as the reference for one seed; structure; reproducibility
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lenience,eps", [(None, 1.0), ("lin", 0.5), ("sq", 0.7), ("exp", 0.3)])
def test_sampled_accepts_match_reference_for_one_seed(lenience, eps):
    if DEVICE != "cpu":
        pytest.skip("the CPU generator's stream is what makes the two draws line up")
    B, K, V = 6, 3, 24
    t, d = _logits(B, K, V, torch.float32, seed=11)
    t = t / 3  # flatter p: a mix of accepts and rejects
    g = torch.Generator().manual_seed(5)
    x = torch.multinomial(torch.softmax(d.reshape(-1, V), -1), 1, generator=g).reshape(B, K)
    temp = torch.tensor([1.0, 0.0, 0.7, 1.3, 0.0, 1.0])  # mixed greedy / sampled rows
    n = torch.tensor([3, 2, 3, 1, 3, 0])
    out = verify_triton(t, d, x, temp, n, _gen(9), lenience, eps)
    ref = verify_reference(t, d, x, temp, n, _gen(9), lenience, eps)
    assert torch.equal(out.num_accepted, ref.num_accepted)
    greedy = temp == 0
    assert torch.equal(out.tokens[greedy], ref.tokens[greedy])
    for b in range(B):
        j = int(out.num_accepted[b])
        assert out.tokens[b, :j].tolist() == x[b, :j].tolist()
        assert 0 <= int(out.tokens[b, j]) < V
        assert bool((out.tokens[b, j + 1:] == -1).all())


def test_seeded_run_repeats_exactly():
    B, K, V = 8, 3, 40
    t, d = _logits(B, K, V, torch.bfloat16, seed=2)
    x = _half_argmax_drafts(t, K, seed=2)
    temp = _temps(B, 1.0)
    a = verify_triton(t, d, x, temp, generator=_gen(123))
    b = verify_triton(t, d, x, temp, generator=_gen(123))
    _assert_same(a, b)
    outs = {tuple(verify_triton(t, d, x, temp, generator=_gen(s)).tokens.flatten().tolist()) for s in range(3)}
    assert len(outs) > 1, "different seeds gave identical samples"


def test_sampled_all_accepted_bonus_and_all_rejected():
    B, K, V = 4, 2, 30
    t, _ = _logits(B, K, V, torch.float32, seed=4)
    t[:, :, ::3] = float("-inf")                        # masked entries (top-k style) are never emitted
    d = t[:, :K].clone()                                # q == p exactly: every draft is accepted
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(torch.softmax(d.reshape(-1, V), -1).cpu(), 1, generator=g).reshape(B, K).to(DEVICE)
    out = verify_triton(t, d, x, _temps(B, 1.0), generator=_gen(0))
    assert out.num_accepted.tolist() == [K] * B
    assert bool((out.tokens[:, K] % 3 != 0).all())      # the bonus comes from p_K's support
    # p(x) = 0 at every draft: every row rejects at position 0 and samples from max(0, p - q).
    d2 = torch.zeros(B, K, V, device=DEVICE)
    d2[:, :, 0] = 20.0                                  # q puts its mass on token 0, where p is 0
    x0 = torch.zeros(B, K, dtype=torch.long, device=DEVICE)
    out = verify_triton(t, d2, x0, _temps(B, 1.0), generator=_gen(0))
    assert out.num_accepted.tolist() == [0] * B
    p0, q0 = torch.softmax(t[:, 0], -1), torch.softmax(d2[:, 0], -1)
    tok = out.tokens[:, 0]
    assert bool((p0.gather(1, tok[:, None]) > q0.gather(1, tok[:, None])).all())
    assert bool((out.tokens[:, 1:] == -1).all())


# ---------------------------------------------------------------------------------------------
# Statistics: losslessness against the exact distribution (one launch gives many samples)
# ---------------------------------------------------------------------------------------------
P0 = torch.tensor([0.35, 0.25, 0.20, 0.15, 0.05], dtype=torch.float64)
Q0 = torch.tensor([0.10, 0.40, 0.20, 0.05, 0.25], dtype=torch.float64)
P1 = torch.tensor([0.50, 0.20, 0.10, 0.10, 0.10], dtype=torch.float64)
Q1 = torch.tensor([0.20, 0.20, 0.20, 0.20, 0.20], dtype=torch.float64)
P2 = torch.tensor([0.10, 0.20, 0.30, 0.20, 0.20], dtype=torch.float64)


def _joint(p, q):
    """Exact law of (accepted?, emitted token) at one position with x ~ q, as cells accepted * V + token:
    a rejection emitting y with probability max(0, p - q)(y), an accepted x with min(p, q)(x)."""
    return torch.cat([(p - q).clamp_min(0), torch.minimum(p, q)])


def test_sampled_output_distribution_is_lossless():
    # One launch of identical rows: rows [0, S) draft K=2 tokens from q; rows [S, S+Bn) have
    # num_draft_tokens 0 (bonus from p_0); the last G rows are greedy. Temperature 1 except greedy.
    S, Bn, G, K, V = 3000, 1000, 20, 2, 5
    B = S + Bn + G
    t = torch.log(torch.stack([P0, P1, P2])).float().expand(B, K + 1, V).contiguous().to(DEVICE)
    d = torch.log(torch.stack([Q0, Q1])).float().expand(B, K, V).contiguous().to(DEVICE)
    g = torch.Generator().manual_seed(2024)
    x = torch.stack([torch.multinomial(Q0.float(), B, replacement=True, generator=g),
                     torch.multinomial(Q1.float(), B, replacement=True, generator=g)], 1).to(DEVICE)
    n = torch.tensor([K] * S + [0] * Bn + [K] * G, device=DEVICE)
    temp = torch.tensor([1.0] * (S + Bn) + [0.0] * G, device=DEVICE)
    out = verify_triton(t, d, x, temp, n, _gen(77))
    tok, na = out.tokens.cpu(), out.num_accepted.cpu()
    # greedy rows: argmax p_0 = 0; accepted iff x_0 == 0
    ref = verify_reference(t[-G:], d[-G:], x[-G:], temp[-G:], n[-G:])
    assert torch.equal(tok[-G:], ref.tokens.cpu()) and torch.equal(na[-G:], ref.num_accepted.cpu())
    # position 0 of the sampled rows: joint law of (accepted, token)
    acc0 = (na[:S] >= 1).long()
    counts = torch.bincount(acc0 * V + tok[:S, 0], minlength=2 * V)
    assert _chi2_pvalue(counts, _joint(P0, Q0)) > ALPHA
    # position 1 of the rows that accepted x_0 (x_1 ~ q_1 is independent of that event)
    rows = na[:S] >= 1
    acc1 = (na[:S][rows] >= 2).long()
    counts = torch.bincount(acc1 * V + tok[:S][rows, 1], minlength=2 * V)
    assert _chi2_pvalue(counts, _joint(P1, Q1)) > ALPHA
    # bonus rows: token 0 ~ p_0, nothing accepted
    assert bool((na[S:S + Bn] == 0).all())
    assert _chi2_pvalue(torch.bincount(tok[S:S + Bn, 0], minlength=V), P0) > ALPHA


def test_two_level_sampling_across_chunks(monkeypatch):
    # Many SMs make every 16-wide sampling tile its own chunk, so the residual is sampled by the
    # chunk-level inverse CDF and then inside the chunk. p and q live on 8 of 64 tokens in 4 chunks.
    monkeypatch.setattr(vt, "_num_sms", lambda device: 10_000)
    B, K, V = 1000, 1, 64
    support = torch.tensor([3, 12, 17, 30, 33, 47, 50, 63])
    p = torch.zeros(V, dtype=torch.float64)
    q = torch.zeros(V, dtype=torch.float64)
    # residual max(0, p - q) > 0 on two tokens in chunks 0 and 3, one in chunks 1 and 2
    p[support] = torch.tensor([0.10, 0.15, 0.05, 0.15, 0.05, 0.15, 0.15, 0.20], dtype=torch.float64)
    q[support] = torch.tensor([0.05, 0.10, 0.40, 0.10, 0.25, 0.05, 0.03, 0.02], dtype=torch.float64)
    t = torch.log(torch.stack([p, p])).float().expand(B, K + 1, V).contiguous().to(DEVICE)
    d = torch.log(q).float().expand(B, K, V).contiguous().to(DEVICE)
    x = torch.multinomial(q.float(), B, replacement=True, generator=torch.Generator().manual_seed(1))
    out = verify_triton(t, d, x[:, None].to(DEVICE), _temps(B, 1.0), generator=_gen(5), sample_block=16)
    tok, na = out.tokens[:, 0].cpu(), out.num_accepted.cpu()
    joint = _joint(p, q)
    counts = torch.bincount(na * V + tok, minlength=2 * V)
    assert _chi2_pvalue(counts, joint) > ALPHA  # also: no token outside the support


# ---------------------------------------------------------------------------------------------
# Dispatch and input validation
# ---------------------------------------------------------------------------------------------
def test_verify_dispatches_to_the_kernel():
    B, K, V = 3, 2, 20
    t, d = _logits(B, K, V, torch.float16, seed=8)
    x = _half_argmax_drafts(t, K, seed=8)
    a = verify(t, d, x, temperature=0.8, generator=_gen(1), backend="triton")
    b = verify_triton(t, d, x, _temps(B, 0.8), generator=_gen(1))
    _assert_same(a, b)
    _assert_same(verify(t, d, x, temperature=0.0, backend="triton"), verify(t, d, x, temperature=0.0))


def test_input_validation_says_what_to_do():
    B, K, V = 2, 2, 16
    t, d = _logits(B, K, V, torch.float32, seed=0)
    x = torch.zeros(B, K, dtype=torch.long, device=DEVICE)
    temp = _temps(B, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        verify_triton(t.transpose(0, 2).contiguous().transpose(0, 2), d, x, temp)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        verify_triton(t.double(), d.double(), x, temp)
    with pytest.raises(ValueError, match="draft_logits must be"):
        verify_triton(t, d[:, :1], x, temp)
    with pytest.raises(ValueError, match="temperature"):
        verify_triton(t, d, x, torch.ones(B + 1, device=DEVICE))
    with pytest.raises(ValueError, match="temperature"):
        verify_triton(t, d, x, torch.ones(B, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="lenience"):
        verify_triton(t, d, x, temp, lenience="cube", lenience_eps=0.5)
    with pytest.raises(ValueError, match="integer"):
        verify_triton(t, d, x, temp, num_draft_tokens=torch.ones(B, device=DEVICE))
    with pytest.raises(ValueError, match="draft_tokens"):
        verify_triton(t, d, x.float(), temp)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for real")
def test_every_kernel_launch_compiles_for_hopper():
    """The interpreter runs Python semantics; the compiler is stricter (globals must be constexpr,
    loop-carried types must not change, shared memory is finite). Every kernel launch verify_triton
    makes, over real vocabularies, each logits dtype, greedy and sampled rows, with and without ragged
    counts, is compiled for sm_90 without a GPU (specdec.kernels.aot, in a subprocess: TRITON_INTERPRET
    must be unset before the kernels are defined)."""
    import subprocess
    import sys
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception:
        pytest.skip("triton has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "specdec.kernels.aot", "--arch", "90"], capture_output=True,
                         text=True, env=env, timeout=600)
    if res.returncode != 0 and ("ptxas" in res.stderr and "not found" in res.stderr.lower()):
        pytest.skip("no ptxas for the NVIDIA backend")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    compiled = int(res.stdout.strip().splitlines()[-1].split(": ")[1].split(" compiled")[0])
    assert compiled >= 64 and ", 0 failed" in res.stdout   # 4 kernels x 4 shapes x greedy/sampled x n/no-n


# ---------------------------------------------------------------------------------------------
# Real CUDA (compiled kernels, full vocabularies)
# ---------------------------------------------------------------------------------------------
@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,K,V", [(1, 1, 151936), (4, 4, 128256), (64, 8, 32000), (3, 0, 50257), (5, 3, 4097)])
def test_gpu_greedy_full_vocab(B, K, V, dtype):
    t, d = _logits(B, K, V, dtype, seed=V + B)
    x = _half_argmax_drafts(t, K, seed=3)
    n = torch.randint(0, K + 1, (B,), device=DEVICE)
    temp = _temps(B, 0.0)
    _assert_same(verify_triton(t, d, x, temp, n), verify_reference(t, d, x, temp, n))


@gpu
@needs_cuda
def test_gpu_statistics_large_batch():
    # 100k identical rows: tight chi-square tests of the joint law at position 0 and of the bonus.
    B, K, V = 100_000, 1, 5
    t = torch.log(torch.stack([P0, P2])).float().expand(B, K + 1, V).contiguous().to(DEVICE)
    d = torch.log(Q0).float().expand(B, K, V).contiguous().to(DEVICE)
    x = torch.multinomial(Q0.float(), B, replacement=True, generator=torch.Generator().manual_seed(3))
    out = verify_triton(t, d, x[:, None].to(DEVICE), _temps(B, 1.0), generator=_gen(3))
    tok, na = out.tokens.cpu(), out.num_accepted.cpu()
    assert _chi2_pvalue(torch.bincount(na * V + tok[:, 0], minlength=2 * V), _joint(P0, Q0)) > ALPHA
    assert _chi2_pvalue(torch.bincount(tok[na == 1, 1], minlength=V), P2) > ALPHA
    a = verify_triton(t, d, x[:, None].to(DEVICE), _temps(B, 1.0), generator=_gen(3))
    _assert_same(out, a)
