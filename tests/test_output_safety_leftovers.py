"""What a crash or a kill leaves beside an output: the next run removes only what the package provably wrote.

Each test failed on the code before the fix (a user's folder or file deleted, or a killed run's temporary
file left for ever), through the CLI or the public API.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bayes_annot as ba

from .test_output_safety import run, snapshot


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


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
    assert proc.stderr.count(f"warning: kept '{backup}'") == 1  # once (the CLI and the writer both recover)


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
    """Killed right after the swap: the previous results set aside carry the record written into them before
    the swap (their new name, their inode), so the next run removes them, and the record the new folder still
    holds."""
    killed = run("fit", log_csv, "--out", result_dir, "--seed", "3", "--quiet", env={"BAYES_ANNOT_FAULT": point, **env})
    assert killed.returncode == 91, killed.stderr
    assert hidden(tmp_path) and (result_dir / ".bayes_annot-staging.json").exists()
    assert len(ba.load(result_dir).rows) == len(pd.read_csv(log_csv))
    proc = run("fit", log_csv, "--out", result_dir, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "removed" in proc.stderr and "kept" not in proc.stderr
    assert hidden(tmp_path) == [] and hidden(result_dir) == []


def test_a_kill_before_the_previous_results_are_set_aside_leaves_no_unprovable_folder(tmp_path, result_dir, log_csv):
    """The two-rename swap made its '.res.old-XXXXXXXX' with mkdtemp and removed it again before the rename: a
    kill in between left an empty folder no record names (kept for ever, with a warning). The name is now
    chosen without making a folder."""
    env = {"BAYES_ANNOT_NO_RENAME_EXCHANGE": "1"}
    killed = run("fit", log_csv, "--out", result_dir, "--quiet", env={"BAYES_ANNOT_FAULT": "old-named", **env})
    assert killed.returncode == 91, killed.stderr
    assert [name for name in hidden(tmp_path) if ".old-" in name] == []
    proc = run("fit", log_csv, "--out", result_dir, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "kept" not in proc.stderr and hidden(tmp_path) == []


def test_a_record_left_in_an_empty_folder_keeps_it_replaceable(tmp_path, log_csv):
    """A swap killed right after writing the set-aside record into the target (here an empty folder the user
    made for the results) leaves that record in it: the folder still counts as empty, not as foreign."""
    out = tmp_path / "res"
    out.mkdir()
    env = {"BAYES_ANNOT_NO_RENAME_EXCHANGE": "1"}
    killed = run("fit", log_csv, "--out", out, "--quiet", env={"BAYES_ANNOT_FAULT": "old-named", **env})
    assert killed.returncode == 91, killed.stderr
    assert hidden(out) == [".bayes_annot-staging.json"]
    proc = run("fit", log_csv, "--out", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert hidden(tmp_path) == [] and hidden(out) == [] and len(ba.load(out).rows) == len(pd.read_csv(log_csv))


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


# --------------------------------------------------------------------------- 6. single files outside a folder


def temps(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-"))


@pytest.mark.parametrize("command", ["simulate", "report", "dpo"])
def test_a_killed_file_write_leaves_a_named_temporary_the_next_write_removes(tmp_path, result_dir, log_csv, command):
    """A ``simulate --out FILE``, ``report DIR --out FILE`` or ``--dpo FILE`` (outside the folder) killed before
    its rename left a temporary file beside FILE for ever ('.log.csv.k2j4x9ab', '.FILE.tmp-k2j4x9ab'), and nothing
    removed it. It is now named '.FILE.tmp-INODE-HASH' (the name proves the package wrote that very file) and the
    next write to FILE removes it; a user's file named alike, and a copy of the temporary, are kept."""
    target = {"simulate": tmp_path / "sim.csv", "report": tmp_path / "r.html", "dpo": tmp_path / "pairs.jsonl"}[command]
    args = {"simulate": ["simulate", "--out", target, "--users", "30", "--seed", "1"],
            "report": ["report", result_dir, "--out", target],
            "dpo": ["fit", log_csv, "--out", result_dir, "--dpo", target, "--quiet"]}[command]
    killed = run(*args, env={"BAYES_ANNOT_FAULT": "temp-written"})
    assert killed.returncode == 91, killed.stderr
    (left,) = temps(target)
    assert (target.parent / left).stat().st_size > 0 and not target.exists()
    mine = target.parent / f".{target.name}.tmp-mine"
    mine.write_text("a user's file")
    copy = target.parent / f".{target.name}.tmp-{'0' * 6}-{'a' * 12}"
    shutil.copy(target.parent / left, copy)
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert temps(target) == sorted([mine.name, copy.name]) and mine.read_text() == "a user's file"
    assert f"removed '{target.parent / left}'" in proc.stderr and target.stat().st_size > 0


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    """Another process still writing FILE holds its temporary file (flock): a write to FILE meanwhile leaves it."""
    from bayes_annot.outdir import TempFile

    target = tmp_path / "sim.csv"
    live = TempFile(target)
    live.path.write_text("being written")
    proc = run("simulate", "--out", target, "--users", "30", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert live.path.read_text() == "being written"
    live.discard()
    assert temps(target) == []


def test_simulate_killed_while_writing_leaves_nothing_after_the_next_run(tmp_path):
    """A real SIGKILL while ``simulate --out FILE`` writes (once its temporary file has data): the old code's
    '.sim.csv.k2j4x9ab' stayed for ever; the next run now removes what the killed one left."""
    import signal
    import time

    def size(path):
        try:
            return path.stat().st_size
        except FileNotFoundError:  # renamed meanwhile
            return 0

    target = tmp_path / "sim.csv"
    args = [sys.executable, "-m", "bayes_annot", "simulate", "--out", str(target), "--users", "20000", "--seed", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".sim.csv.") and size(p) > 0 for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not target.exists()  # killed while writing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sim.csv.")]
    again = run("simulate", "--out", target, "--users", "30", "--seed", "1")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["sim.csv"]
