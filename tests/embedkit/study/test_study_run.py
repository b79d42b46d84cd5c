"""``embedkit study`` end to end on phantoms and a tiny random ViT: results.csv, report.md with figures, subgroups,
a re-run that does no work, a SIGKILL mid-grid then re-run with the same results.csv, and --only / stale cells."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from embedkit.app.study import study, study_plan
from embedkit.cli.main import app
from embedkit.study.results import COLUMNS

CONFIG = """
[study]
name = "test-study"
resolutions = [32, 48]
n_boot = 50
device = "cpu"
batch_size = 16

[make]
phantoms = [{ out = "assets/ph", n = 90, size = 64, seed = 0 }]
tiny_models = { folder = "assets/models", kinds = ["dinov3-vit"] }

[[datasets]]
name = "ph"
data = "assets/ph/manifest.csv"

[[backbones]]
name = "vit"
model = "assets/models/tiny-dinov3-vit"

[[arms]]
name = "linear"
kind = "frozen"
heads = ["linear"]
features = ["cls"]

[[arms]]
name = "lf"
kind = "frozen"
heads = ["linear"]
features = ["mean_patch"]
label_fractions = [0.5, 1.0]
seeds = 2
options = { epochs = 20 }

[[arms]]
name = "ft"
kind = "finetune"
options = { epochs = 1, batch_size = 16 }
"""


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = root / "study.toml"
    cfg.write_text(CONFIG)
    res = study(cfg, root / "out")
    return root, cfg, res


def test_study_writes_results_report_and_figures(done):
    root, cfg, res = done
    assert res.failures == {}
    rows = _rows(root / "out" / "results.csv")
    assert list(rows[0]) == list(COLUMNS)
    macro = [r for r in rows if r["label"] == "macro_avg"]
    # 2 resolutions x (linear + 4 sub-runs of lf + ft)
    assert len(macro) == 2 * (1 + 4 + 1)
    labels = {r["label"] for r in rows} - {"macro_avg"}
    assert labels == {"cardiomegaly", "effusion", "pneumothorax", "nodule"}
    for r in rows:
        assert r["random_weights"] == "True" and int(r["n"]) > 0 and r["n_boot"] == "50"
        if r["auroc"] and r["auroc_ci_low"]:
            assert float(r["auroc_ci_low"]) <= float(r["auroc_ci_high"])
    lf = {(r["label_fraction"], r["seed"]) for r in macro if r["arm"] == "lf"}
    assert lf == {("0.5", "0"), ("0.5", "1"), ("1.0", "0"), ("1.0", "1")}
    report = (root / "out" / "report.md").read_text()
    assert "weights were random" in report
    for fig in ("resolution.png", "heatmap.png", "paired.png", "frozen_vs_finetune.png", "label_fraction.png"):
        assert (root / "out" / "figures" / fig).stat().st_size > 5000, fig
        assert f"figures/{fig}" in report
    assert "holm" in report
    # every run has its subgroups, partitioning the test set
    run = root / "out" / "runs" / "ph" / "32" / "vit" / "ft"
    doc = json.loads((run / "metrics.json").read_text())
    assert (run / "subgroups.csv").exists()
    for axis, groups in doc["subgroups"]["axes"].items():
        assert sum(g["n"] for g in groups.values()) == doc["n"]["test"], axis


def test_second_run_does_no_work_and_is_fast(done):
    root, cfg, _ = done
    before = (root / "out" / "results.csv").read_bytes()
    t = time.perf_counter()
    res = study(cfg, root / "out")
    assert time.perf_counter() - t < 10
    assert set(res.states.values()) == {"done"}
    assert (root / "out" / "results.csv").read_bytes() == before
    r = CliRunner().invoke(app, ["study", str(cfg), "--out", str(root / "out"), "--dry-run"])
    assert r.exit_code == 0 and all(line.endswith("done") for line in r.stdout.strip().splitlines())


def test_changed_arm_is_stale_and_only_it_reruns(done, tmp_path):
    root, cfg, _ = done
    edited = root / "edited.toml"
    edited.write_text(CONFIG.replace("options = { epochs = 20 }", "options = { epochs = 21 }"))
    states = {k: s for k, _, s in study_plan(edited, root / "out")}
    assert {k for k, s in states.items() if s != "done"} == {"ph/32/vit/lf", "ph/48/vit/lf"}
    assert all(s == "stale" for k, s in states.items() if k.endswith("/lf"))
    res = study(edited, root / "out", only="ph/32/*")
    assert {k for k, s in res.states.items() if s == "ran"} == {"ph/32/vit/lf"}
    study(cfg, root / "out", only="ph/32/vit/lf")  # back to the original settings for the other tests


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_gives_the_same_results(done):
    root, cfg, _ = done
    out = root / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "embedkit", "study", str(cfg), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_dir = out / "work" / "done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and len(list(done_dir.glob("*.json"))) >= 4:  # cache, store, 2 cells: mid-grid
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = {s for _, _, s in study_plan(cfg, out)}
    assert states - {"done"}, "nothing was left to do after the kill"
    res = study(cfg, out)
    assert res.failures == {}
    assert (out / "results.csv").read_bytes() == (root / "out" / "results.csv").read_bytes()
