"""Errors that are not clean (issue 16, item 6): every bad setting, cell, file or results folder is
an InputError with one line naming what is at fault; the CLI exits 2, prints that one line and
writes nothing."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.data import read_table
from bayes_annot.errors import InputError
from bayes_annot.likelihood import Priors

ID_COLUMNS = ["user", "model_a", "model_b", "winner"]


@pytest.fixture(scope="module")
def log():
    frame = ba.simulate(n_users=200, n_models=5, casual_share=0.3, labels_per_user=(3, 15), tie_rate=0.1, seed=5)
    return frame[ID_COLUMNS].astype(str)


@pytest.fixture(scope="module")
def log_csv(log, tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "log.csv"
    log.to_csv(path, index=False)
    return path


def cli_error(args, out, capsys) -> str:
    """Run the CLI, expect exit 2 with exactly one stderr line and no output folder; return that line."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayes-annot: error: "), err
    assert not out.exists()
    return lines[0]


# --------------------------------------------------------------------------- 1. numeric settings


@pytest.mark.parametrize(
    "option, value, name",
    [
        ("--tol", "nan", "tol"),
        ("--tol", "inf", "tol"),
        ("--tol", "-1", "tol"),
        ("--max-iter", "0", "max_iter"),
        ("--max-iter", "-5", "max_iter"),
        ("--draws", "0", "draws"),
        ("--tune", "-1", "tune"),
        ("--chains", "0", "chains"),
        ("--seed", "-1", "seed"),
        ("--q", "nan", "q"),
        ("--mu", "nan", "mu"),
        ("--mu", "1.5", "mu"),
    ],
)
def test_cli_rejects_bad_numeric_setting_before_reading(option, value, name, tmp_path, capsys):
    # the input does not exist: the setting must be rejected before anything is read or fitted
    args = ["fit", tmp_path / "absent.csv", "--out", tmp_path / "out", option, value]
    if option == "--mu":
        args += ["--strong-model", "model_0"]
    line = cli_error(args, tmp_path / "out", capsys)
    assert name in line and value.lstrip("-") in line, line


@pytest.mark.parametrize("option, value", [("--tol", "nan"), ("--max-iter", "0")])
def test_cli_update_rejects_bad_numeric_setting(option, value, log_csv, tmp_path, capsys):
    assert main(["fit", str(log_csv), "--out", str(tmp_path / "prev"), "--quiet"]) == 0
    out = tmp_path / "out"
    line = cli_error(["fit", log_csv, "--update", tmp_path / "prev", "--out", out, option, value], out, capsys)
    assert option.lstrip("-").replace("-", "_") in line


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"tol": float("nan")}, "tol"),
        ({"tol": float("inf")}, "tol"),
        ({"tol": -1.0}, "tol"),
        ({"tol": "1e-9"}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": -5}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"draws": 0}, "draws"),
        ({"tune": -1}, "tune"),
        ({"chains": 0}, "chains"),
        ({"seed": -1}, "seed"),
        ({"mu": 2.0, "strong_model": "model_0"}, "mu"),
        ({"tastes": 0}, "tastes"),
        ({"priors": Priors(pi_alpha=-1.0)}, "pi_alpha"),
        ({"priors": Priors(strength_sigma=float("nan"))}, "strength_sigma"),
    ],
)
def test_fit_rejects_bad_numeric_setting_before_reading(settings, name, tmp_path):
    with pytest.raises(InputError, match=name):
        ba.fit(tmp_path / "absent.csv", **settings)


@pytest.mark.parametrize("settings, name", [({"tol": float("nan")}, "tol"), ({"max_iter": 0}, "max_iter")])
def test_update_rejects_bad_numeric_setting(settings, name, log):
    previous = ba.fit(log.iloc[:-50])
    with pytest.raises(InputError, match=name):
        previous.update(log.iloc[-50:], **settings)


# --------------------------------------------------------------------------- 2. a list or dict in an id cell


