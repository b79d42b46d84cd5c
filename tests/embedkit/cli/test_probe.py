"""`embedkit probe` and `embedkit compare` on small real stores (stores.EmbeddingStore.create)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from probes.synthetic import make_multilabel_features

LABELS = ["Atelectasis", "Effusion", "Nodule"]
N = 600
SPLIT = np.array(["train"] * 360 + ["val"] * 120 + ["test"] * 120)


def _provenance(name: str, resolution: int, dim: int) -> dict:
    # What 'embedkit extract' writes into provenance['dataset'] for an adapter source.
    return {"backbone": {"name": name, "source": "transformers", "id": f"facebook/{name}", "sha256": "0" * 64},
            "resolution": resolution, "preprocess": {"preset": "model"},
            "views": {"cls": {"dim": dim}, "mean_patch": {"dim": dim}}, "dtype": "float32",
            "precision": "fp32", "dataset": {"data": "nih:/data/nih", "source": "/data/nih", "adapter": "nih",
                                             "n_rows": N}, "embedkit_version": "0.1.0"}


def _make_store(path, *, name="dinov3-vitb16", resolution=512, noise=0.0, split=SPLIT, seed=0, patients=True,
                studies=None, y=None, filled=N, dataset_column=None, demographics=False):
    from stores import EmbeddingStore

    d = 16
    x, y0 = make_multilabel_features(N, 2 * d, len(LABELS), rank=6, signal=2.5, seed=0, missing=0.02)
    y = y0 if y is None else y
    x = x + noise * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    ids = [f"img{i:04d}" for i in range(N)]
    meta = {}
    if patients:
        meta["patient_id"] = [f"p{i // 2:04d}" for i in range(N)]
    if studies is not None:
        meta["study_id"] = list(studies)
    if dataset_column is not None:
        meta["dataset"] = [dataset_column] * N
    if demographics:  # per patient: sex (with some unknown), age (one missing), view per image
        meta["sex"] = [("M", "F", "")[(i // 2) % 3] for i in range(N)]
        meta["age"] = [float("nan") if i // 2 == 7 else float(18 + (i // 2) % 75) for i in range(N)]
        meta["view"] = [("PA", "AP")[i % 2] for i in range(N)]
    st = EmbeddingStore.create(path, ids=ids, views={"cls": d, "mean_patch": d},
                               provenance=_provenance(name, resolution, d), labels=y, label_names=LABELS,
                               split=None if split is None else list(split), metadata=meta or None,
                               dtype="float32", rows_per_shard=100, rows_per_chunk=100)
    st.write_rows(0, {"cls": x[:filled, :d], "mean_patch": x[:filled, d:]})
    if filled == N:
        st.finalize()
    st.close()
    return path


def _flipped_labels():
    _, y = make_multilabel_features(N, 32, len(LABELS), rank=6, signal=2.5, seed=0, missing=0.02)
    y = y.copy()
    y[505, 1] = 0.0 if y[505, 1] == 1.0 else 1.0  # a test row (img0505)
    return y


@pytest.fixture(scope="module")
def stores_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {"a": _make_store(root / "a.zarr"),
            "b": _make_store(root / "b.zarr", name="dinov2-vitb14", resolution=224, noise=2.0, seed=1),
            "relabel": _make_store(root / "relabel.zarr", y=_flipped_labels()),
            "nosplit": _make_store(root / "c.zarr", split=None)}


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(r) -> str:
    """The one 'error:' line of a refused command (progress lines may come before it)."""
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and r.output.rstrip().endswith(errors[0]), r.output
    return errors[0]


def test_probe_writes_all_files_with_the_right_schema(tmp_path, stores_dir):
    out = tmp_path / "runs" / "a-sk"
    r = _invoke("probe", stores_dir["a"], "--out", out, "--head", "sklearn", "--features", "cls+mean_patch",
                "--n-boot", 50)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_label.csv", "predictions.csv", "head.safetensors",
                                               "roc.png", "bootstrap.npz", "test_labels.csv"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["head"] == "sklearn" and m["features"] == "cls+mean_patch" and m["labels"] == LABELS
    assert m["store"]["fingerprint"] and m["provenance"]["initialization"] == "dinov3"
    assert m["provenance"]["backbone"] == "vitb" and m["provenance"]["image_size"] == 512
    # Run identity from the store's provenance (it used to say 'unknown' for what extract writes).
    assert m["provenance"]["dataset"] == "nih" and m["provenance"]["adapter"] == "nih"
    assert m["n"] == {"train": 360, "val": 120, "test": 120} and m["split"]["source"] == "store"
    assert m["split"]["unit"] == "patient" and m["split"]["leakage"]["checked"] == ["patient_id"]
    assert m["mean_auroc"]["value"] > 0.7 and m["test"]["bootstrap"]["n_boot"] == 50
    # Patients are resampled by default when the store has patient ids.
    assert m["bootstrap"]["unit"] == "patients" and m["bootstrap"]["n_groups"] == 60
    assert set(m["thresholds"]) == set(LABELS) and "fit_s" in m["timings"]
    assert "point estimate" in m["columns"]["per_label.csv"]["AUROC_point"]
    rows = list(csv.DictReader(open(out / "per_label.csv")))
    assert list(rows[0]) == ["dataset", "initialization", "backbone", "image_size", "label", "AUROC_mean",
                             "AUROC_ci_low", "AUROC_ci_high", "mAP_mean", "mAP_ci_low", "mAP_ci_high",
                             "AUROC_point", "mAP_point"]
    assert rows[-1]["label"] == "macro_avg" and rows[0]["dataset"] == "nih"
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(preds) == 600 and list(preds[0]) == ["id", "split", *LABELS]
    assert (tmp_path / "runs" / ".embedkit-bootstrap").is_dir()
    assert "mean" in r.output and "Atelectasis" in r.output
    assert "split: store; unit patient" in r.output and "resamples of test patients" in r.output
    again = _invoke("probe", stores_dir["a"], "--out", out, "--head", "sklearn")
    assert "already holds a probe run" in _one_error_line(again)


def test_probe_json_label_subset_and_made_split(tmp_path, stores_dir):
    r = _invoke("probe", stores_dir["nosplit"], "--out", tmp_path / "r", "--head", "knn", "--labels", "Effusion",
                "--n-boot", 20, "--bootstrap", "patients", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["labels"] == ["Effusion"] and doc["split"]["source"].startswith("made: patient_split over patient")
    assert doc["split"]["unit"] == "patient" and doc["split"]["leakage"]["ok"]
    assert doc["bootstrap"]["grouping"] == "patients" and doc["chosen"]["k"] in (10, 20, 100, 200)


def test_store_without_patient_ids_is_not_split_unless_the_unit_is_accepted(tmp_path):
    store = _make_store(tmp_path / "np.zarr", split=None, patients=False)
    refused = _invoke("probe", store, "--out", tmp_path / "r", "--head", "knn", "--n-boot", 20)
    line = _one_error_line(refused)
    assert "no patient id for 600 of 600 rows" in line and "--split-unit image" in line
    assert not (tmp_path / "r").exists()
    ok = _invoke("probe", store, "--out", tmp_path / "r", "--head", "knn", "--n-boot", 20, "--split-unit", "image")
    assert ok.exit_code == 0, ok.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["split"]["unit"] == "image" and m["split"]["source"].startswith("made: patient_split over image units")
    assert m["split"]["leakage"]["checked"] == [] and m["bootstrap"]["unit"] == "images"
    assert "unit image" in ok.output and "resamples of test images" in ok.output
    bad = _invoke("probe", store, "--out", tmp_path / "r2", "--bootstrap", "patients", "--split-unit", "image")
    assert "patient_id" in _one_error_line(bad)


def test_val_is_carved_by_units_that_join_patients_sharing_a_study(tmp_path):
    # Two patients share one study (the real PadChest quirk): they move together, so no study leaks into val.
    studies = [f"s{i // 2:04d}" for i in range(N)]
    studies[3] = "s0000"  # patient p0001 (rows 2, 3) shares study s0000 with patient p0000
    split = np.where(SPLIT == "val", "train", SPLIT)
    store = _make_store(tmp_path / "noval.zarr", split=split, studies=studies)
    r = _invoke("probe", store, "--out", tmp_path / "r", "--head", "knn", "--n-boot", 20, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["split"]["source"].startswith("store; val carved from 10% of the training patient units")
    assert m["split"]["leakage"]["ok"] and m["split"]["leakage"]["checked"] == ["patient_id", "study_id"]
    assert m["n"]["val"] > 0 and m["n"]["train"] + m["n"]["val"] == 480
    preds = list(csv.DictReader(open(tmp_path / "r" / "predictions.csv")))
    assert len({p["split"] for p in preds[:4]}) == 1  # rows 0-3: patients p0000 and p0001, joined by s0000


def test_a_store_split_that_leaks_a_study_is_refused_unless_allowed(tmp_path):
    studies = [f"s{i // 2:04d}" for i in range(N)]
    studies[600 - 1] = "s0000"  # a test row shares a study with training rows
    store = _make_store(tmp_path / "leak.zarr", studies=studies)
    line = _one_error_line(_invoke("probe", store, "--out", tmp_path / "r", "--head", "knn"))
    assert "1 study(s)" in line and "more than one split" in line and "--allow-leak" in line
    ok = _invoke("probe", store, "--out", tmp_path / "r", "--head", "knn", "--n-boot", 20, "--allow-leak", "--json")
    assert ok.exit_code == 0, ok.output
    m = json.loads(ok.stdout)
    assert m["split"]["allow_leak"] and m["split"]["leakage"]["leaks"]["study_id"] == 1


def test_a_store_still_being_filled_is_refused_unless_partial_is_allowed(tmp_path):
    store = _make_store(tmp_path / "part.zarr", filled=500)
    line = _one_error_line(_invoke("probe", store, "--out", tmp_path / "r", "--head", "knn"))
    assert "100 of 600 rows not extracted yet" in line and "--allow-partial" in line
    ok = _invoke("probe", store, "--out", tmp_path / "r", "--head", "knn", "--n-boot", 20, "--allow-partial")
    assert ok.exit_code == 0, ok.output
    assert "100 of 600 rows are not extracted yet; left out" in ok.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["split"]["n_not_extracted"] == 100 and m["split"]["allow_partial"] and m["n"]["test"] == 20


def test_probe_fractions_and_seeds_make_sub_runs_and_resume(tmp_path, stores_dir):
    out = tmp_path / "lf"
    args = ("probe", stores_dir["a"], "--out", out, "--head", "linear", "--label-fraction", "0.5,1", "--seeds", 2,
            "--n-boot", 20, "--device", "cpu")
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    assert [x.split(": probe")[0] for x in r.output.splitlines() if x.startswith("run ")] == [
        "run 1/4: fraction 0.5 seed 0", "run 2/4: fraction 0.5 seed 1", "run 3/4: fraction 1 seed 0",
        "run 4/4: fraction 1 seed 1"]
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["frac0.5-seed0", "frac0.5-seed1", "frac1-seed0", "frac1-seed1"]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["label_fraction"] for row in summary["rows"]] == [0.5, 1.0]
    half = json.loads((out / "frac0.5-seed0" / "metrics.json").read_text())
    assert half["n"]["train"] == 180 and half["chosen"]["n_heads"] >= 40
    again = _invoke(*args)
    assert again.exit_code == 0 and again.output.count("skipping") == 4


def test_compare_with_reference_and_refusal_of_other_test_sets(tmp_path, stores_dir):
    runs = tmp_path / "runs"
    for key in ("a", "b", "relabel"):
        r = _invoke("probe", stores_dir[key], "--out", runs / key, "--head", "sklearn", "--n-boot", 100)
        assert r.exit_code == 0, r.output
    cmp_dir = tmp_path / "cmp"
    r = _invoke("compare", runs / "b", "--reference", runs / "a", "--out", cmp_dir, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["reference"] == "a" and len(res["runs"]) == 2
    b = [row for row in res["runs"] if row["run"] == "b"][0]
    assert b["initialization"] == "dinov2" and b["image_size"] == 224 and b["features"] == "cls"
    assert b["delta"] < 0 and b["p_run_le_ref"] > 0.9
    assert {p.name for p in cmp_dir.iterdir()} == {"compare.json", "compare.csv", "per_label_deltas.csv",
                                                   "forest.png"}
    table = _invoke("compare", runs / "a", runs / "b")
    assert table.exit_code == 0 and "reference" in table.output and "features" in table.output
    # Same test ids, one test label differs: refused, naming the id and label.
    line = _one_error_line(_invoke("compare", runs / "a", runs / "relabel"))
    assert "different test labels" in line and "label 'Effusion' of test id 'img0505'" in line
    r = _invoke("probe", stores_dir["nosplit"], "--out", runs / "c", "--head", "sklearn", "--n-boot", 100)
    assert r.exit_code == 0, r.output
    line = _one_error_line(_invoke("compare", runs / "a", runs / "c"))
    assert "different test sets" in line and "test row" in line


def test_compare_reference_by_resolved_path_and_repeated_leaf_names(tmp_path, stores_dir, monkeypatch):
    for parent, key in (("runA", "a"), ("runB", "b")):
        r = _invoke("probe", stores_dir[key], "--out", tmp_path / parent / "frac1-seed0", "--head", "sklearn",
                    "--n-boot", 50, "--boot-dir", tmp_path / "plans")
        assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    # The reference spelled another way is the same run: it must not be compared with itself.
    r = _invoke("compare", "runA/frac1-seed0", "runB/frac1-seed0", "--reference", "./runB/../runA/frac1-seed0/",
                "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [row["run"] for row in res["runs"]] == ["runA/frac1-seed0", "runB/frac1-seed0"]
    assert [row["is_reference"] for row in res["runs"]] == [True, False] and res["reference"] == "runA/frac1-seed0"
    assert res["runs"][1]["delta"] < 0


def test_probe_rejects_bad_options(tmp_path, stores_dir):
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--features", "nope")
    assert "features" in _one_error_line(r)
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--label-fraction", "0")
    assert "label-fraction" in _one_error_line(r)
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--head", "svm")
    assert "head" in _one_error_line(r)
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--bootstrap", "studies")
    assert "bootstrap" in _one_error_line(r)
    r = _invoke("probe", stores_dir["a"], "--out", tmp_path / "x", "--split-unit", "ward")
    assert "split-unit" in _one_error_line(r)


def _hand_holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, p[i] * (len(p) - rank)))
        out[i] = running
    return out


def test_compare_adjusts_p_values_in_every_table_and_file(tmp_path, stores_dir):
    runs = tmp_path / "runs"
    stores = {"a": stores_dir["a"], "b": stores_dir["b"],
              "c": _make_store(tmp_path / "c.zarr", name="dinov3-vits16", noise=8.0, seed=2)}
    for key, path in stores.items():
        r = _invoke("probe", path, "--out", runs / key, "--head", "sklearn", "--n-boot", 100, "--no-subgroups")
        assert r.exit_code == 0, r.output
        assert not (runs / key / "subgroups.csv").exists()
    cmp_dir = tmp_path / "cmp"
    r = _invoke("compare", runs / "a", runs / "b", runs / "c", "--out", cmp_dir, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["adjust"] == "holm" and res == json.loads((cmp_dir / "compare.json").read_text())
    others = res["runs"][1:]
    assert [row["p_adjusted"] for row in others] == pytest.approx(_hand_holm([row["p_two_sided"] for row in others]))
    labels = res["per_label"]
    assert len(labels) == 6
    assert [row["p_adjusted"] for row in labels] == pytest.approx(_hand_holm([row["p_two_sided"] for row in labels]))
    csv_rows = list(csv.DictReader(open(cmp_dir / "compare.csv")))
    assert {"p_two_sided", "p_adjusted", "adjust", "n_boot"} <= set(csv_rows[0])
    assert [float(row["p_adjusted"]) for row in csv_rows[1:]] == pytest.approx([row["p_adjusted"] for row in others])
    assert csv_rows[0]["p_adjusted"] == "" and csv_rows[1]["adjust"] == "holm" and csv_rows[1]["n_boot"] == "100"
    deltas = list(csv.DictReader(open(cmp_dir / "per_label_deltas.csv")))
    assert [float(row["p_adjusted"]) for row in deltas] == pytest.approx([row["p_adjusted"] for row in labels])
    # The printed table shows both; a p of 0 from 100 resamples (run c, near chance) is '<0.01', never '0.000'.
    assert others[1]["p_two_sided"] == 0.0 and others[1]["n_boot"] == 100
    table = _invoke("compare", runs / "a", runs / "b", runs / "c")
    assert table.exit_code == 0 and "p adj" in table.output and "(holm)" in table.output, table.output
    assert "<0.01" in table.output and "0.000" not in table.output, table.output
    plain = json.loads(_invoke("compare", runs / "a", runs / "b", runs / "c", "--adjust", "none", "--json").stdout)
    assert plain["adjust"] == "none"
    assert all(row["p_adjusted"] == row["p_two_sided"] for row in plain["runs"][1:] + plain["per_label"])
    bh = json.loads(_invoke("compare", runs / "a", runs / "b", runs / "c", "--adjust", "bh", "--json").stdout)
    assert all(b["p_adjusted"] <= h["p_adjusted"] + 1e-12 for b, h in zip(bh["per_label"], labels))
    assert "adjust" in _one_error_line(_invoke("compare", runs / "a", runs / "b", "--adjust", "bonferroni"))


def test_probe_writes_subgroups_whose_counts_sum_to_the_test_set(tmp_path):
    from sklearn.metrics import roc_auc_score

    store = _make_store(tmp_path / "demo.zarr", demographics=True, dataset_column="nih")
    out = tmp_path / "run"
    r = _invoke("probe", store, "--out", out, "--head", "sklearn", "--n-boot", 50, "--age-bands", "0,40,60,80")
    assert r.exit_code == 0, r.output
    assert "Subgroups" in r.stdout and "subgroups.csv" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    sub = m["subgroups"]
    assert set(sub["axes"]) == {"sex", "age", "view", "dataset"} and sub["age_bands"] == [0, 40, 60, 80]
    for axis, groups in sub["axes"].items():
        assert sum(g["n"] for g in groups.values()) == m["n"]["test"] == 120, axis
    assert set(sub["axes"]["age"]) == {"0-39", "40-59", "60-79", "80+"}
    assert set(sub["axes"]["sex"]) == {"F", "M", "unknown"}
    rows = list(csv.DictReader(open(out / "subgroups.csv")))
    assert {(row["axis"], row["group"]) for row in rows if row["label"] == "macro_avg"} == \
        {(a, g) for a, gs in sub["axes"].items() for g in gs}
    # One subgroup AUROC against scikit-learn on the same rows (test rows of the PA view, label Effusion).
    test = list(csv.DictReader(open(out / "test_labels.csv")))
    preds = {row["id"]: row for row in csv.DictReader(open(out / "predictions.csv"))}
    pa = [row for row in test if int(row["id"][3:]) % 2 == 0 and row["Effusion"] != ""]
    want = roc_auc_score([int(row["Effusion"]) for row in pa], [float(preds[row["id"]]["Effusion"]) for row in pa])
    got = sub["axes"]["view"]["PA"]["per_label"]["Effusion"]["auroc"]
    assert got == pytest.approx(want, abs=1e-9)
    ci = sub["axes"]["view"]["PA"]["per_label"]["Effusion"]
    assert ci["auroc_ci_low"] <= got <= ci["auroc_ci_high"]
    line = _one_error_line(_invoke("probe", store, "--out", tmp_path / "bad", "--age-bands", "60,40"))
    assert "age-bands" in line and not (tmp_path / "bad").exists()
