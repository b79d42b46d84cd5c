"""Rank layout and barriers: which GPU each rank takes under torchrun / Slurm, and a dead peer failing the job.

The dead-peer tests run real gloo processes (as ``srun`` would start them: RANK/WORLD_SIZE/MASTER_* set by hand) with
``EMBEDKIT_DIST_TIMEOUT`` of a few seconds; the survivor must exit non-zero with one line, within the timeout.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from embedkit.devices import rank_device
from embedkit.errors import EmbedkitError, ExtractionError
from embedkit.extract.dist import DEFAULT_TIMEOUT_S, detect_env, dist_timeout

from .conftest import ROOT


def _visible(environ: dict, physical: int = 8) -> int:
    """What torch.cuda.device_count() returns under CUDA_VISIBLE_DEVICES (every listed id exists here)."""
    ids = environ.get("CUDA_VISIBLE_DEVICES")
    return physical if ids is None else len([i for i in ids.split(",") if i.strip()])


@pytest.mark.parametrize(("environ", "want_rank", "want_device"), [
    # torchrun on one 4-GPU node, all GPUs visible: local rank r -> cuda:r
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 3, 3),
    # torchrun, second node of two: global rank 6, local rank 2
    ({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2"}, 6, 2),
    # srun --gpus-per-task=1: each task sees only its own GPU, so every rank uses cuda:0 (LOCAL_RANK would crash)
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "1"}, 5, 0),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3"}, 3, 0),
    # srun with the node's 4 GPUs visible to every task: local id r -> cuda:r
    ({"SLURM_PROCID": "7", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 7, 3),
    # more ranks than GPUs on a node: two ranks share each GPU
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 5, 1),
    # 2 ranks on one GPU (the gpu_check.sh layout)
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0"}, 1, 0),
    # a single process
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, 0, 0),
])
def test_each_rank_uses_its_own_visible_device(environ, want_rank, want_device):
    env = detect_env(environ)
    assert env.rank == want_rank
    assert rank_device(env.local_rank, _visible(environ)) == want_device


def test_rank_device_refuses_no_visible_device():
    with pytest.raises(EmbedkitError, match="No CUDA device is visible"):
        rank_device(0, 0)
    with pytest.raises(EmbedkitError, match=">= 0"):
        rank_device(-1, 2)


def test_slurm_without_localid_and_malformed_variables():
    assert detect_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}).local_rank == 0
    with pytest.raises(ExtractionError, match="SLURM_PROCID must be an integer"):
        detect_env({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})
    with pytest.raises(ExtractionError, match="Inconsistent rank"):
        detect_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_dist_timeout_is_bounded_and_configurable():
    assert dist_timeout({}) == DEFAULT_TIMEOUT_S <= 600
    assert dist_timeout({"EMBEDKIT_DIST_TIMEOUT": "2.5"}) == 2.5
    for bad in ("0", "-3", "soon", "inf", "nan"):
        with pytest.raises(ExtractionError, match="EMBEDKIT_DIST_TIMEOUT must be a positive number"):
            dist_timeout({"EMBEDKIT_DIST_TIMEOUT": bad})


# ------------------------------------------------------------------------------------------------ real processes
_PEER = textwrap.dedent("""
    import os, signal, sys, time
    from embedkit.errors import ExtractionError
    from embedkit.extract.dist import ProcessGroup, detect_env

    victim = int(sys.argv[1])
    env = detect_env()
    with ProcessGroup(env) as group:
        group.barrier()                      # both alive: passes
        assert group.all_ok(True)
        if env.rank == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        t0 = time.monotonic()
        try:
            group.barrier()
        except ExtractionError as exc:
            print(f"{time.monotonic() - t0:.2f}|{exc}", flush=True)
            sys.exit(2)
    sys.exit(0)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], *, world: int, port: int, timeout_s: float, extra: dict | None = None,
            per_rank: dict | None = None) -> list[subprocess.Popen]:
    procs = []
    for rank in range(world):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
                   SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), EMBEDKIT_DIST_TIMEOUT=str(timeout_s),
                   **(extra or {}), **((per_rank or {}).get(rank, {})))
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(var, None)
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.parametrize("victim", [1, 0], ids=["worker-dies", "store-host-dies"])
def test_dead_peer_fails_the_barrier_within_the_timeout(tmp_path, victim):
    script = tmp_path / "peer.py"
    script.write_text(_PEER)
    timeout_s = 3.0
    procs = _launch([str(script), str(victim)], world=2, port=_free_port(), timeout_s=timeout_s)
    outs = [p.communicate(timeout=120) for p in procs]
    survivor = 1 - victim
    assert procs[victim].returncode == -signal.SIGKILL
    assert procs[survivor].returncode == 2, outs[survivor]
    waited, _, message = outs[survivor][0].strip().partition("|")
    # Rank 0 hosts the store: losing it is noticed at once; a dead worker after ~timeout (+ one check interval).
    assert float(waited) < timeout_s + 5, outs[survivor]
    assert "\n" not in message
    assert (f"Rank {victim} stopped responding" if victim == 1 else "lost the rendezvous store") in message


