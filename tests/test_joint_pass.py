"""The two-class E-step of a block with casual covariates takes one forward and one transposed sparse
pass (``Block.joint_two_class_terms``); it must give the same statistics as the per-user sums
(``block_class_users``) that the final pass and the taste classes use, with and without ties."""

from __future__ import annotations

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.block_em import block_class_pass, block_class_users
from bayes_annot.casual import prepare_casual
from bayes_annot.data import prepare
from bayes_annot.local_em import problem_block
from bayes_annot.problem import build_problem


def _block(ties: bool):
    log = ba.simulate(n_users=400, n_models=6, casual_share=0.3, labels_per_user=(1, 30), seed=3, length_bias=0.85,
                      tie_nu=0.6, casual_tie_rate=0.3)
    prepared = prepare(log)
    design = prepare_casual(prepared, "auto")
    problem, _ = build_problem(prepared, casual=design, ties=ties)
    block = problem_block(prepared, problem, n_casual=design.n_cells)
    assert block.joint and block.has_ties == ties
    return block, design


@pytest.mark.parametrize("ties", [False, True])
def test_one_pass_statistics_equal_the_per_user_sums(ties):
    block, design = _block(ties)
    rng = np.random.default_rng(0)
    n_pairs = block.n_cells // 2
    logits = rng.normal(0, 1.5, n_pairs)
    att = np.stack([-np.logaddexp(0, logits), -np.logaddexp(0, -logits)], axis=1).reshape(-1, 1)  # log P per cell
    cas_logit = rng.normal(0, 1, design.n_cells)
    cas = np.stack([-np.logaddexp(0, cas_logit), -np.logaddexp(0, -cas_logit)], axis=1).reshape(-1)
    tie = (np.log(rng.uniform(0.05, 0.3, (n_pairs, 1))), 0.27) if ties else None
    shares = np.array([0.64])
    fast = block_class_pass(block, shares, cas, att, ties=tie)
    slow = block_class_pass(block, shares, cas, att, users=block_class_users(block, shares, cas, att, tie), ties=tie)
    assert fast.keys() == slow.keys()
    for key in fast:
        if slow[key] is None:
            assert fast[key] is None, key
        else:
            np.testing.assert_allclose(fast[key], slow[key], rtol=1e-11, atol=1e-9, err_msg=key)
    if not ties:  # users whose only labels are ties have none in the likelihood: in the block, left out
        assert fast["n_active"] < block.users.shape[0]
