"""``embedkit finetune`` end to end on phantoms with tiny random backbones loaded through the normal path."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.embedkit.finetune.conftest import FAST, KINDS, ROOT, run_py

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


#: The DINOv3 ViT run shared by the per-backbone, SIGKILL-resume and DDP tests (the CLI's ``_cmd`` options).
VIT_KW = dict(res=32, epochs=2, batch_size=4, lr=1e-3, n_boot=20, checkpoint_every=1)
#: The timm ViT run shared by the per-backbone, permuted-labels and --out tests.
TIMM_KW = dict(res=32, epochs=2, batch_size=8, lr=1e-3, n_boot=20)


@pytest.fixture(scope="module")
def vit_ref(ft_tiny, ft_phantoms, tmp_path_factory):
    """One uninterrupted single-process run (torch on one thread, like the subprocesses it is compared with)."""
    from embedkit.app.finetune import run_finetune

    out = tmp_path_factory.mktemp("vit") / "ref"
    return run_finetune(str(ft_tiny("dinov3-vit")), str(ft_phantoms), out, **VIT_KW)


@pytest.fixture(scope="module")
def timm_run(ft_tiny, ft_phantoms, tmp_path_factory):
    from embedkit.app.finetune import run_finetune

    out = tmp_path_factory.mktemp("timm") / "run"
    return run_finetune(str(ft_tiny("timm-vit")), str(ft_phantoms), out, **TIMM_KW)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_backbone_finetunes(kind, ft_tiny, ft_phantoms, tmp_path, request):
    from safetensors.torch import load_file

    from embedkit.app.finetune import run_finetune

    if kind in ("dinov3-vit", "timm-vit"):
        res = request.getfixturevalue("vit_ref" if kind == "dinov3-vit" else "timm_run")
    else:
        res = run_finetune(str(ft_tiny(kind)), str(ft_phantoms), tmp_path / "run", res=KINDS[kind], **FAST)
    out = res.out
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema"] == "embedkit.finetune/1" and doc["kind"] == "finetune"
    assert doc["features"] == {"dinov3-convnext": "pooled", "timm-vit": "cls"}.get(kind, "mean_tokens")
    for f in ("per_label.csv", "predictions.csv", "roc.png", "bootstrap.npz", "model.safetensors", "train_log.csv",
              "train_curve.png", "train.log"):
        assert (out / f).stat().st_size > 0, f
    assert "head.weight" in load_file(out / "model.safetensors")
    assert all(np.isfinite(h["train_loss"]) for h in doc["history"])
    assert doc["chosen"]["epoch"] == 1 + int(np.argmin([h["val_loss"] for h in doc["history"]]))
    assert res.metrics["pairing"]["test_ids_sha256"] == doc["pairing"]["test_ids_sha256"]


def test_beats_chance_on_cardiomegaly(ft_tiny, tmp_path):
    """Seed 0, timm tiny ViT at 32 px, modern protocol, 6 epochs on 120 phantoms: cardiomegaly AUROC well above 0.5."""
    from embedkit.app.finetune import run_finetune
    from embedkit.data.phantoms import make_phantoms

    m = make_phantoms(tmp_path / "ph", n=120, size=64, seed=0, formats=("png8",), split_fractions=(0.5, 0.2, 0.3))
    doc = run_finetune(str(ft_tiny("timm-vit")), str(m), tmp_path / "run", res=32, protocol="modern", epochs=6,
                       batch_size=8, lr=1e-3, n_boot=200, seed=0).metrics
    a = doc["test"]["per_label"]["cardiomegaly"]["auroc"]
    print("cardiomegaly AUROC", a)
    assert a["value"] >= 0.75 and a["ci_low"] > 0.5


def _cmd(model, data, out, *extra):
    return ["-m", "embedkit", "finetune", "--model", str(model), "--res", "32", "--data", str(data), "--out",
            str(out), "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--n-boot", "20",
            "--checkpoint-every", "1", *extra]


def test_sigkill_mid_epoch_then_resume_is_bitwise(ft_tiny, ft_phantoms, tmp_path, vit_ref):
    import torch

    from embedkit.app.finetune import run_finetune
    from probes.finetune import load_checkpoint

    model = ft_tiny("dinov3-vit")
    kw = VIT_KW
    ref = vit_ref.metrics
    out = tmp_path / "killed"
    # The driver slows each step down so that the kill lands mid-epoch; it uses the public API only.
    driver = textwrap.dedent(f"""
        import time
        from embedkit.app.finetune import run_finetune
        run_finetune({str(model)!r}, {str(ft_phantoms)!r}, {str(out)!r}, progress=lambda ev: time.sleep(0.3),
                     **{kw!r})
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 200
    state = None
    while time.time() < deadline and proc.poll() is None:
        try:
            state = load_checkpoint(out / "checkpoint.pt")
        except Exception:  # noqa: BLE001 - mid-replace on some filesystems
            state = None
        if state is not None and state["epoch"] == 1 and state["micro"] >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert state is not None and not (out / "metrics.json").exists()  # really interrupted, mid-epoch 2
    got = run_finetune(str(model), str(ft_phantoms), out, **kw)
    assert got.resumed and got.metrics["finetune"]["resumed_at"]["epoch"] == 1
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(vit_ref.out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise weights
    assert got.metrics["test"] == ref["test"] and got.metrics["chosen"] == ref["chosen"]


def test_permuting_test_labels_changes_no_training_decision(ft_tiny, ft_phantoms, tmp_path, timm_run):
    """Also runs the permuted copy with a spawned loader worker (``--workers 1``): the training it does must be
    the in-process loader's, decision for decision."""
    import pandas as pd

    from embedkit.app.finetune import run_finetune

    df = pd.read_csv(ft_phantoms)
    test = df["split"] == "test"
    perm = df.copy()
    perm.loc[test, "cardiomegaly"] = np.random.default_rng(1).permutation(df.loc[test, "cardiomegaly"].to_numpy())
    perm.loc[test, "effusion"] = 1 - df.loc[test, "effusion"]
    permuted = tmp_path / "manifest_permuted.csv"
    perm.assign(path=[str(ft_phantoms.parent / p) if not os.path.isabs(p) else p for p in df["path"]]).to_csv(
        permuted, index=False)
    a = timm_run.metrics
    b = run_finetune(str(ft_tiny("timm-vit")), str(permuted), tmp_path / "b", workers=1, **TIMM_KW).metrics
    assert b["finetune"]["workers"] == 1
    assert a["chosen"] == b["chosen"] and a["thresholds"] == b["thresholds"]
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert a["test"]["per_label"]["effusion"]["auroc"]["value"] != b["test"]["per_label"]["effusion"]["auroc"]["value"]


def test_probe_and_finetune_on_one_store_compare_paired(ft_tiny, ft_phantoms, tmp_path):
    from typer.testing import CliRunner

    from embedkit.cli.main import app
    from probes.errors import PairingError
    from probes.report import compare_runs, load_run

    model = ft_tiny("timm-vit")
    cli = CliRunner()
    store = tmp_path / "s.zarr"
    r = cli.invoke(app, ["extract", "--model", str(model), "--res", "32", "--data", str(ft_phantoms), "--out",
                         str(store), "--dtype", "float32", "--workers", "0"])
    assert r.exit_code == 0, r.output
    runs = tmp_path / "runs"
    r = cli.invoke(app, ["probe", str(store), "--out", str(runs / "probe"), "--features", "cls", "--n-boot", "20"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["finetune", "--model", str(model), "--res", "32", "--data", str(store), "--out",
                         str(runs / "ft"), "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--n-boot", "20",
                         "--json"])
    assert r.exit_code == 0, r.output
    probe, ft = load_run(runs / "probe"), load_run(runs / "ft")
    # One split rule (the probe's code): the same rows in val and test, the same bootstrap unit and plan.
    assert ft.metrics["split"]["source"] == probe.metrics["split"]["source"]
    assert ft.metrics["split"]["unit"] == probe.metrics["split"]["unit"] == "patient"
    assert ft.metrics["n"]["val"] == probe.metrics["n"]["val"] and ft.metrics["n"]["test"] == probe.metrics["n"]["test"]
    assert ft.metrics["bootstrap"]["unit"] == probe.metrics["bootstrap"]["unit"] == "patients"
    assert ft.metrics["pairing"]["boot_matrix_sha256"] == probe.metrics["pairing"]["boot_matrix_sha256"]
    result = compare_runs([probe, ft])
    row = result["runs"][1]
    assert 0 <= row["p_two_sided"] <= 1 and np.isfinite(row["delta"])
    r = cli.invoke(app, ["compare", str(runs / "probe"), str(runs / "ft"), "--json"])
    assert r.exit_code == 0, r.output
    # A finetune run on another test set (the first 30 store rows) is refused.
    r = cli.invoke(app, ["finetune", "--model", str(model), "--res", "32", "--data", str(store), "--out",
                         str(runs / "ft30"), "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--n-boot", "20",
                         "--limit", "30", "--json"])
    assert r.exit_code == 0, r.output
    with pytest.raises(PairingError, match="different test sets"):
        compare_runs([probe, load_run(runs / "ft30")])


def test_out_is_guarded(ft_tiny, ft_phantoms, tmp_path, timm_run):
    from typer.testing import CliRunner

    from embedkit.cli.main import app

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args = ["finetune", "--model", str(ft_tiny("timm-vit")), "--res", "32", "--data", str(ft_phantoms),
            "--epochs", "2", "--batch-size", "8", "--n-boot", "20"]
    r = CliRunner().invoke(app, [*args, "--out", str(foreign)])
    assert r.exit_code == 2 and "not a finetune run" in r.output
    assert (foreign / "notes.txt").read_text() == "mine"
    run = timm_run.out
    r = CliRunner().invoke(app, [*args, "--out", str(run), "--lr", "0.5"])
    assert r.exit_code == 2 and "lr=" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(run), "--lr", "1e-3"])  # the same command: already finished
    assert r.exit_code == 0 and "already finished" in r.output, r.output


