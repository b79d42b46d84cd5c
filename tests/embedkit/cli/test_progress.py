"""Progress when stderr is a file or pipe (a Slurm log): plain lines with done/total, rate and ETA."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from embedkit.progress import Progress

TIME = r"elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|-:--:--)$"
PROBE_LINE = re.compile(r"^probe mlp( run (\d)/2)?: (\d+)/(\d+) \([\d.]+%\), [\d.]+ step/s, epoch (\d)/3"
                        r"(, lr [\d.e-]+, loss [\d.e-]+, val_loss [\d.e-]+, val_auroc [\d.e-]+)?, " + TIME)
FINETUNE_LINE = re.compile(r"^finetune: (\d+)/(\d+) \([\d.]+%\), [\d.]+ step/s, epoch (\d)/2, step (\d+)/(\d+), "
                           r"loss [\d.e-]+, lr [\d.e-]+, [\d.]+ img/s, " + TIME)
LINE = re.compile(r"^(extract|cache-images): (\d+)/(\d+) \([\d.]+%\), [\d.]+ img/s, elapsed \d+:\d\d:\d\d, "
                  r"ETA (\d+:\d\d:\d\d|-:--:--)$")


def test_plain_lines_every_interval_and_none_after_an_error(capsys):
    with Progress("probe linear", total=4, unit="epoch", interval=0, mode="plain") as bar:
        bar.update(0)
        for _ in range(4):
            bar.advance(loss=0.25)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("probe linear: 1/4 (25.0%), ")
    assert "epoch/s, loss 0.25, elapsed" in lines[-1] and lines[-1].endswith("ETA 0:00:00")

    bar = Progress("extract", interval=3600, mode="plain")
    bar(0, 10)
    bar(5, 10)
    bar.close(success=False)  # an error: its one line must stay alone on stderr
    assert capsys.readouterr().err == ""
    with Progress("extract", interval=3600, mode="plain") as bar:
        bar(0, 10)
        bar(10, 10)
    assert capsys.readouterr().err.startswith("extract: 10/10 (100.0%)")  # the last line, even between intervals
    with Progress("extract", enabled=False, interval=0) as bar:
        bar(5, 10)
    assert capsys.readouterr().err == ""


def test_extract_and_cache_print_periodic_lines_to_a_pipe(tmp_path):
    from embedkit.data.phantoms import make_phantoms
    from embedkit.testing import make_tiny_backbone

    manifest = make_phantoms(tmp_path / "ph", n=10, size=32, seed=0, formats=("png8",))
    model = make_tiny_backbone("dinov3-vit", tmp_path)
    env = dict(os.environ, EMBEDKIT_PROGRESS_INTERVAL="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("EMBEDKIT_PROGRESS", None)
    for cmd in (["extract", "--model", str(model), "--res", "32", "--out", str(tmp_path / "s.zarr")],
                ["cache-images", "--res", "32", "--out", str(tmp_path / "c.zarr")]):
        proc = subprocess.run([sys.executable, "-m", "embedkit", *cmd, "--data", str(manifest), "--workers", "0",
                               "--batch-size", "2"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        matches = [LINE.match(x) for x in lines]
        assert len(lines) >= 3 and all(matches), proc.stderr
        done = [int(m.group(2)) for m in matches]
        assert done == sorted(done) and done[-1] == 10 and {int(m.group(3)) for m in matches} == {10}


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _env() -> dict:
    env = dict(os.environ, EMBEDKIT_PROGRESS_INTERVAL="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    env.pop("EMBEDKIT_PROGRESS", None)
    return env


def _embedkit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedkit", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=300)


def test_a_field_named_as_a_rate_reads_as_one(capsys):
    with Progress("finetune", total=4, unit="step", interval=0, mode="plain") as bar:
        bar.update(1, epoch="1/2", loss=0.5, **{"img/s": 12.345})
    assert ", epoch 1/2, loss 0.5, 12.3 img/s, elapsed" in capsys.readouterr().err


def test_probe_mlp_prints_epoch_and_step_lines_to_a_pipe_and_json_stays_clean(tmp_path):
    from tests.embedkit.cli.test_probe import _make_store

    store = _make_store(tmp_path / "a.zarr")
    common = ("--head", "mlp", "--epochs", 3, "--batch-size", 64, "--n-boot", 20, "--device", "cpu", "--no-subgroups")
    proc = _embedkit("probe", store, "--out", tmp_path / "one", *common)
    assert proc.returncode == 0, proc.stderr
    matches = [m for m in map(PROBE_LINE.match, proc.stderr.splitlines()) if m]
    # 360 train rows / 64 = 6 steps per epoch, 3 epochs, two learning rates (the mlp's default sweep): 36 steps.
    assert len(matches) >= 36 and {m.group(4) for m in matches} == {"36"}, proc.stderr
    done = [int(m.group(3)) for m in matches]
    assert done == sorted(done) and done[-1] == 36 and {m.group(5) for m in matches} == {"1", "2", "3"}
    assert sum(bool(m.group(6)) for m in matches) >= 6  # every epoch's validation figures
    assert "val_auroc" not in proc.stdout and "probe mlp:" not in proc.stdout

    # Several runs: one line per run, a bar per run; --json: stdout holds the one document and nothing else.
    proc = _embedkit("probe", store, "--out", tmp_path / "multi", *common, "--label-fraction", "0.5,1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = _strict(proc.stdout)
    assert [r["label_fraction"] for r in doc["rows"]] == [0.5, 1.0]
    matches = [m for m in map(PROBE_LINE.match, proc.stderr.splitlines()) if m]
    assert {m.group(2) for m in matches} == {"1", "2"}, proc.stderr
    assert all(PROBE_LINE.match(x) for x in proc.stderr.splitlines() if x.strip()), proc.stderr


def test_finetune_prints_step_lines_to_a_pipe_and_json_stays_clean(tmp_path):
    from embedkit.data.phantoms import make_phantoms
    from embedkit.testing import make_tiny_backbone

    data = make_phantoms(tmp_path / "ph", n=24, size=32, seed=0, formats=("png8",), split_fractions=(0.5, 0.25, 0.25))
    model = make_tiny_backbone("dinov3-vit", tmp_path)
    proc = _embedkit("finetune", "--model", model, "--res", 32, "--data", data, "--out", tmp_path / "ft", "--epochs", 2,
                     "--batch-size", 4, "--lr", "1e-3", "--n-boot", 10, "--no-subgroups", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = _strict(proc.stdout)
    assert doc["kind"] == "finetune"
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    matches = [FINETUNE_LINE.match(x) for x in lines]
    assert len(lines) >= 4 and all(matches), proc.stderr
    steps = {int(m.group(2)) for m in matches}
    assert len(steps) == 1 and [int(m.group(1)) for m in matches][-1] == steps.pop()
    assert {m.group(3) for m in matches} == {"1", "2"}
    assert "epoch 1/2: train loss" in (tmp_path / "ft" / "train.log").read_text()  # the run's own log is kept


def test_mlp_events_reach_the_total_even_when_early_stopping_cuts_a_run():
    import numpy as np

    from probes.runner import run_probe
    from probes.synthetic import make_multilabel_features

    x, y = make_multilabel_features(300, 16, 2, rank=4, signal=2.5, seed=0, missing=0.0)
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    events: list[dict] = []
    run_probe(x, y, split=split, ids=[f"r{i}" for i in range(300)], head="mlp", progress=events.append,
              head_options={"lrs": (1e-2, 1e-3), "max_epochs": 40, "patience": 1, "batch_size": 50})
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) < 80  # patience 1 stopped at least one run early
    assert [e["done"] for e in events] == sorted(e["done"] for e in events) and events[-1]["done"] == 320
    assert {e["total"] for e in events} == {320} and {e["steps"] for e in events if e["event"] == "step"} == {4}
    assert {e["lr"] for e in epochs} == {1e-2, 1e-3} and all(np.isfinite(e["loss"]) for e in epochs)
    knn: list[dict] = []
    run_probe(x, y, split=split, ids=[f"r{i}" for i in range(300)], head="knn", progress=knn.append)
    assert knn == []  # a head whose fit takes no progress keyword is fitted without one


def test_a_head_that_stops_early_and_then_finishes_ends_its_bar_at_the_total(capsys, monkeypatch):
    from embedkit.cli.probe import _HeadProgress
    from probes.heads import FitProgress

    monkeypatch.setenv("EMBEDKIT_PROGRESS", "plain")
    monkeypatch.setenv("EMBEDKIT_PROGRESS_INTERVAL", "3600")
    bar = _HeadProgress()
    rep = FitProgress(lambda ev: bar({**ev, "head": "linear", "run": 1, "runs": 1}), epochs=30, steps=4)
    for step in range(1, 5):
        rep.step(1, step)
    rep.epoch(1, val_auroc=0.75)  # the head learns only after this epoch that it stops (patience)
    assert capsys.readouterr().err == ""  # within the interval: nothing yet
    rep.finish()
    assert capsys.readouterr().err.startswith("probe linear: 120/120 (100.0%), ")
    bar.close()
    assert capsys.readouterr().err == ""
