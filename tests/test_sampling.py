"""Logits processing and the samplers (the exponential race, the inverse CDF)."""
import math

import numpy as np
import pytest
import torch

from conftest import ALPHA, chi2_pvalue
from specdec.engine.sampling import (inverse_cdf, mask_logits, probs_from_logits, race, sample_from_probs,
                                     sample_tokens)


def test_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(mask_logits(logits, 1.0, top_k=2)[0, 2:]).all()
    assert torch.isfinite(mask_logits(logits, 1.0, top_k=2)[0, :2]).all()
    # Nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 joins; 0.85 >= 0.8 stops there.
    kept = torch.isfinite(mask_logits(logits, 1.0, top_p=0.8)[0])
    assert kept.tolist() == [True, True, True, False, False]
    # Exactly reaching top_p keeps no more: 0.5 + 0.2 = 0.7.
    assert torch.isfinite(mask_logits(logits, 1.0, top_p=0.7)[0]).tolist() == [True, True, False, False, False]
    # The nucleus is taken after temperature (HF's warper order): T = 0.5 sharpens to 0.5^2 / Z...
    sharp = torch.softmax(logits / 0.5, -1)[0]
    kept = torch.isfinite(mask_logits(logits, 0.5, top_p=0.8)[0])
    assert kept.tolist() == [True, True, False, False, False] and sharp[0] + sharp[1] >= 0.8 > sharp[0]
    # The argmax always survives.
    assert torch.isfinite(mask_logits(logits, 1.0, top_p=1e-6)[0, 0])
    # Masked logits keep their raw scale.
    assert torch.equal(mask_logits(logits, 1.0, top_k=2)[0, :2], logits[0, :2])


def test_probs_per_row_temperature():
    logits = torch.randn(3, 4, 7)
    t = torch.tensor([0.5, 1.0, 0.0])
    p = probs_from_logits(logits, t)
    torch.testing.assert_close(p[0], torch.softmax(logits[0] / 0.5, -1))
    torch.testing.assert_close(p[2], torch.softmax(logits[2], -1))  # greedy rows: callers use argmax


@pytest.mark.parametrize("sampler", [sample_from_probs, race, inverse_cdf])
def test_samplers_match_categorical(sampler):
    """Both samplers (the race for accelerators, the inverse CDF on the CPU) against the exact
    distribution, with zeros between the masses and an unnormalised row."""
    probs = torch.tensor([0.4, 0.0, 0.3, 0.2, 0.1, 0.0]) * 3.0
    g = torch.Generator().manual_seed(0)
    draws = sampler(probs.expand(20000, -1), g)
    assert ((draws != 1) & (draws != 5)).all()  # zero-probability ids are never drawn
    assert chi2_pvalue(torch.bincount(draws, minlength=6), probs / 3) > ALPHA
    # Negative control at the same size: a 0.02 shift of mass is caught.
    assert chi2_pvalue(torch.bincount(draws, minlength=6), torch.tensor([0.42, 0, 0.28, 0.2, 0.1, 0])) < ALPHA
    assert sampler(torch.zeros(2, 3, 4), g).tolist() == [[0, 0, 0], [0, 0, 0]]   # all-zero rows: id 0, shape kept
    assert sampler(torch.tensor([[0.0, 0.0, 1.0]]), g).tolist() == [2]             # the last id is reachable


def test_greedy_and_masked_sampling():
    logits = torch.tensor([[1.0, 3.0, 2.0, -math.inf]])
    assert sample_tokens(logits, 0.0).item() == 1
    draws = sample_tokens(logits.expand(2000, -1), 1.0, torch.Generator().manual_seed(1))
    assert (draws != 3).all()


def _inverse_cdf_plain(probs, generator):
    """inverse_cdf's rule with the plain float64 cumsum over the row (what the blocks stand for)."""
    V = probs.shape[-1]
    cdf = np.cumsum(probs.numpy().reshape(-1, V), axis=-1, dtype=np.float64)
    u = torch.rand(cdf.shape[0], dtype=torch.float64, generator=generator).numpy()
    ids = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(-1), V - 1)
    ids[~(cdf[:, -1] > 0)] = 0
    return torch.from_numpy(ids.astype(np.int64))


@pytest.mark.parametrize("V", [5, 512, 1300, 4096])   # one block, one full, ragged last (CDF_BLOCK 512), 8
def test_inverse_cdf_blocks_pick_what_the_plain_cumsum_picks(V):
    """Block sums then one block's running sum: the same ids as the plain float64 cumsum for the same
    random numbers, over dense rows, rows whose mass sits in a few ids of far-apart blocks (top-k), and a
    ragged last block; a zero-mass id is never drawn."""
    rng = torch.Generator().manual_seed(V)
    dense = torch.softmax(torch.randn(300, V, generator=rng) * 4, -1)
    sparse = torch.zeros(300, V)
    for r in range(300):
        ids = torch.randperm(V, generator=rng)[:3]
        sparse[r, ids] = torch.rand(3, generator=rng)
    for probs in (dense, sparse):
        got = inverse_cdf(probs, torch.Generator().manual_seed(7))
        assert got.tolist() == _inverse_cdf_plain(probs, torch.Generator().manual_seed(7)).tolist()
        assert (probs.gather(1, got[:, None]) > 0).all()
