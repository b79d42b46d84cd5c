"""Every user error of every command is one ``error:`` line on stderr, exit code 2, and leaves --out untouched.

A table of bad inputs (typer's own usage errors, bad option values, missing/garbled inputs, foreign or unwritable
--out paths, faiss refusals) is run through the real CLI in-process (``typer.testing.CliRunner`` keeps stdout and
stderr apart). The few real inputs -- a finished store, a store without split, an index, a tiny DINOv3 model,
phantom radiographs and a probe run -- are built once per module.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from probes.synthetic import make_multilabel_features

LABELS = ["Atelectasis", "Effusion", "Nodule"]
N, D = 300, 8


def _make_store(path: Path, *, split: bool = True, n: int = N, resolution: int = 32) -> Path:
    from stores import EmbeddingStore

    x, y = make_multilabel_features(n, 2 * D, len(LABELS), rank=4, signal=2.5, seed=0, missing=0.0)
    prov = {"backbone": {"name": "synthetic", "source": "test", "id": None, "path": None, "sha256": None},
            "resolution": resolution, "preprocess": {"preset": "model"},
            "views": {"cls": {"dim": D}, "mean_patch": {"dim": D}}, "dtype": "float32", "precision": "fp32",
            "dataset": {"spec": "synthetic", "n_rows": n}, "embedkit_version": "0.1.0"}
    sp = ["train"] * (n - 2 * (n // 5)) + ["val"] * (n // 5) + ["test"] * (n // 5) if split else None
    st = EmbeddingStore.create(path, ids=[f"img{i:04d}" for i in range(n)], views={"cls": D, "mean_patch": D},
                               provenance=prov, labels=y, label_names=LABELS, split=sp,
                               metadata={"patient_id": [f"p{i // 2:04d}" for i in range(n)]}, dtype="float32")
    st.write_rows(0, {"cls": x[:, :D], "mean_patch": x[:, D:]})
    st.finalize()
    st.close()
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The real inputs the bad-input table points at (built once)."""
    from embedkit.data.phantoms import make_phantoms
    from embedkit.testing import make_tiny_backbone

    root = tmp_path_factory.mktemp("inputs")
    store = _make_store(root / "s.zarr")
    r = invoke("index", store, "--features", "cls")
    assert r.exit_code == 0, r.output
    nosplit = _make_store(root / "nosplit.zarr", split=False)
    noindex = _make_store(root / "noindex.zarr")
    few = _make_store(root / "few.zarr", n=20)
    foreign = _make_store(root / "foreign.zarr")
    (root / "foreign.zarr.index" / "cls").mkdir(parents=True)
    (root / "foreign.zarr.index" / "cls" / "thesis.docx").write_text("not an index")
    garbled = shutil.copytree(store, root / "garbled.zarr")
    (garbled / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    garbled_index = shutil.copytree(store, root / "gi.zarr")
    shutil.copytree(root / "s.zarr.index", root / "gi.zarr.index")
    (root / "gi.zarr.index" / "cls" / "index.json").write_text("{not json")
    manifest = Path(make_phantoms(root / "phantoms", n=12, size=48, seed=0, formats=("png8",)))
    model = make_tiny_backbone("dinov3-vit", root)
    run = root / "runs" / "a"
    r = invoke("probe", store, "--out", run, "--n-boot", "20", "--head", "knn")
    if r.exit_code != 0:  # the probe command is another module's; its own tests report its failures
        run = None
    linear = root / "runs" / "lin"
    r = invoke("probe", store, "--out", linear, "--n-boot", "20", "--head", "sklearn", "--no-subgroups")
    if r.exit_code != 0:
        linear = None
    store64 = _make_store(root / "s64.zarr", resolution=64)
    from embedkit.study.config import EXAMPLE

    (root / "study.toml").write_text(EXAMPLE)
    (root / "study_bad.toml").write_text("[study]\nresolutions = [32, 64\n")
    (root / "study_unknown_key.toml").write_text("resolutionz = [32]\n" + EXAMPLE)
    (root / "study_value_typo.toml").write_text(EXAMPLE.replace('heads = ["linear"]', 'heads = ["linaer"]'))
    (root / "study_missing_manifest.toml").write_text(
        EXAMPLE.replace('data = "study-assets/phantoms-b/manifest.csv"', 'data = "moved-away/manifest.csv"'))
    (root / "vec_text.npy").write_text("not a numpy file")
    np.save(root / "vec_wrong.npy", np.zeros(D + 3, np.float32))
    np.save(root / "vec_2d.npy", np.zeros((2, D), np.float32))
    (root / "not_an_image.png").write_text("hello")
    (root / "bad.csv").write_text("a,b\n1,2\n")
    (root / "empty.csv").write_text("")
    return {"store": store, "nosplit": nosplit, "noindex": noindex, "few": few, "foreign": foreign, "garbled": garbled, "gi": garbled_index,
            "manifest": manifest, "model": model, "run": run, "root": root, "image": manifest.parent / "images",
            "linear": linear, "store64": store64}


# (id, command line with {placeholders}, the output path to check). Placeholders: the module inputs above, plus
# per case {new} (a path that does not exist), {thesis} (a folder holding someone's thesis.docx), {file} (a file).
EX = "extract --model {model} --res 32 --data {manifest} --workers 0"
CACHE = "cache-images --data {manifest} --res 32 --workers 0"
FT = "finetune --model {model} --res 32 --data {manifest} --workers 0"
CASES = [
    # --- typer/click usage errors
    ("root-unknown-command", "extrct --model x", None),
    ("root-unknown-option", "--bogus", None),
    ("extract-missing-options", "extract", None),
    ("extract-missing-out", "extract --model {model} --res 32 --data {manifest}", None),
    ("extract-bad-int", "extract --model {model} --res abc --data {manifest} --out {new}", "{new}"),
    ("extract-option-typo", "extract --modle {model} --res 32 --data {manifest} --out {new}", "{new}"),
    ("extract-option-no-value", EX + " --out", None),
    ("extract-extra-argument", EX + " --out {new} surplus", "{new}"),
    # --- extract: bad values, caught before anything is created
    ("extract-batch-size-0", EX + " --out {new} --batch-size 0", "{new}"),
    ("extract-unknown-model", "extract --model no-such-model --res 32 --data {manifest} --out {new}", "{new}"),
    ("extract-model-missing-dir", "extract --model {root}/nope/ --res 32 --data {manifest} --out {new}", "{new}"),
    ("extract-res-not-patch-multiple", "extract --model {model} --res 33 --data {manifest} --out {new} --workers 0",
     "{new}"),
    ("extract-res-zero", "extract --model {model} --res 0 --data {manifest} --out {new} --workers 0", "{new}"),
    ("extract-missing-data", "extract --model {model} --res 32 --data {root}/none.csv --out {new}", "{new}"),
    ("extract-unknown-adapter", "extract --model {model} --res 32 --data foo:{root} --out {new}", "{new}"),
    ("extract-adapter-missing-root", "extract --model {model} --res 32 --data nih:{root}/nih --out {new}", "{new}"),
    ("extract-csv-without-path", "extract --model {model} --res 32 --data {root}/bad.csv --out {new}", "{new}"),
    ("extract-empty-csv", "extract --model {model} --res 32 --data {root}/empty.csv --out {new}", "{new}"),
    ("extract-unknown-view", EX + " --out {new} --features cls,nope", "{new}"),
    ("extract-bad-preprocess", EX + " --out {new} --preprocess fancy", "{new}"),
    ("extract-bad-resize", EX + " --out {new} --resize crop", "{new}"),
    ("extract-bad-device", EX + " --out {new} --device tpu", "{new}"),
    ("extract-bad-precision", EX + " --out {new} --precision fp8", "{new}"),
    ("extract-bad-dtype", EX + " --out {new} --dtype int8", "{new}"),
    ("extract-bad-labels", EX + " --out {new} --labels NoSuchLabel", "{new}"),
    ("extract-bad-uncertain", EX + " --out {new} --uncertain maybe", "{new}"),
    ("extract-bad-views", EX + " --out {new} --views lateral-only", "{new}"),
    ("extract-bad-split", EX + " --out {new} --split random", "{new}"),
    ("extract-limit-0", EX + " --out {new} --limit 0", "{new}"),
    ("extract-rows-per-shard-0", EX + " --out {new} --rows-per-shard 0", "{new}"),
    ("extract-workers-negative", EX + " --out {new} --workers -2", "{new}"),
    ("extract-out-foreign-folder", EX + " --out {thesis}", "{thesis}"),
    ("extract-out-dot", EX + " --out .", "."),
    ("extract-out-file", EX + " --out {file}", "{file}"),
    ("extract-out-other-store", EX + " --out {store}", "{store}"),
    ("extract-out-unwritable", EX + " --out /sys/embedkit-test.zarr", None),
    # --- cache-images
    ("cache-missing-res", "cache-images --data {manifest} --out {new}", "{new}"),
    ("cache-res-0", "cache-images --data {manifest} --res 0 --out {new}", "{new}"),
    ("cache-unit-rows-0", CACHE + " --out {new} --unit-rows 0", "{new}"),
    ("cache-missing-data", "cache-images --data {root}/none.csv --res 32 --out {new}", "{new}"),
    ("cache-out-foreign-folder", CACHE + " --out {thesis}", "{thesis}"),
    ("cache-out-file", CACHE + " --out {file}", "{file}"),
    ("cache-out-store", CACHE + " --out {store}", "{store}"),
    # --- manifest
    ("manifest-missing-data", "manifest --out {new}", "{new}"),
    ("manifest-unknown-adapter", "manifest foo:{root} --out {new}/m.csv", "{new}"),
    ("manifest-missing-root", "manifest nih:{root}/nih --out {new}/m.csv", "{new}"),
    ("manifest-bad-labels", "manifest {manifest} --out {new}/m.csv --labels NoSuch", "{new}"),
    ("manifest-bad-views", "manifest {manifest} --out {new}/m.csv --views sideways", "{new}"),
    ("manifest-bad-split", "manifest {manifest} --out {new}/m.csv --split halves", "{new}"),
    ("manifest-out-folder", "manifest {manifest} --out {thesis}", "{thesis}"),
    ("manifest-out-unwritable", "manifest {manifest} --out /sys/embedkit-test/m.csv", None),
    # --- phantoms
    ("phantoms-n-0", "phantoms --out {new} --n 0", "{new}"),
    ("phantoms-n-text", "phantoms --out {new} --n many", "{new}"),
    ("phantoms-size-8", "phantoms --out {new} --size 8", "{new}"),
    ("phantoms-bad-format", "phantoms --out {new} --formats jpg", "{new}"),
    ("phantoms-out-foreign-folder", "phantoms --out {thesis} --n 4 --size 32", "{thesis}"),
    ("phantoms-out-file", "phantoms --out {file} --n 4 --size 32", "{file}"),
    ("phantoms-out-dotdot", "phantoms --out .. --n 4 --size 32", ".."),
    # --- info
    ("info-missing-store", "info {root}/none.zarr", None),
    ("info-not-a-store", "info {thesis}", "{thesis}"),
    ("info-a-file", "info {file}", "{file}"),
    ("info-garbled-zarr-json", "info {garbled}", "{garbled}"),
    ("info-option-typo", "info {store} --jsn", None),
    # --- probe / compare
    ("probe-missing-store", "probe {root}/none.zarr --out {new}", "{new}"),
    ("probe-missing-out", "probe {store}", None),
    ("probe-bad-head", "probe {store} --out {new} --head svm", "{new}"),
    ("probe-bad-features", "probe {store} --out {new} --features nope", "{new}"),
    ("probe-bad-labels", "probe {store} --out {new} --labels Nope", "{new}"),
    ("probe-bad-fraction", "probe {store} --out {new} --label-fraction 2", "{new}"),
    ("probe-n-boot-text", "probe {store} --out {new} --n-boot lots", "{new}"),
    ("probe-garbled-store", "probe {garbled} --out {new}", "{new}"),
    ("probe-out-foreign-folder", "probe {store} --out {thesis} --head knn --n-boot 20", "{thesis}"),
    ("probe-out-file", "probe {store} --out {file} --head knn --n-boot 20", "{file}"),
    ("compare-missing-runs", "compare {root}/none-a {root}/none-b", None),
    ("compare-not-a-run", "compare {run} {thesis}", "{thesis}"),
    ("compare-out-foreign-folder", "compare {run} {run} --out {thesis}", "{thesis}"),
    ("compare-out-file", "compare {run} {run} --out {file}", "{file}"),
    # --- index / search / search-eval
    ("index-bad-kind", "index {noindex} --kind annoy", "{noindex}.index"),
    ("index-bad-metric", "index {noindex} --metric dot", "{noindex}.index"),
    ("index-bad-budget", "index {noindex} --memory-budget lots", "{noindex}.index"),
    ("index-bad-features", "index {noindex} --features nope", "{noindex}.index"),
    ("index-too-few-rows-ivfpq", "index {few} --kind ivfpq", "{few}.index"),
    ("index-too-few-rows-ivfpq-l2", "index {few} --kind ivfpq --metric l2", "{few}.index"),
    ("index-into-foreign-folder", "index {foreign}", "{foreign}.index"),
    ("index-garbled-store", "index {garbled}", "{noindex}.index"),
    ("index-missing-store", "index {root}/none.zarr", None),
    ("search-no-query", "search {store}", None),
    ("search-two-queries", "search {store} --id img0000 --vector {root}/vec_wrong.npy", None),
    ("search-k-0", "search {store} --id img0000 -k 0", None),
    ("search-k-text", "search {store} --id img0000 -k ten", None),
    ("search-unknown-id", "search {store} --id nobody", None),
    ("search-vector-not-npy", "search {store} --vector {root}/vec_text.npy", None),
    ("search-vector-wrong-dim", "search {store} --vector {root}/vec_wrong.npy", None),
    ("search-vector-two-rows", "search {store} --vector {root}/vec_2d.npy", None),
    ("search-vector-missing", "search {store} --vector {root}/none.npy", None),
    ("search-image-missing", "search {store} --image {root}/none.png", None),
    ("search-image-garbage", "search {store} --image {root}/not_an_image.png", None),
    ("search-no-index", "search {nosplit} --id img0000", None),
    ("search-garbled-index", "search {gi} --id img0000", None),
    ("search-bad-split", "search {store} --id img0000 --split holdout", None),
    ("search-exclude-without-id", "search {store} --vector {root}/vec_wrong.npy --exclude-same-patient", None),
    ("search-eval-k-0", "search-eval {store} -k 0", None),
    ("search-eval-no-split", "search-eval {nosplit}", None),
    ("search-eval-bad-float", "search-eval {store} --dup-threshold high", None),
    ("search-eval-garbled", "search-eval {garbled}", None),
    # --- finetune (skipped where the command is not registered)
    ("finetune-missing-options", "finetune", None),
    ("finetune-epochs-0", FT + " --out {new} --epochs 0", "{new}"),
    ("finetune-lr-text", FT + " --out {new} --lr fast", "{new}"),
    ("finetune-bad-mode", FT + " --out {new} --mode sideways --epochs 1 --limit 4", "{new}"),
    ("finetune-bad-protocol", FT + " --out {new} --protocol legacy --epochs 1 --limit 4", "{new}"),
    ("finetune-out-file", FT + " --out {file} --epochs 1 --limit 4", "{file}"),
    ("finetune-out-foreign-folder", FT + " --out {thesis} --epochs 1 --limit 4", "{thesis}"),
    # --- study (a configuration error runs nothing and creates nothing)
    ("study-missing-config", "study {root}/none.toml --out {new}", "{new}"),
    ("study-config-is-folder", "study {root} --out {new}", "{new}"),
    ("study-bad-toml", "study {root}/study_bad.toml --out {new}", "{new}"),
    ("study-unknown-key", "study {root}/study_unknown_key.toml --out {new}", "{new}"),
    ("study-only-matches-nothing", "study {root}/study.toml --out {new} --only nothing/*", "{new}"),
    ("study-dry-run-bad-toml", "study {root}/study_bad.toml --out {new} --dry-run", "{new}"),
    ("study-dry-run-only-matches-nothing", "study {root}/study.toml --out {new} --dry-run --only nothing/*", "{new}"),
    ("study-value-typo", "study {root}/study_value_typo.toml --out {new}", "{new}"),
    ("study-missing-manifest", "study {root}/study_missing_manifest.toml --out {new}", "{new}"),
    ("study-dry-run-missing-manifest", "study {root}/study_missing_manifest.toml --out {new} --dry-run", "{new}"),
    ("study-missing-out", "study {root}/study.toml", None),
    ("study-out-foreign-folder", "study {root}/study.toml --out {thesis}", "{thesis}"),
    ("study-out-file", "study {root}/study.toml --out {file}", "{file}"),
    # --- predict
    ("predict-missing-run", "predict {root}/none --data {store} --out {new}", "{new}"),
    ("predict-not-a-run", "predict {thesis} --data {store} --out {new}", "{new}"),
    ("predict-knn-run-has-no-head", "predict {run} --data {store} --out {new}", "{new}"),
    ("predict-mismatched-store", "predict {linear} --data {store64} --out {new}", "{new}"),
    ("predict-missing-data", "predict {linear} --data {root}/none.zarr --out {new}", "{new}"),
    ("predict-unknown-adapter", "predict {linear} --data foo:{root} --out {new}", "{new}"),
    ("predict-bad-rows", "predict {linear} --data {store} --out {new} --rows some", "{new}"),
    ("predict-bad-age-bands", "predict {linear} --data {store} --out {new} --age-bands 60,40", "{new}"),
    ("predict-rows-test-without-split", "predict {linear} --data {nosplit} --out {new} --rows test", "{new}"),
    ("predict-out-foreign-folder", "predict {linear} --data {store} --out {thesis}", "{thesis}"),
    ("predict-out-file", "predict {linear} --data {store} --out {file}", "{file}"),
    ("predict-out-is-the-run", "predict {linear} --data {store} --out {linear}", "{linear}"),
    # --- models / demo
    ("models-unknown-option", "models --all", None),
    ("models-extra-argument", "models dinov3", None),
    ("demo-res-not-multiple", "demo --out {new} --res 40", "{new}"),
    ("demo-n-too-small", "demo --out {new} --n 5", "{new}"),
    ("demo-out-file", "demo --out {file}", "{file}"),
    ("demo-out-foreign-folder", "demo --out {thesis}", "{thesis}"),
]


def _snapshot(path: Path):
    """Everything under ``path`` (names, sizes, content hashes); None when it does not exist."""
    if not os.path.lexists(path):
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    out = {}
    for p in sorted(path.rglob("*")):
        if p.name == "writer.lock":  # a store's own lock, taken before it refuses (not user data)
            continue
        out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _fill(text: str, env: dict) -> str:
    return text.format(**{k: str(v) for k, v in env.items()})


@pytest.mark.parametrize("case_id,line,out", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(inputs, tmp_path, monkeypatch, case_id, line, out):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.docx").write_bytes(b"years of work")
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    monkeypatch.chdir(work)  # '.' and '..' refer to folders of this test
    if line.startswith("finetune") and "finetune" not in {c.name for c in app.registered_commands}:
        pytest.skip("no 'finetune' command in this build")
    if ("{run}" in line and inputs["run"] is None) or ("{linear}" in line and inputs["linear"] is None):
        pytest.skip("'embedkit probe' could not make the run these cases use")
    env = dict(inputs, new=tmp_path / "new.zarr", thesis=thesis, file=afile)
    out_path = Path(_fill(out, env)) if out else None
    before = _snapshot(out_path) if out_path else None
    before_cwd = _snapshot(tmp_path)

    r = invoke(*shlex.split(_fill(line, env)))

    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), \
        f"traceback: {r.exception!r}\n{r.output}"
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    if out_path is not None:
        assert _snapshot(out_path) == before, f"{out_path} was changed"
    if out in (".", ".."):
        assert _snapshot(tmp_path) == before_cwd


def test_the_table_covers_every_command():
    commands = {c[1].split()[0] for c in CASES}
    registered = {c.name for c in app.registered_commands}
    assert registered <= commands | {"finetune"}, registered - commands
    assert len(CASES) >= 60


def test_debug_env_shows_the_traceback(tmp_path):
    env = dict(os.environ, EMBEDKIT_DEBUG="1")
    proc = subprocess.run([sys.executable, "-m", "embedkit", "info", str(tmp_path / "none.zarr")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_error_is_one_line_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "embedkit", "extract", "--modle", "x"], capture_output=True,
                          text=True)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--model" in lines[0] and "embedkit extract --help" in lines[0]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(inputs, tmp_path):
    """RLIMIT_FSIZE makes every write past 300 bytes fail (EFBIG), as a full disk (ENOSPC) would."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    out = tmp_path / "full" / "m.csv"
    proc = subprocess.run([sys.executable, "-m", "embedkit", "manifest", str(inputs["manifest"]), "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=limit)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "space" in lines[0] and not out.exists() and list(out.parent.iterdir()) == []
