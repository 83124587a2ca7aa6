"""What a crash or a kill leaves beside an output: the next run removes only what the package provably wrote.

Each test failed on the code before the fix (a user's folder or file deleted, or a killed run's temporary
file left for ever), through the CLI or the public API.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bayes_annot", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "log.csv"
    ba.simulate(n_users=120, n_models=4, labels_per_user=(3, 10), tie_rate=0.05, with_text=True, seed=5).to_csv(
        path, index=False)
    return path


@pytest.fixture
def result_dir(tmp_path, log_csv):
    out = tmp_path / "res"
    assert main(["fit", str(log_csv), "--out", str(out), "--quiet"]) == 0
    return out


# --------------------------------------------------------------------------- 1. crash recovery


@pytest.mark.parametrize("name", [".res.old-20261201", ".res.tmp-mycopy_1"])
def test_a_users_backup_named_like_a_leftover_is_kept(result_dir, log_csv, name):
    """A user's copy of the results named '.res.old-' + 8 characters from [a-z0-9_] (e.g. a date) counted as a
    crash leftover: the next fit deleted it. It is kept now, with a warning."""
    backup = result_dir.parent / name
    shutil.copytree(result_dir, backup)
    before = snapshot(backup)
    proc = run("fit", log_csv, "--out", result_dir, "--seed", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(backup) == before
    assert f"warning: kept '{backup}'" in proc.stderr


def test_a_users_backup_is_never_restored_over_a_missing_folder_and_replaced(tmp_path, result_dir, log_csv):
    """With DIR missing, a user's '.res.old-20261201' was 'restored' into DIR as the previous results of a
    crash, and the fit then replaced it: the backup was gone."""
    backup = tmp_path / ".res.old-20261201"
    result_dir.rename(backup)
    before = snapshot(backup)
    proc = run("fit", log_csv, "--out", result_dir, "--seed", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(backup) == before
    assert "rename it to 'res'" in proc.stderr
    assert len(ba.load(result_dir).rows) == len(pd.read_csv(log_csv))


def test_a_copy_of_a_real_leftover_is_kept_while_the_leftover_is_recovered(tmp_path, result_dir, log_csv):
    """A kill between the two renames leaves the new results staged and the previous ones set aside; a copy of
    the staging folder (cp -r, another name and inode) is not the package's, though it holds its record."""
    before = snapshot(result_dir)
    env = {"BAYES_ANNOT_NO_RENAME_EXCHANGE": "1"}
    killed = run("fit", log_csv, "--out", result_dir, "--seed", "3", "--quiet", env={"BAYES_ANNOT_FAULT": "between-renames", **env})
    assert killed.returncode == 91, killed.stderr
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".res.tmp-")]
    assert len(staged) == 1 and not result_dir.exists()
    copy = tmp_path / ".res.tmp-copy0001"
    shutil.copytree(staged[0], copy)
    kept = snapshot(copy)
    # a read-only look (ba.load) does not recover; the next write restores the previous results first
    proc = run("fit", log_csv, "--out", result_dir, "--seed", "3", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "restored" in proc.stderr and f"kept '{copy}'" in proc.stderr
    assert hidden(tmp_path) == [copy.name] and snapshot(copy) == kept
    assert snapshot(result_dir) != before and len(ba.load(result_dir).rows) == len(pd.read_csv(log_csv))


@pytest.mark.parametrize("point, env", [
    ("after-exchange", {}),
    ("after-renames", {"BAYES_ANNOT_NO_RENAME_EXCHANGE": "1"}),
])
def test_previous_results_set_aside_by_a_killed_swap_are_removed(tmp_path, result_dir, log_csv, point, env):
    """The folder a swap sets aside carries no record of its own: the published folder's record names it
    (name and inode), so the next run removes it, and then the record."""
    killed = run("fit", log_csv, "--out", result_dir, "--seed", "3", "--quiet", env={"BAYES_ANNOT_FAULT": point, **env})
    assert killed.returncode == 91, killed.stderr
    assert hidden(tmp_path) and (result_dir / ".bayes_annot-staging.json").exists()
    assert len(ba.load(result_dir).rows) == len(pd.read_csv(log_csv))
    proc = run("fit", log_csv, "--out", result_dir, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "removed" in proc.stderr and "kept" not in proc.stderr
    assert hidden(tmp_path) == [] and hidden(result_dir) == []


def test_a_leftover_of_an_older_version_is_kept_and_reported(tmp_path, result_dir, log_csv):
    """A staging folder as versions before the record left it (a manifest marked incomplete, no record): there
    is no telling it from a user's copy, so it is kept and reported, never removed."""
    old = tmp_path / ".res.tmp-k2j4x9ab"
    shutil.copytree(result_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    before = snapshot(old)
    with pytest.warns(UserWarning, match="kept .*k2j4x9ab"):
        ba.fit(str(log_csv)).save(result_dir)
    assert snapshot(old) == before