def test_extract_rank_killed_mid_run_fails_the_other_then_resumes(tiny, phantoms, tmp_path, module_runner):
    """srun-style 2-rank extract: rank 1 is SIGKILLed after its first unit; rank 0 finishes its units, then exits 2
    with one error line instead of waiting 48 h; a plain re-run completes the store."""
    from stores import EmbeddingStore

    out = tmp_path / "dead-peer.zarr"
    args = ["-m", "embedkit", "extract", "--model", str(tiny("dinov3-vit")), "--res", "64", "--data",
            str(phantoms), "--out", str(out), "--dtype", "float32", "--batch-size", "2", "--workers", "0",
            "--rows-per-shard", "4", "--device", "cpu"]
    t0 = time.monotonic()
    procs = _launch(args, world=2, port=_free_port(), timeout_s=4,
                    per_rank={1: {"EMBEDKIT_TEST_KILL_AFTER_UNITS": "1"}})
    outs = [p.communicate(timeout=170) for p in procs]
    assert procs[1].returncode == -signal.SIGKILL, outs[1][1][-2000:]
    assert procs[0].returncode == 2, outs[0][1][-2000:]
    err = [line for line in outs[0][1].splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: Rank 1 stopped responding"), outs[0][1][-2000:]
    assert "Traceback" not in outs[0][1]
    assert time.monotonic() - t0 < 150
    with EmbeddingStore.open(out) as st:
        assert not st.done_units().all()
    proc = module_runner(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with EmbeddingStore.open(out) as st:
        assert st.done_units().all()


# ------------------------------------------------------------------------------------------------ one device rule
def test_diagnose_cuda_names_each_unusable_setup():
    from probes._common import diagnose_cuda

    ok = dict(count=0, compiled=True, init_error=None, driver_loaded=False, visible=None)
    assert diagnose_cuda(**ok) is None  # no GPU here, none asked for: a plain CPU machine
    assert diagnose_cuda(**dict(ok, count=2, visible="0,1")) is None
    for quiet in ("", "-1", "NoDevFiles"):
        assert diagnose_cuda(**dict(ok, visible=quiet)) is None
    assert "CUDA_VISIBLE_DEVICES='0'" in diagnose_cuda(**dict(ok, visible="0"))
    assert "driver/runtime mismatch" in diagnose_cuda(**dict(ok, driver_loaded=True))
    assert "CPU-only build" in diagnose_cuda(**dict(ok, driver_loaded=True, compiled=False))
    said = "The NVIDIA driver on your system is too old (found version 11040)."
    assert said in diagnose_cuda(**dict(ok, init_error=said, driver_loaded=True))


def test_device_names_are_checked_in_one_place():
    from embedkit.devices import resolve_device
    from embedkit.errors import ModelError

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ModelError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("mps")
    with pytest.raises(ExtractionError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu0", error=ExtractionError)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_no_cuda = pytest.mark.skipif(_has_cuda(), reason="checks the behaviour without a usable GPU")


@needs_no_cuda
def test_auto_with_unusable_cuda_warns_and_refuses_big_models(tiny, monkeypatch, caplog):
    import embedkit.devices as devices
    from embedkit.backbones import load_backbone
    from embedkit.errors import ModelError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU job on a node whose CUDA torch cannot use
    with caplog.at_level("WARNING"):
        bb = load_backbone(tiny("dinov3-vit"), device="auto")
    assert bb.device.type == "cpu"
    assert "CUDA is unusable (CUDA_VISIBLE_DEVICES='0' names a GPU but torch sees none)" in caplog.text
    with pytest.raises(ModelError, match="CUDA is unusable.*names a GPU.*6.7B parameters.*Fix CUDA, or pass "
                                         "--device cpu explicitly"):
        devices.check_cpu_fallback("auto", bb.device, 6_716_035_072, model="dinov3-7b")
    with pytest.raises(ModelError, match="CUDA is not available \\(CUDA_VISIBLE_DEVICES='0'"):
        load_backbone(tiny("dinov3-vit"), device="cuda")
    # The limit applies to the parameters counted in the checkpoint, before anything is loaded.
    monkeypatch.setattr(devices, "CPU_FALLBACK_MAX_PARAMS", 1000)
    with pytest.raises(ModelError, match=r"refusing to run .* \(0\.0B parameters\) on the CPU under --device auto"):
        load_backbone(tiny("original-dinov3-pth"), device="auto")
    assert load_backbone(tiny("original-dinov3-pth"), device="cpu").device.type == "cpu"  # explicit CPU is fine
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    caplog.clear()
    assert load_backbone(tiny("original-dinov3-pth"), device="auto").device.type == "cpu"  # plain CPU machine
    assert "CUDA is unusable" not in caplog.text


@needs_no_cuda
def test_extract_cli_warns_on_unusable_cuda(tiny, phantoms, tmp_path, module_runner):
    proc = module_runner(["-m", "embedkit", "extract", "--model", str(tiny("dinov3-vit")), "--res", "64", "--data",
                          str(phantoms), "--out", str(tmp_path / "s.zarr"), "--limit", "4", "--workers", "0"],
                         env={"CUDA_VISIBLE_DEVICES": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--device auto: CUDA is unusable" in proc.stderr and "pass --device cpu" in proc.stderr
