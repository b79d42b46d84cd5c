"""Holm / Benjamini-Hochberg adjustment against hand-computed values, and the bootstrap p-value display rule."""
from __future__ import annotations

import numpy as np
import pytest

from probes.adjust import adjust_pvalues, format_p, p_floor
from probes.errors import ProbeError

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_matches_hand_computation():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max: 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjust_pvalues(P, "holm"), [0.03, 0.06, 0.06, 0.02])


def test_bh_matches_hand_computation():
    # sorted: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 -> monotone min from the top
    np.testing.assert_allclose(adjust_pvalues(P, "bh"), [0.02, 0.04, 0.04, 0.02])
    # a case where the step-up minimum matters: 0.02*3/1=0.06 > 0.03*3/2=0.045 -> both 0.045
    np.testing.assert_allclose(adjust_pvalues([0.02, 0.03, 0.9], "bh"), [0.045, 0.045, 0.9])


def test_statsmodels_textbook_example():
    # statsmodels' multipletests([0.01, 0.02, 0.03, 0.04, 0.05], method="holm"/"fdr_bh")
    p = [0.01, 0.02, 0.03, 0.04, 0.05]
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.05, 0.08, 0.09, 0.09, 0.09])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.05] * 5)


def test_cap_nan_and_none():
    out = adjust_pvalues([0.5, np.nan, 0.6], "holm")
    assert out[0] == 1.0 and np.isnan(out[1]) and out[2] == 1.0  # family size 2, capped at 1
    np.testing.assert_array_equal(adjust_pvalues(P, "none"), P)
    assert adjust_pvalues([], "bh").size == 0
    # adjusted values are never below the raw ones, and Holm is never below BH
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    assert (adjust_pvalues(p, "holm") >= adjust_pvalues(p, "bh") - 1e-15).all()
    assert (adjust_pvalues(p, "bh") >= p - 1e-15).all()


def test_bad_inputs():
    with pytest.raises(ProbeError, match="'adjust' parameter"):
        adjust_pvalues(P, "bonferroni")
    with pytest.raises(ProbeError, match=r"\[0, 1\]"):
        adjust_pvalues([1.5], "holm")


def test_format_p_resolution():
    assert p_floor(1000) == 0.001
    assert format_p(0.0, 1000) == "<0.001"
    assert format_p(0.0, 200) == "<0.005"
    assert format_p(0.004, 200) == "<0.005"
    assert format_p(0.005, 200) == "0.005"
    assert format_p(0.0123, 1000) == "0.012"
    assert format_p(1.0, 1000) == "1"
    assert format_p(float("nan"), 1000) == "-" and format_p(None) == "-"
    assert format_p(0.00001) == "<0.001"  # asymptotic p: the display resolution
