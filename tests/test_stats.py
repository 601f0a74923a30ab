"""DecodeStats (specdec/engine/stats.py): the chosen-count histogram, pooled over decodes."""
import pytest

from specdec.engine.stats import DecodeStats


def test_gamma_counts_histogram():
    st = DecodeStats()
    st.observe([2, 2, 0], [1, 2, 0])
    st.observe([5], [0])
    assert st.gamma_counts == [1, 0, 2, 0, 0, 1]
    assert st.mean_gamma == pytest.approx(9 / 3)
    merged = DecodeStats.merged([st, st])
    assert merged.gamma_counts == [2, 0, 4, 0, 0, 2]
    assert "gamma_counts" in st.to_dict() and st.to_dict()["mean_gamma"] == pytest.approx(3.0)
