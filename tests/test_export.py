"""DPO export: schema, which rows, chosen/rejected sides, weights, errors, file round trips."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.errors import InputError
from bayes_annot.export import DPO_COLUMNS, to_dpo


def _fit(frame, rule="fdr:0.1"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ba.FitWarning)
        return ba.fit(frame, filter=rule)


@pytest.fixture(scope="module")
def text_log():
    """Simulated log with text, ties, and some same-model rows."""
    log = ba.simulate(n_users=150, n_models=4, casual_share=0.3, labels_per_user=(5, 30), tie_rate=0.1,
                      with_text=True, seed=7)
    log = log.astype({"user": str, "model_a": str, "model_b": str, "winner": str})
    same = np.arange(len(log)) % 23 == 0
    log.loc[same, "model_b"] = log.loc[same, "model_a"]
    return log


@pytest.fixture(scope="module")
def text_fit(text_log):
    return _fit(text_log)


@pytest.fixture(scope="module")
def dpo(text_fit):
    return to_dpo(text_fit)


def test_schema_and_row_count(text_fit, dpo):
    assert list(dpo.columns) == list(DPO_COLUMNS)
    ok = text_fit.rows["reason"] == "ok"
    assert len(dpo) == int(ok.sum()) > 0
    assert list(dpo.index) == list(np.flatnonzero(ok))
    assert dpo["weight"].dtype == float
    for column in ("prompt", "chosen", "rejected", "user", "chosen_model", "rejected_model"):
        assert dpo[column].map(type).eq(str).all(), column


def test_ties_same_model_and_dropped_users_absent(text_log, text_fit, dpo):
    rows = text_fit.rows
    assert (rows["reason"] == "tie").any() and (rows["reason"] == "same_model").any()
    assert (rows["reason"] == "user_low_quality").any()
    exported = text_log.loc[dpo.index]
    assert not (exported["winner"] == "tie").any()
    assert not (exported["model_a"] == exported["model_b"]).any()
    kept_users = set(text_fit.users.loc[text_fit.users["kept"], "user"])
    assert set(dpo["user"]) <= kept_users
    dropped = set(text_fit.users.loc[~text_fit.users["kept"], "user"])
    assert not set(dpo["user"]) & dropped
    assert (dpo["chosen_model"] != dpo["rejected_model"]).all()


def test_chosen_and_rejected_follow_the_winner(text_log, dpo):
    src = text_log.loc[dpo.index]
    a_won = (src["winner"] == "model_a").to_numpy()
    assert a_won.any() and (~a_won).any()
    np.testing.assert_array_equal(dpo["chosen"], np.where(a_won, src["response_a"], src["response_b"]))
    np.testing.assert_array_equal(dpo["rejected"], np.where(a_won, src["response_b"], src["response_a"]))
    np.testing.assert_array_equal(dpo["chosen_model"], np.where(a_won, src["model_a"], src["model_b"]))
    np.testing.assert_array_equal(dpo["rejected_model"], np.where(a_won, src["model_b"], src["model_a"]))
    np.testing.assert_array_equal(dpo["prompt"], src["prompt"])
    np.testing.assert_array_equal(dpo["user"], src["user"])
    # the simulated text names the model that wrote the response
    assert all(f"by {m} " in text for m, text in zip(dpo["chosen_model"], dpo["chosen"]))


def test_weights_are_user_quality(text_fit, dpo):
    quality = text_fit.users.set_index("user")["quality"]
    np.testing.assert_allclose(dpo["weight"].to_numpy(), quality.loc[dpo["user"]].to_numpy())
    np.testing.assert_allclose(dpo["weight"].to_numpy(), text_fit.rows.loc[dpo.index, "weight"].to_numpy())


def test_filter_changes_the_export(text_fit):
    everyone = to_dpo(text_fit.filter("none"))
    assert len(everyone) == int(text_fit.filter("none").rows["reason"].eq("ok").sum())
    assert len(everyone) > len(to_dpo(text_fit))


def test_missing_text_columns_error_names_them(text_log):
    result = _fit(text_log.drop(columns=["prompt", "response_b"]))
    with pytest.raises(ba.InputError) as info:
        to_dpo(result)
    message = str(info.value)
    assert "'prompt'" in message and "'response_b'" in message and "'response_a'" not in message
    assert "\n" not in message


def test_custom_text_column_names(text_log):
    renamed = text_log.rename(columns={"prompt": "question", "response_a": "left", "response_b": "right"})
    result = _fit(renamed)
    out = to_dpo(result, prompt="question", response_a="left", response_b="right")
    ref = to_dpo(_fit(text_log))
    pd.testing.assert_frame_equal(out, ref)


def test_empty_text_in_kept_row_is_an_error(text_log, text_fit):
    broken = text_log.copy()
    first_ok = int(np.flatnonzero(text_fit.rows["reason"] == "ok")[0])
    broken.loc[first_ok, "response_a"] = None
    with pytest.raises(ba.InputError, match=f"'response_a' is empty in row {first_ok}"):
        to_dpo(_fit(broken))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_file_round_trip(tmp_path, text_fit, dpo, suffix):
    path = tmp_path / "sub" / f"dpo{suffix}"
    out = to_dpo(text_fit, path)
    pd.testing.assert_frame_equal(out, dpo)
    back = pd.read_json(path, lines=True, dtype=False) if suffix == ".jsonl" else pd.read_parquet(path)
    assert list(back.columns) == list(DPO_COLUMNS)
    pd.testing.assert_frame_equal(back, dpo.reset_index(drop=True), check_dtype=False)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind


def test_jsonl_is_plain_records(tmp_path, text_fit):
    path = tmp_path / "dpo.jsonl"
    to_dpo(text_fit, path)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == list(DPO_COLUMNS)
    assert isinstance(first["weight"], float) and isinstance(first["chosen"], str)


def test_unknown_suffix_is_an_error(tmp_path, text_fit):
    with pytest.raises(ba.InputError, match=r"\.jsonl or \.parquet"):
        to_dpo(text_fit, tmp_path / "dpo.csv")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced(tmp_path, text_fit, dpo):
    """An existing DPO file is replaced; a file that is not DPO records is not (InputError, untouched)."""
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps({c: "x" for c in DPO_COLUMNS}) + "\n", encoding="utf-8")
    to_dpo(text_fit, path)
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(dpo)
    other = tmp_path / "notes.jsonl"
    other.write_text("old\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a DPO file"):
        to_dpo(text_fit, other)
    assert other.read_text(encoding="utf-8") == "old\n"


def _conversation(prompt, answer, follow_up=None, final=None):
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if follow_up is not None:
        conv += [{"role": "user", "content": follow_up}, {"role": "assistant", "content": final}]
    return conv


@pytest.mark.parametrize("as_json_text", [False, True])
def test_arena_conversations(as_json_text):
    log = ba.simulate(n_users=60, n_models=3, labels_per_user=(5, 10), seed=3)
    log = log.astype({"user": str, "model_a": str, "model_b": str, "winner": str})
    n = len(log)
    conv_a = [
        _conversation(f"P{i}", f"A{i}", *((f"F{i}", f"A{i}-final") if i % 2 else ()))
        for i in range(n)
    ]
    conv_b = [
        _conversation(f"P{i}", f"B{i}", *((f"F{i}", f"B{i}-final") if i % 2 else ()))
        for i in range(n)
    ]
    log["conversation_a"] = [json.dumps(c) for c in conv_a] if as_json_text else conv_a
    log["conversation_b"] = [json.dumps(c) for c in conv_b] if as_json_text else conv_b
    result = _fit(log, rule="none")
    out = to_dpo(result)
    assert len(out) == int((result.rows["reason"] == "ok").sum()) > 0
    idx = out.index.to_numpy()
    a_won = (log.loc[idx, "winner"] == "model_a").to_numpy()
    last_a = np.array([f"A{i}-final" if i % 2 else f"A{i}" for i in idx], dtype=object)
    last_b = np.array([f"B{i}-final" if i % 2 else f"B{i}" for i in idx], dtype=object)
    np.testing.assert_array_equal(out["prompt"], [f"P{i}" for i in idx])
    np.testing.assert_array_equal(out["chosen"], np.where(a_won, last_a, last_b))
    np.testing.assert_array_equal(out["rejected"], np.where(a_won, last_b, last_a))


def test_arena_conversation_without_assistant_is_an_error():
    log = ba.simulate(n_users=20, n_models=3, labels_per_user=3, seed=4)
    log = log.astype({"user": str, "model_a": str, "model_b": str, "winner": str})
    log["conversation_a"] = [[{"role": "user", "content": "hi"}]] * len(log)
    log["conversation_b"] = [_conversation("hi", "hello")] * len(log)
    with pytest.raises(ba.InputError, match="conversation_a.*no 'assistant' message"):
        to_dpo(_fit(log, rule="none"))
