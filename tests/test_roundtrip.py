"""Saving and loading results; determinism; traceability of summary.json."""

import json

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_save_then_load_gives_equal_tables(tmp_path, small_log, variant):
    result = ba.fit(small_log, variant=variant)
    saved = ba.load(result.save(tmp_path / "out"))
    pd.testing.assert_frame_equal(saved.users, result.users, check_dtype=False)
    pd.testing.assert_frame_equal(saved.models, result.models, check_dtype=False)
    assert saved["summary"] == json.loads(json.dumps(result.summary))
    assert len(saved.rows) == len(result.rows)
    assert (saved.rows["reason"] == result.rows["reason"].astype(str)).all()
    np.testing.assert_array_equal(saved.rows["weight"].astype(float), result.rows["weight"])


def test_inference_data_round_trip(tmp_path, small_log):
    result = ba.fit(small_log)
    idata = result.idata
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 1
    np.testing.assert_allclose(idata.posterior["quality"].values.ravel(), result.users.quality)
    saved = ba.load(result.save(tmp_path / "out", posterior=True))
    assert saved.idata is not None
    np.testing.assert_allclose(saved.idata.posterior["quality"].values, idata.posterior["quality"].values)
    np.testing.assert_allclose(saved.idata.log_likelihood["y_user"].values, idata.log_likelihood["y_user"].values)


def test_summary_traces_data_and_settings(tmp_path, small_log):
    path = tmp_path / "log.csv"
    small_log.to_csv(path, index=False)
    result = ba.fit(path, filter="fdr:0.2", seed=7)
    s = result.summary
    assert s["bayes_annot_version"] == ba.__version__
    assert len(s["input"]["sha256"]) == 64
    assert s["settings"]["filter"] == "fdr:0.2" and s["settings"]["seed"] == 7
    assert s["settings"]["priors"]["strength_sigma"] == ba.Priors().strength_sigma


def test_same_seed_same_output(tmp_path):
    """Where the seed is read (taste-class starts, the report's replicates): same seed, same saved
    tables and report figures' numbers; plain EM reads no seed (test_determinism.py covers the rest)."""
    from bayes_annot.plotting import ppc_agreement
    from bayes_annot.tastes import simulate_tastes

    log = simulate_tastes(n_users=120, n_models=5, labels_per_user=(5, 25), seed=8)
    a, b = ba.fit(log, tastes=2, seed=3), ba.fit(log, tastes=2, seed=3)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for table in ("users.csv", "models.csv"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes()
    np.testing.assert_array_equal(ppc_agreement(a, n_rep=10, seed=3)["replicated"],
                                  ppc_agreement(b, n_rep=10, seed=3)["replicated"])
    assert not np.array_equal(ppc_agreement(a, n_rep=10, seed=3)["replicated"],
                              ppc_agreement(a, n_rep=10, seed=4)["replicated"])


def test_load_rejects_a_folder_without_results(tmp_path):
    with pytest.raises(ba.InputError, match="summary.json missing"):
        ba.load(tmp_path)


def test_library_prints_nothing(capsys, small_log):
    result = ba.fit(small_log, filter="fdr:0.1")
    result.filter("prob:0.7")
    _ = result.idata
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_whole_number_float_ids_beyond_int64_stay_apart(tmp_path):
    """Float ids of 2**63 and more (1e20, 2e20: a parquet id column read as float) were cast to int64,
    which overflows: every such user became '-9223372036854775808', one user (and numpy's 'invalid value
    encountered in cast' leaked out as a warning). They are now written as the whole numbers they are."""
    import warnings

    log = ba.simulate(n_users=3, n_models=4, labels_per_user=40, seed=3)[["user", "model_a", "model_b", "winner"]]
    ids = dict(zip(sorted(log["user"].astype(str).unique()), [1e20, 2e20, 3.0]))
    log["user"] = log["user"].astype(str).map(ids).astype(float)
    expected = {"100000000000000000000": 40, "200000000000000000000": 40, "3": 40}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        users = ba.fit(log).users
    assert dict(zip(users["user"], users["n_rows"])) == expected
    mixed = log.astype({"user": object})
    mixed.loc[mixed.index[0], "user"] = "x"  # the object path (mixed text and numbers) spells them the same way
    users = ba.fit(mixed).users
    assert dict(zip(users["user"], users["n_rows"])) == {**expected, "100000000000000000000": 39, "x": 1}
    path = tmp_path / "log.parquet"
    log.to_parquet(path)
    saved = ba.load(ba.fit(path).save(tmp_path / "out", format="parquet"))
    assert dict(zip(saved.users["user"], saved.users["n_rows"])) == expected
    assert saved.rows["user"].tolist() == log["user"].tolist()


def test_jsonl_integer_ids_beyond_int64_stay_apart(tmp_path):
    """pyarrow's JSON reader reads integers beyond int64 as float64: in a .jsonl, the users
    1180591620717411303424 and ...425 became one float, hence one user. Such a file is now read line by
    line (exact Python integers): two users, and their ids read back equal."""
    big = 2**70
    lines = [{"user": big + (i % 2), "model_a": f"m{i % 3}", "model_b": f"m{(i + 1) % 3}",
              "winner": "model_a" if i % 4 else "model_b"} for i in range(40)]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = ba.fit(path)
    assert dict(zip(result.users["user"], result.users["n_rows"])) == {str(big): 20, str(big + 1): 20}
    saved = ba.load(result.save(tmp_path / "out"))
    assert saved.rows["user"].tolist() == [line["user"] for line in lines]
