"""Filter rules on hand-computed small cases."""

import numpy as np
import pytest

from bayes_annot.decide import FilterRule, decide_users, fdr_keep, parse_filter
from bayes_annot.errors import InputError


def test_parse_rules():
    assert parse_filter("prob:0.5") == FilterRule("prob", 0.5)
    assert parse_filter(" FDR:0.05 ") == FilterRule("fdr", 0.05)
    assert parse_filter("none") == FilterRule("none")
    for bad in ("prob", "fdr:x", "prob:1.5", "best:0.1"):
        with pytest.raises(InputError):
            parse_filter(bad)


def test_fdr_keeps_largest_set_under_alpha():
    p = np.array([0.99, 0.5, 0.9, 0.8, 0.95])
    # ranked: 0.99, 0.95, 0.9, 0.8, 0.5 -> running mean of (1 - p): .01, .03, .0533, .09, .172
    keep, share = fdr_keep(p, 0.1)
    assert keep.tolist() == [True, False, True, True, True]
    assert share == pytest.approx(0.09)
    keep, share = fdr_keep(p, 0.05)
    assert keep.tolist() == [True, False, False, False, True]
    assert share == pytest.approx(0.03)
    keep, share = fdr_keep(p, 0.001)
    assert not keep.any() and share == 0.0


def test_prob_rule_and_ineligible_users():
    q = np.array([0.2, 0.5, 0.7, 0.9])
    keep, info = decide_users(FilterRule("prob", 0.5), q, q, None, eligible=np.array([True, True, True, False]))
    assert keep.tolist() == [False, True, True, False]
    assert info["kept_users"] == 2
    assert info["expected_casual_share"] == pytest.approx(np.mean([0.5, 0.3]))


def test_credible_rule_needs_intervals_and_uses_lower_bound():
    q = np.array([0.6, 0.9])
    with pytest.raises(InputError, match="credible intervals"):
        decide_users(FilterRule("credible", 0.5), q, q, None)
    keep, _ = decide_users(FilterRule("credible", 0.5), q, q, np.array([0.4, 0.7]))
    assert keep.tolist() == [False, True]


def test_none_keeps_everyone_eligible():
    q = np.array([0.01, 0.99])
    keep, _ = decide_users(FilterRule("none"), q, q, None)
    assert keep.all()
