"""The command line: the outputs of docs/outputs.md, exit codes, nothing half written."""

import json
import subprocess
import sys

import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.datasets import real_data_path


def run(*args):
    return subprocess.run([sys.executable, "-m", "bayes_annot", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def sim_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "log.csv"
    assert main(["simulate", "--out", str(path), "--users", "300", "--models", "5", "--tie-rate", "0.05", "--seed", "3"]) == 0
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl", ".json"])
def test_simulate_never_overwrites_a_real_log(tmp_path, suffix, capsys):
    """``simulate --out real_log.csv`` replaced the user's log with a synthetic one. Now an existing file is
    replaced only when it is a simulated log (it has the truth column ``true_attentive``); a folder is refused
    too (it was an internal error for a folder named like a file)."""
    real = tmp_path / f"real{suffix}"
    log = ba.simulate(n_users=20, n_models=3, seed=1)[["user", "model_a", "model_b", "winner"]].astype(str)
    {".csv": lambda: log.to_csv(real, index=False), ".parquet": lambda: log.to_parquet(real),
     ".jsonl": lambda: log.to_json(real, orient="records", lines=True),
     ".json": lambda: log.to_json(real, orient="records")}[suffix]()
    before = real.read_bytes()
    capsys.readouterr()
    assert main(["simulate", "--out", str(real), "--users", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a log written by 'bayes-annot simulate'" in err[0]
    assert real.read_bytes() == before
    (tmp_path / f"folder{suffix}").mkdir()
    assert main(["simulate", "--out", str(tmp_path / f"folder{suffix}"), "--users", "10"]) == 2
    sim = tmp_path / f"sim{suffix}"
    assert main(["simulate", "--out", str(sim), "--users", "10"]) == 0
    assert main(["simulate", "--out", str(sim), "--users", "12"]) == 0  # a simulated log: replaced
    assert ba.data.read_table(sim)["user"].nunique() == 12


def test_simulate_writes_truth_columns(sim_csv):
    log = pd.read_csv(sim_csv)
    assert {"user", "model_a", "model_b", "winner", "true_attentive", "true_eta", "true_strength_a"} <= set(log.columns)
    assert log.user.nunique() == 300


def test_fit_writes_the_contract(sim_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", str(sim_csv), "--out", str(out), "--filter", "fdr:0.1"]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and str(out) in printed
    users = pd.read_csv(out / "users.csv")
    assert list(users.columns[:6]) == ["user", "n_labels", "quality", "quality_low", "quality_high", "kept"]
    assert users.quality_low.isna().all()  # EM gives no interval
    models = pd.read_csv(out / "models.csv")
    assert list(models.columns[:2]) == ["model", "strength"]
    rows = pd.read_csv(out / "rows.csv")
    log = pd.read_csv(sim_csv)
    assert len(rows) == len(log)
    assert list(rows.columns[: len(log.columns)]) == list(log.columns)
    assert {"kept", "reason", "weight"} <= set(rows.columns)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("engine", "variant", "counts", "parameters", "loglik", "iterations", "converged", "runtime_seconds"):
        assert key in summary
    for key in ("rows", "users", "models", "kept_rows", "kept_users"):
        assert key in summary["counts"]
    assert summary["filter"]["rule"] == "fdr:0.1"
    assert summary["counts"]["kept_rows"] == int(rows.kept.sum())
    assert len(summary["input"]["sha256"]) == 64


def test_same_seed_same_bytes(sim_csv, tmp_path):
    for name in ("a", "b"):
        assert main(["fit", str(sim_csv), "--out", str(tmp_path / name), "--seed", "4"]) == 0
    for table in ("users.csv", "models.csv", "rows.csv"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes()


@pytest.mark.parametrize(
    "content, message",
    [
        ("user,model_a,model_b\nu,x,y\n", "missing columns: winner (no column 'winner'; map with --winner COL)"),
        ("user,model_a,model_b,winner\nu,x,y,maybe\n", "unknown value(s) 'maybe'"),
        ("user,model_a,model_b,winner\n", "input is empty"),
        ("user,model_a,model_b,winner\n,x,y,a\n", "column 'user' has 1 missing value(s), first at input row 1"),
        ("user,model_a,model_b,winner,p_a\nu,x,y,a,2\n", "column 'p_a' value 2 at input row 1 is outside [0, 1]"),
    ],
)
def test_bad_input_exit_2_one_line_no_output(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    out = tmp_path / "out"
    proc = run("fit", path, "--out", out)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unreadable_and_directory_inputs_exit_2(tmp_path):
    assert run("fit", tmp_path / "missing.csv", "--out", tmp_path / "o").returncode == 2
    proc = run("fit", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "is a directory" in proc.stderr


def test_failed_refit_leaves_previous_output_intact(sim_csv, tmp_path):
    out = tmp_path / "out"
    assert main(["fit", str(sim_csv), "--out", str(out)]) == 0
    before = (out / "users.csv").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("user,model_a,model_b,winner\nu,x,y,??\n")
    assert main(["fit", str(bad), "--out", str(out)]) == 2
    assert (out / "users.csv").read_bytes() == before


def test_cemschoice_puts_london_first(tmp_path):
    out = tmp_path / "cems"
    with __import__("importlib").resources.as_file(real_data_path("cemschoice")) as path:
        proc = run("fit", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    models = pd.read_csv(out / "models.csv").sort_values("strength", ascending=False)
    assert models.model.iloc[0] == "London"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ties"] == 487 and summary["counts"]["rows"] == 4454


def test_paper_setting_flags(tmp_path):
    log = ba.simulate(n_users=200, known_mu=0.8, labels_per_user=30, seed=2).drop(columns=["p_a"])
    path = tmp_path / "paper.csv"
    log.to_csv(path, index=False)
    out = tmp_path / "o"
    assert main(["fit", str(path), "--out", str(out), "--mu", "0.8", "--strong-model", "model_0", "--q", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strengths"].startswith("known (mu=0.8")
    assert summary["parameters"]["q"] == 0.5


def test_demo_runs(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "AUC" in proc.stdout
    for name in ("users.csv", "models.csv", "rows.csv", "summary.json", "report.html", "dpo.jsonl"):
        assert (out / name).exists()


def test_fit_fdr_with_dpo_export_end_to_end(tmp_path):
    log_path = tmp_path / "text.csv"
    assert main(["simulate", "--out", str(log_path), "--users", "300", "--with-text", "--tie-rate", "0.05", "--seed", "8"]) == 0
    out, dpo = tmp_path / "out", tmp_path / "pairs.jsonl"
    assert main(["fit", str(log_path), "--filter", "fdr:0.1", "--dpo", str(dpo), "--out", str(out)]) == 0
    records = [json.loads(line) for line in dpo.read_text().splitlines()]
    rows = pd.read_csv(out / "rows.csv")
    assert len(records) == int((rows.reason == "ok").sum()) > 0
    assert set(records[0]) >= {"prompt", "chosen", "rejected", "weight", "user", "chosen_model", "rejected_model"}
    first = rows[rows.reason == "ok"].iloc[0]
    chosen = first.response_a if first.winner == "model_a" else first.response_b
    assert records[0]["chosen"] == chosen and records[0]["prompt"] == first.prompt


def test_dpo_without_text_columns_exit_2_and_nothing_written(sim_csv, tmp_path):
    out, dpo = tmp_path / "out", tmp_path / "pairs.jsonl"
    proc = run("fit", sim_csv, "--dpo", dpo, "--out", out)
    assert proc.returncode == 2 and "prompt" in proc.stderr
    assert not out.exists() and not dpo.exists()


def test_fit_report_and_rebuild_from_folder(sim_csv, tmp_path):
    out = tmp_path / "out"
    assert main(["fit", str(sim_csv), "--out", str(out), "--report"]) == 0
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "data:image/png;base64" in html
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2


def test_demo_refuses_a_folder_that_is_not_ours_before_fitting(tmp_path):
    """``demo --out DIR`` with the user's files in DIR fitted the 2,000-user demo first and only then refused."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = run("demo", "--out", folder, "--no-progress")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "notes.txt" in lines[0], done.stderr
    assert "demo log" not in done.stdout  # refused before the demo log was even loaded
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["votes[1].csv", "what?.csv", "all*.jsonl"])
def test_a_file_name_with_glob_characters_is_a_file(tmp_path, name):
    """``fit 'votes[1].csv'`` took the name for a glob of parquet files: 'cannot read parquet file
    .../votes[1].csv: Parquet magic bytes not found' (exit 2) for a CSV that exists. An existing file is
    now read as that file, for a fit and for --update; a pattern matching files is still a glob."""
    log = ba.simulate(n_users=40, n_models=3, labels_per_user=(3, 8), seed=5)[["user", "model_a", "model_b", "winner"]]
    path = tmp_path / name
    if name.endswith(".jsonl"):
        log.to_json(path, orient="records", lines=True)
    else:
        log.to_csv(path, index=False)
    out = tmp_path / "res"
    done = run("fit", path, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["input"]["file"] == name
    done = run("fit", path, "--update", out, "--out", out, "--on-duplicate", "keep", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(ba.load(out).rows) == 2 * len(log)


def test_command_pauses_the_garbage_collector_only_while_it_imports(tmp_path):
    """``bayes-annot`` (``cli.run``) pauses the cyclic garbage collector while a command imports pandas and the
    engines, then freezes what they created and resumes it before the fit: a long fit collects as usual.
    ``main()`` (library callers, these tests) leaves the collector alone."""
    import gc

    log, out, seen = tmp_path / "log.csv", tmp_path / "out", tmp_path / "seen.json"
    ba.simulate(n_users=40, n_models=4, labels_per_user=(5, 10), seed=1).to_csv(log, index=False)
    code = f"""
import gc, json, sys
import bayes_annot.fit
fitting = sys.modules["bayes_annot.fit"]
original = fitting.fit
def fit(*args, **kwargs):
    with open({str(seen)!r}, "w") as handle:
        json.dump({{"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}, handle)
    return original(*args, **kwargs)
fitting.fit = fit
sys.argv = ["bayes-annot", "fit", {str(log)!r}, "--out", {str(out)!r}, "--quiet"]
from bayes_annot.cli import run
run()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(seen.read_text())
    assert state["enabled"] and state["frozen"] > 0, state
    assert gc.isenabled()
    assert main(["fit", str(log), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert gc.isenabled() and (tmp_path / "again" / "users.csv").is_file()