@pytest.mark.parametrize("column", ID_COLUMNS)
@pytest.mark.parametrize("value, kind", [(["x", "y"], "list"), ({"name": "x"}, "dict")])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_nested_json_value_in_id_cell(column, value, kind, suffix, log, tmp_path, capsys):
    records = log.head(20).to_dict("records")
    records[3][column] = value
    path = tmp_path / f"log{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    out = tmp_path / "out"
    line = cli_error(["fit", path, "--out", out], out, capsys)
    assert f"column '{column}' has a {kind} value at input row 4" in line, line
    with pytest.raises(InputError, match=f"column '{column}' has a {kind} value at input row 4"):
        ba.fit(read_table(path))


def test_list_value_in_a_parquet_folder_fitted_with_dask(log, tmp_path, capsys):
    pytest.importorskip("dask.dataframe")
    folder = tmp_path / "parts"
    folder.mkdir()
    log.iloc[:100].to_parquet(folder / "part-0.parquet", index=False)
    bad = log.iloc[100:200].copy()
    bad["user"] = [["u", str(i)] for i in range(len(bad))]
    bad.to_parquet(folder / "part-1.parquet", index=False)
    out = tmp_path / "out"
    line = cli_error(["fit", folder, "--out", out], out, capsys)
    assert "column 'user' has a list value at input row 101" in line, line


# --------------------------------------------------------------------------- 3. parquet files with different columns


@pytest.mark.parametrize("use_glob", [False, True])
def test_parquet_files_with_different_columns(use_glob, log, tmp_path, capsys):
    pytest.importorskip("dask.dataframe")
    folder = tmp_path / "parts"
    folder.mkdir()
    log.iloc[:300].to_parquet(folder / "part-0.parquet", index=False)
    log.iloc[300:].rename(columns={"winner": "choice"}).to_parquet(folder / "part-1.parquet", index=False)
    target = folder / "part-*.parquet" if use_glob else folder
    out = tmp_path / "out"
    line = cli_error(["fit", target, "--out", out], out, capsys)
    assert "part-0.parquet" in line and "part-1.parquet" in line, line
    assert "'winner'" in line and "'choice'" in line, line
    with pytest.raises(InputError, match="part-1.parquet"):
        ba.fit(target)


# --------------------------------------------------------------------------- 4. corrupt results folders


def _set(path, value):
    def change(summary):
        node = summary
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return summary

    return change


def _drop(key):
    def change(summary):
        del summary[key]
        return summary

    return change


SUMMARY_CASES = {
    "pi_5": (_set(["parameters", "pi"], 5), "parameters.pi"),
    "q_negative": (_set(["parameters", "q"], -1), "parameters.q"),
    "pi_text": (_set(["parameters", "pi"], "abc"), "parameters.pi"),
    "unknown_variant": (_set(["variant"], "three-class"), "variant"),
    # a folder written before the rename keeps the variant under "model": read, and checked, as "variant"
    "unknown_variant_old_key": (lambda s: {("model" if k == "variant" else k): ("three-class" if k == "variant" else v)
                                           for k, v in s.items()}, "variant must be one of"),
    "unknown_prior": (_set(["settings", "priors", "bogus"], 1.0), "bogus"),
    "bad_prior": (_set(["settings", "priors", "pi_alpha"], -2), "pi_alpha"),
    "tol_text": (_set(["settings", "tol"], "x"), "settings.tol"),
    "max_iter_zero": (_set(["settings", "max_iter"], 0), "settings.max_iter"),
    "columns_list": (_set(["settings", "columns"], ["user"]), "settings.columns"),
    "no_parameters": (_drop("parameters"), "parameters"),
    "no_settings": (_drop("settings"), "settings"),
    "summary_list": ("[1, 2]", "JSON object"),
    "summary_invalid": ("{not json", "not valid JSON"),
}

MODELS_CASES = {
    "strength_inf": (lambda m: m.assign(strength=[np.inf] + [0.0] * (len(m) - 1)), "strength"),
    "strength_text": (lambda m: m.assign(strength=["abc"] + [0.0] * (len(m) - 1)), "abc"),
    "model_duplicated": (lambda m: m.assign(model=[m.model[1]] + list(m.model[1:])), "more than once"),
    "no_strength_column": (lambda m: m.drop(columns=["strength"]), "strength"),
}


