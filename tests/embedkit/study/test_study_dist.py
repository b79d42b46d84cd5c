"""``embedkit study`` under torchrun: 2 gloo ranks on the CPU run the same command and configuration as one process.

The grid is the example's, trimmed: 1 dataset, 1 resolution, 1 backbone, a frozen arm and a finetune arm of 1 epoch.
Both ranks run cache-images, extract and the finetune (DDP); rank 0 alone probes and writes results.csv and
report.md. The frozen arm's rows equal the one-process rows exactly; the finetune arm's within ``FT_TOL`` (DDP sums
the two ranks' gradients in another order). A re-run under torchrun does no work. Both runs use one thread per
process (torchrun's default), so the extracted stores are bitwise equal.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

#: Largest difference allowed in the finetune arm's AUROC / AP and their CI bounds (1 process vs 2 ranks).
FT_TOL = 1e-4

CONFIG = """
[study]
name = "dist-study"
resolutions = [32]
n_boot = 50
device = "cpu"
batch_size = 16

[make]
phantoms = [{ out = "assets/ph", n = 60, size = 64, seed = 0 }]
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

[[arms]]
name = "ft"
kind = "finetune"
options = { epochs = 1, batch_size = 8 }
"""

NUMERIC = ("auroc", "auroc_ci_low", "auroc_ci_high", "ap", "ap_ci_low", "ap_ci_high")


def _run(args: list[str], *, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               EMBEDKIT_DIST_TIMEOUT="60")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "embedkit", *args])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _markers(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "work" / "done").glob("*.json")}


def test_study_under_torchrun_equals_one_process_and_reruns_without_work(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG)
    one, two = tmp_path / "one", tmp_path / "two"
    p = _run(["-m", "embedkit", "study", str(cfg), "--out", str(one), "--json"])
    assert p.returncode == 0, p.stderr[-3000:]

    p = _torchrun("study", str(cfg), "--out", str(two), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)  # rank 0 alone prints
    assert doc["failures"] == {} and "ran" in doc["states"].values()
    ft = json.loads((two / "runs" / "ph" / "32" / "vit" / "ft" / "metrics.json").read_text())
    assert ft["finetune"]["world_size"] == 2  # really trained by two DDP ranks

    a, b = _rows(one / "results.csv"), _rows(two / "results.csv")
    assert [(r["arm"], r["label"]) for r in a] == [(r["arm"], r["label"]) for r in b]
    assert {r["arm"] for r in a} == {"linear", "ft"}
    for ra, rb in zip(a, b):
        if ra["arm"] == "linear":
            assert ra == rb
        else:
            assert {k: v for k, v in ra.items() if k not in NUMERIC} == {k: v for k, v in rb.items()
                                                                          if k not in NUMERIC}
            for k in NUMERIC:
                assert (ra[k] == "") == (rb[k] == "")
                if ra[k]:
                    assert abs(float(ra[k]) - float(rb[k])) <= FT_TOL, (ra["label"], k, ra[k], rb[k])
    assert (two / "report.md").is_file() and not list(two.glob(".*.tmp-*"))

    before = _markers(two), (two / "results.csv").read_text()
    p = _torchrun("study", str(cfg), "--out", str(two), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads(p.stdout)
    assert set(again["states"].values()) == {"done"}
    assert (_markers(two), (two / "results.csv").read_text()) == before