@pytest.mark.slow
def test_torchrun_two_ranks_matches_one_process(ft_tiny, ft_phantoms, tmp_path, vit_ref):
    """2 gloo ranks vs 1 process, same global batch: weights within 1e-5, same kept epoch, AUROC within 1e-6."""
    from safetensors.torch import load_file

    model = ft_tiny("dinov3-vit")
    ref = vit_ref.metrics
    proc = run_py(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   *_cmd(model, ft_phantoms, tmp_path / "two", "--json")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["finetune"]["world_size"] == 2 and two["chosen"]["epoch"] == ref["chosen"]["epoch"]
    a, b = load_file(vit_ref.out / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert abs(two["mean_auroc"]["value"] - ref["mean_auroc"]["value"]) <= 1e-6


@pytest.mark.parametrize("kind,targets", [("dinov3-vit", ["q_proj", "v_proj"]), ("timm-vit", ["qkv"]),
                                          ("dinov3-convnext", ["pointwise_conv1", "pointwise_conv2"])])
def test_lora_targets_per_family(kind, targets, ft_tiny):
    pytest.importorskip("peft")
    from embedkit.backbones import load_backbone
    from embedkit.finetune import build_model

    net = build_model(load_backbone(str(ft_tiny(kind)), device="cpu", precision="fp32"), 3, mode="lora")
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n} == set(targets)
    lora_a = next(m for n, m in net.named_modules() if n.endswith("lora_A"))
    assert next(iter(lora_a.values())).out_features == 16  # r = 16, as the reference


def test_lora_trains_adapters_and_head_only(ft_tiny, ft_phantoms, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from embedkit.app.finetune import run_finetune
    from embedkit.backbones import load_backbone

    model = ft_tiny("dinov3-vit")
    doc = run_finetune(str(model), str(ft_phantoms), tmp_path / "lora", mode="lora", **VIT_KW).metrics
    assert doc["finetune"]["lora"] == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none"}
    assert doc["finetune"]["optimizer"] == "adamw" and doc["head"] == "finetune-lora"
    got = load_file(tmp_path / "lora" / "model.safetensors")
    before = load_backbone(str(model), device="cpu", precision="fp32").module.state_dict()
    frozen = {k: v for k, v in got.items() if ".lora_" not in k and not k.startswith("head.")}
    assert len(frozen) == len(before)
    for k, v in frozen.items():
        assert torch_equal(v, before[k.removeprefix("backbone.").replace(".base_layer", "")]), k
    lora_b = [v for k, v in got.items() if ".lora_B." in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at 0: the adapters trained


def test_lora_without_peft_is_one_line(ft_tiny, ft_phantoms, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from embedkit.cli.main import app

    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    r = CliRunner().invoke(app, ["finetune", "--model", str(ft_tiny("timm-vit")), "--res", "32", "--data",
                                 str(ft_phantoms), "--out", str(tmp_path / "r"), "--mode", "lora", "--epochs", "1"])
    assert r.exit_code == 2 and "pip install 'embedkit[lora]'" in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_modern_layer_decay_values(ft_tiny):
    """lr scale 0.75 ** (L + 1 - layer id): embeddings 0.75^3, block 0 0.75^2, block 1 0.75, final norm + head 1
    (tiny DINOv3 ViT, L = 2); no weight decay on biases, norms, tokens and LayerScale."""
    from embedkit.app.finetune import PROTOCOLS
    from embedkit.backbones import load_backbone
    from embedkit.finetune import build_model, param_groups

    net = build_model(load_backbone(str(ft_tiny("dinov3-vit")), device="cpu", precision="fp32"), 3)
    decay = PROTOCOLS["modern"].layer_decay_vit
    groups = param_groups(net, layer_decay=decay)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(net.named_parameters())

    def of(fragment: str):
        return {scale[id(p)] for n, p in named.items() if fragment in n and p.requires_grad}

    assert net.depth == 2 and decay == 0.75
    assert of("patch_embeddings.weight") == {(0.75 ** 3, True)}
    assert of("layer.0.attention.q_proj.weight") == {(0.75 ** 2, True)}
    assert of("layer.1.mlp.up_proj.weight") == {(0.75, True)}
    assert of("layer.1.layer_scale1.lambda1") == {(0.75, False)}
    assert of("head.weight") == {(1.0, True)} and of("head.bias") == {(1.0, False)}
    assert of("cls_token") == {(0.75 ** 3, False)}
