"""Finetune from an image cache, then ``predict`` of that run onto images with partial or no labels: subgroups,
display names and the predictions-only path, as a new user would hit them (issues 12, 13)."""
from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from tests.embedkit.finetune.conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BASE = ["path", "id", "patient_id", "study_id", "split", "view", "sex", "age", "dataset"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cache_run(ft_tiny, ft_phantoms, tmp_path_factory):
    """A finetune whose --data is an image cache (the paper preset the default protocol reads)."""
    from embedkit.api import cache_images
    from embedkit.app.finetune import run_finetune

    root = tmp_path_factory.mktemp("ftcache")
    cache_images(str(ft_phantoms), root / "cache", res=32, preprocess="paper", workers=0)
    return run_finetune(str(ft_tiny("dinov3-vit")), str(root / "cache"), root / "run", res=32, **FAST)


def test_finetune_on_an_image_cache_writes_subgroups_summing_to_the_test_set(cache_run):
    out = cache_run.out
    assert (out / "subgroups.csv").exists(), sorted(p.name for p in out.iterdir())
    n_test = len(_rows(out / "test_labels.csv"))
    assert n_test == cache_run.metrics["n"]["test"] > 0
    per_axis_label = Counter()
    for r in _rows(out / "subgroups.csv"):
        per_axis_label[(r["axis"], r["label"])] += int(r["n"])
    assert {a for a, _ in per_axis_label} >= {"sex", "age", "view"}
    assert set(per_axis_label.values()) == {n_test}
    assert "subgroups" in json.loads((out / "metrics.json").read_text())


def _write_manifest(src, dest, *, labels: dict[str, str]):
    """A copy of phantom manifest ``src`` at ``dest`` with label columns renamed / dropped (new -> old name)."""
    rows = _rows(src)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(BASE + list(labels))
        for r in rows:
            w.writerow([str(src.parent / r["path"]) if k == "path" else r[k] for k in BASE]
                       + [r[old] for old in labels.values()])
    return dest


def test_predict_of_a_finetune_onto_images_without_labels_writes_predictions_only(cache_run, ft_phantoms,
                                                                                 tmp_path):
    data = _write_manifest(ft_phantoms, tmp_path / "unlabelled.csv", labels={})
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["predict", str(cache_run.out), "--data", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "predictions.csv").exists() and not (out / "metrics.json").exists()
    rows = _rows(out / "predictions.csv")
    assert len(rows) == len(_rows(ft_phantoms)) and set(cache_run.metrics["labels"]) <= set(rows[0])


def test_predict_of_a_finetune_with_partial_labels_names_the_dataset_from_its_rows(cache_run, ft_phantoms,
                                                                                   tmp_path):
    data = _write_manifest(ft_phantoms, tmp_path / "other-site.csv",
                           labels={"Pleural_Effusion": "effusion", "Cardiomegaly": "cardiomegaly",
                                   "Atelectasis": "nodule"})
    from embedkit.app.predict import predict

    res = predict(cache_run.out, str(data), tmp_path / "pred", n_boot=20)
    assert res.matched == {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural_Effusion"}
    assert res.unmatched_head == ["pneumothorax", "nodule"] and res.unmatched_data == ["Atelectasis"]
    # The rows' dataset column names the data (as a probe's predict does), not the manifest's file name.
    assert res.metrics["provenance"]["dataset"] == "phantom"
    sub = Counter()
    for r in _rows(tmp_path / "pred" / "subgroups.csv"):
        sub[(r["axis"], r["label"])] += int(r["n"])
    assert set(sub.values()) == {res.metrics["n"]["test"]}


def test_unreadable_images_are_named_not_blamed_on_the_batch_size(ft_tiny, tmp_path):
    """An ADAPTER:ROOT whose image files are empty: the error says the images could not be read."""
    from tests.embedkit.data.fixtures import make_nih

    root = make_nih(tmp_path / "nih")  # listed images are empty files
    r = CliRunner().invoke(app, ["finetune", "--model", str(ft_tiny("dinov3-vit")), "--res", "32", "--data",
                                 f"nih:{root}", "--out", str(tmp_path / "run"), "--epochs", "1", "--n-boot", "20"])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "no readable image" in last and "batch-size" not in last, last


def test_predict_of_a_finetune_onto_data_without_a_split_scores_every_labelled_row(cache_run, ft_phantoms,
                                                                                  tmp_path):
    """As for a probe run: no split in the data means all labelled rows, not a 20% test split made up for it."""
    rows = _rows(ft_phantoms)
    keep = [k for k in rows[0] if k != "split"]
    data = tmp_path / "nosplit.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keep)
        for r in rows:
            w.writerow([str(ft_phantoms.parent / r[k]) if k == "path" else r[k] for k in keep])
    from embedkit.app.predict import predict

    res = predict(cache_run.out, str(data), tmp_path / "pred", n_boot=20)
    assert res.metrics["n"]["test"] == len(rows) and res.metrics["split"]["rows"] == "all labelled rows"
    assert not any(n.startswith("split: made") for n in res.notes)


def test_predict_of_a_finetune_onto_a_store_of_another_resolution_reads_its_images(cache_run, ft_tiny,
                                                                                   ft_phantoms, tmp_path):
    """A finetuned model embeds images itself: a 64 px store stands for its images, read at the run's 32 px,
    and the user is told its features are not used; the test rows and labels are the store's."""
    from embedkit.api import extract
    from embedkit.app.predict import predict

    store = tmp_path / "s64.zarr"
    extract(str(ft_tiny("dinov3-vit")), str(ft_phantoms), store, res=64, workers=0, device="cpu")
    res = predict(cache_run.out, str(store), tmp_path / "pred", n_boot=20)
    assert any("are not used" in n and "@64 px" in n and "32 px" in n for n in res.notes), res.notes
    assert res.metrics["provenance"]["image_size"] == 32
    assert res.metrics["n"]["test"] == cache_run.metrics["n"]["test"]
    # The run's own test rows, scored by the same model: the run's own test AUROC.
    assert res.metrics["mean_auroc"]["value"] == pytest.approx(cache_run.metrics["mean_auroc"]["value"], abs=1e-4)


def test_train_curve_marks_the_kept_epoch_on_whole_epochs_and_an_absolute_auroc_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from embedkit.app.finetune_report import write_train_log

    figures = []
    real = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real(fig)))
    log = [{"epoch": e, "train_loss": 1.0 - e / 10, "val_loss": 0.9 - e / 20, "val_mean_auroc": a, "lr": 1e-4,
            "img_per_s": 10.0, "steps": 5, "best": e == 2} for e, a in ((1, 0.632), (2, 0.625))]
    write_train_log(tmp_path, log, kept=2, select="val-loss")
    assert (tmp_path / "train_curve.png").stat().st_size > 0 and (tmp_path / "train_log.csv").exists()
    ax, ax2 = figures[-1].axes
    assert ax2.get_ylim() == (0.5, 1.0)  # 0.632 -> 0.625 is not drawn as a fall across the whole axis
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert "kept epoch 2 (val-loss)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_rerun_of_a_finished_finetune_with_new_age_bands_updates_its_subgroups(cache_run, ft_tiny):
    from embedkit.app.finetune import run_finetune

    data = json.loads((cache_run.out / "finetune.json").read_text())["settings"]["data"]
    res = run_finetune(str(ft_tiny("dinov3-vit")), data, cache_run.out, res=32, age_bands=(0, 50), **FAST)
    assert res.already_done and res.metrics["subgroups"]["age_bands"] == [0.0, 50.0]
    ages = {r["group"] for r in _rows(cache_run.out / "subgroups.csv") if r["axis"] == "age"}
    assert ages and ages <= {"0-49", "50+"}, ages
    assert json.loads((cache_run.out / "metrics.json").read_text())["subgroups"]["age_bands"] == [0.0, 50.0]