@pytest.fixture(scope="module")
def saved(log, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "good"
    ba.fit(log.iloc[:-50]).save(folder)
    return folder


@pytest.mark.parametrize("mode", ["--update", "--warm-start"])
@pytest.mark.parametrize("case", list(SUMMARY_CASES) + list(MODELS_CASES))
def test_corrupt_results_folder(case, mode, saved, log, tmp_path, capsys):
    folder = tmp_path / "prev"
    shutil.copytree(saved, folder)
    if case in SUMMARY_CASES:
        change, expected = SUMMARY_CASES[case]
        if isinstance(change, str):
            (folder / "summary.json").write_text(change)
        else:
            summary = json.loads((folder / "summary.json").read_text())
            (folder / "summary.json").write_text(json.dumps(change(summary)))
    else:
        change, expected = MODELS_CASES[case]
        models = pd.read_csv(folder / "models.csv")
        change(models).to_csv(folder / "models.csv", index=False)
    new = tmp_path / "new.csv"
    (log.iloc[-50:] if mode == "--update" else log).to_csv(new, index=False)
    out = tmp_path / "out"
    line = cli_error(["fit", new, "--out", out, mode, folder], out, capsys)
    assert str(folder) in line and expected in line, line
    if mode == "--warm-start":
        with pytest.raises(InputError, match="prev"):
            ba.fit(log, start=folder)


# --------------------------------------------------------------------------- 5. duplicate CSV headers


def test_duplicate_csv_header(tmp_path, capsys):
    path = tmp_path / "dup.csv"
    path.write_text("user,model_a,model_b,winner,winner\nu1,a,b,model_a,x\nu2,a,b,model_b,y\n")
    with pytest.raises(InputError, match="column 'winner' appears more than once"):
        read_table(path)
    out = tmp_path / "out"
    line = cli_error(["fit", path, "--out", out], out, capsys)
    assert "column 'winner' appears more than once" in line


# --------------------------------------------------------------------------- 6. non-UTF-8 bytes


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_non_utf8_names_the_true_byte_offset(suffix, log, tmp_path, capsys):
    path = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        log.to_csv(path, index=False)
    elif suffix == ".jsonl":
        log.to_json(path, orient="records", lines=True)
    else:
        log.to_json(path, orient="records")
    data = path.read_bytes()
    offset = 14_083
    assert len(data) > offset + 100
    data = data[:offset] + b"\xff" + data[offset:]
    path.write_bytes(data)
    line_number = data[:offset].count(b"\n") + 1
    with pytest.raises(InputError, match=f"byte {offset}\\b.*line {line_number}\\b"):
        read_table(path)
    out = tmp_path / "out"
    line = cli_error(["fit", path, "--out", out], out, capsys)
    assert f"byte {offset}" in line and f"line {line_number}" in line, line


# --------------------------------------------------------------------------- 7. a glob that matches nothing


def test_glob_matching_no_file(tmp_path, capsys):
    pytest.importorskip("dask.dataframe")
    pattern = str(tmp_path / "nothing-*.parquet")
    out = tmp_path / "out"
    line = cli_error(["fit", pattern, "--out", out], out, capsys)
    assert f"no file matches '{pattern}'" in line, line
    with pytest.raises(InputError, match="no file matches"):
        ba.fit(pattern)


# --------------------------------------------------------------------------- 8. a .json that is not records


@pytest.mark.parametrize("payload, expected", [
    ("42", "expected a JSON list of records or an object of columns"),
    ('"votes"', "expected a JSON list of records or an object of columns"),
    ("[[1, 2], [3, 4]]", "item 1 is a list"),
    ('[{"user": "u", "model_a": "a", "model_b": "b", "winner": "model_a"}, 5]', "item 2 is a number"),
])
def test_json_that_is_not_records(payload, expected, tmp_path, capsys):
    """A scalar .json gave pandas' 'DataFrame constructor not properly called!'; a list of lists or numbers
    became columns 0, 1, ... and a 'missing columns' error that hid the cause (or a mixed list a half-read log)."""
    path = tmp_path / "log.json"
    path.write_text(payload)
    out = tmp_path / "out"
    line = cli_error(["fit", path, "--out", out], out, capsys)
    assert expected in line and "log.json" in line, line


# --------------------------------------------------------------------------- 9. argument errors and half-given settings


@pytest.mark.parametrize("args, expected", [
    (["fit", "LOG", "--out", "OUT", "--tastes", "0"], "argument --tastes: expected a positive integer"),
    (["fit", "LOG", "--out", "OUT", "--format", "xlsx"], "argument --format: invalid choice: 'xlsx'"),
    (["fit", "LOG"], "the following arguments are required: --out"),
    (["simulate", "--users", "many", "--out", "OUT"], "argument --users: invalid int value: 'many'"),
    (["fitt", "LOG", "--out", "OUT"], "invalid choice: 'fitt'"),
])
def test_argument_errors_are_one_line(args, expected, log, tmp_path):
    """argparse printed its whole usage block (26 lines) before the error; now one line like every other
    bad input, exit 2, nothing written."""
    path, out = tmp_path / "log.csv", tmp_path / "out"
    log.to_csv(path, index=False)
    argv = [str(path) if a == "LOG" else str(out) if a == "OUT" else a for a in args]
    done = subprocess.run([sys.executable, "-m", "bayes_annot", *argv], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("bayes-annot: error: "), done.stderr
    assert expected in lines[0] and "--help" in lines[0], lines[0]
    assert not out.exists()


def test_strong_model_without_mu_is_refused(log, tmp_path, capsys):
    """``--strong-model NAME`` without ``--mu`` was ignored: strengths were learned while the user asked for
    the paper's known-mu setting, and nothing said so."""
    path, out = tmp_path / "log.csv", tmp_path / "out"
    log.to_csv(path, index=False)
    strong = str(log["model_a"].iloc[0])
    line = cli_error(["fit", path, "--out", out, "--strong-model", strong], out, capsys)
    assert f"--strong-model '{strong}' needs --mu" in line
    with pytest.raises(InputError, match="needs --mu"):
        ba.fit(log, strong_model=strong)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_with_a_byte_order_mark_is_read(suffix, log, tmp_path):
    """A .json saved with a UTF-8 byte order mark (Windows editors) was refused ('Unexpected UTF-8 BOM'), and a
    .jsonl one with nested cells (Arena conversations, read line by line) too, while a CSV with one was read."""
    path = tmp_path / f"log{suffix}"
    frame = log.copy()
    frame["conversation_a"] = [[{"role": "user", "content": "q"}]] * len(frame)  # the line-by-line reader
    frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    back = read_table(path)
    assert list(back.columns) == list(frame.columns)
    assert back["user"].astype(str).tolist() == log["user"].tolist()


@pytest.mark.parametrize("flags, shared", [
    (["--model-b", "model_a"], "model_a"),
    (["--user", "winner"], "winner"),
    (["--user", "model_b"], "model_b"),
])
def test_one_column_for_two_roles_is_refused(flags, shared, log, tmp_path, capsys):
    """``--model-b model_a`` fitted every row as a same-model pair (exit 0, a warning, every user
    'uninformative'); ``--user winner`` fitted three 'users' named model_a, model_b and tie. A column given
    for two roles is now a settings error naming both flags."""
    path, out = tmp_path / "log.csv", tmp_path / "out"
    log.to_csv(path, index=False)
    line = cli_error(["fit", path, "--out", out, *flags], out, capsys)
    assert f"column '{shared}' is given as both" in line and flags[0] in line, line
    role = flags[0][2:].replace("-", "_")
    with pytest.raises(InputError, match="each role needs its own column"):
        ba.fit(log, **{role: flags[1]})
