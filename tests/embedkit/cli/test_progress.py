"""Progress when stderr is a file or pipe (a Slurm log): plain lines with done/total, rate and ETA."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from embedkit.progress import Progress

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
