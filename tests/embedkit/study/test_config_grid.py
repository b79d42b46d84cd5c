"""Study configuration (the printed example parses and documents every key; typos are refused) and the grid
(cells, fingerprints that change only downstream of an edit, exclusions, --only)."""
from __future__ import annotations

import re
import tomllib

import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.study import config as cfgmod
from embedkit.study.config import EXAMPLE, StudyConfigError, load_config
from embedkit.study.grid import build_grid


def _write(tmp_path, text=EXAMPLE, name="study.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_is_printed_parses_and_documents_every_key(tmp_path):
    r = CliRunner().invoke(app, ["study", "--example"])
    assert r.exit_code == 0 and r.output == EXAMPLE
    tomllib.loads(r.output)
    cfg = load_config(_write(tmp_path, r.output))
    assert cfg.resolutions == (32, 64) and [b.name for b in cfg.backbones] == ["vit", "convnext"]
    assert {a.kind for a in cfg.arms} == {"frozen", "finetune"} and cfg.external == (("phantom-a", "phantom-b"),)
    documented = set(re.findall(r"^#?\s*([a-z_]+) = ", EXAMPLE, flags=re.M))
    for key in (*cfgmod._STUDY, *cfgmod._DATASET, *cfgmod._BACKBONE, *cfgmod._ARM_FROZEN, *cfgmod._ARM_FT,
                *cfgmod._MAKE):
        assert key in documented, key


@pytest.mark.parametrize("edit, message", [
    (("resolutions = [32, 64]", "resoluton = [32, 64]"), "unknown key 'resoluton'"),
    (("resolutions = [32, 64]", "resolutions = [32, -1]"), "positive integers"),
    (('kind = "frozen"', 'kind = "frozn"'), "'frozen' or 'finetune'"),
    (('train = "phantom-a"', 'train = "nope"'), "not in [[datasets]]"),
    (('adjust = "holm"', 'adjust = "bonferroni"'), "'holm', 'bh' or 'none'"),
    (('name = "vit"', 'name = "convnext"'), "unique"),
    (("[study]", "[study"), "not valid TOML"),
    # Value typos are refused as key typos are, before any cell runs (they used to fail every cell at run time).
    (('heads = ["linear"]', 'heads = ["linaer"]'), "'heads' 'linaer' is not one of"),
    (('modes = ["full"]', 'modes = ["fulll"]'), "'modes' 'fulll' is not 'full', 'lora' or 'last:K'"),
    (('protocols = ["modern"]', 'protocols = ["moderne"]'), "Did you mean 'modern'?"),
    (("options = { epochs = 2,", "options = { epoch = 2,"), "unknown finetune option 'epoch'. Did you mean 'epochs'?"),
    (("options = { epochs = 2,", "options = { device = 'cpu', epochs = 2,"), "'device' is set by the study"),
    (('heads = ["linear"] ', 'options = { epoch = 3 }\nheads = ["linear"] '), "unknown linear head option 'epoch'"),
])
def test_bad_configs_are_refused_with_one_line(tmp_path, edit, message):
    path = _write(tmp_path, EXAMPLE.replace(*edit, 1))
    with pytest.raises(StudyConfigError, match=re.escape(message)):
        load_config(path)
    r = CliRunner().invoke(app, ["study", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1


def test_missing_manifest_is_refused_before_anything_runs(tmp_path):
    text = EXAMPLE.replace('data = "study-assets/phantoms-b/manifest.csv"', 'data = "nowhere/manifest.csv"')
    text = text.replace('data = "study-assets/phantoms-a/manifest.csv"', 'data = "nih:nowhere-nih"')
    path = _write(tmp_path, text)
    for extra in (["--dry-run"], []):
        r = CliRunner().invoke(app, ["study", str(path), "--out", str(tmp_path / "o"), *extra])
        assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1
        assert "(phantom-a)" in r.output and "nowhere-nih' does not exist" in r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "study-assets").exists()
    # A manifest that [make] builds is not missing.
    assert load_config(_write(tmp_path, EXAMPLE)) and cfgmod.check_inputs(load_config(_write(tmp_path))) is None


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(StudyConfigError, match="Did you mean 'resolutions'"):
        load_config(_write(tmp_path, EXAMPLE.replace("resolutions =", "resolution =", 1)))


def test_grid_cells_fingerprints_exclude_and_only(tmp_path):
    cfg = load_config(_write(tmp_path))
    grid = build_grid(cfg, tmp_path / "out")
    runs = [c for c in grid.cells if c.kind == "run"]
    assert len(runs) == 2 * 2 * 2 * 2 and len(grid.cells) == 16 + 4  # + external cells of the frozen arm
    assert len({c.fp for c in grid.cells}) == len(grid.cells)
    assert {c.key for c in grid.select("phantom-a/32/*")} == {
        "phantom-a/32/vit/linear", "phantom-a/32/vit/ft", "phantom-a/32/convnext/linear", "phantom-a/32/convnext/ft"}
    assert all(c.kind == "external" for c in grid.select("external/*"))
    # editing one dataset's split rule changes its stages only
    edited = EXAMPLE.replace('data = "study-assets/phantoms-b/manifest.csv"',
                             'data = "study-assets/phantoms-b/manifest.csv"\nsplit = "patient:1:0.7,0.1,0.2"')
    grid2 = build_grid(load_config(_write(tmp_path, edited, "b.toml")), tmp_path / "out")
    before = {c.key: c.fp for c in grid.cells}
    changed = {c.key for c in grid2.cells if before[c.key] != c.fp}
    assert changed == {c.key for c in grid.cells if "phantom-b" in c.key}
    # an exclusion removes exactly the matching cells
    ex = EXAMPLE + '\n[[exclude]]\ndataset = "phantom-b"\nresolution = 64\n'
    grid3 = build_grid(load_config(_write(tmp_path, ex, "c.toml")), tmp_path / "out")
    assert not any(c.key.startswith("phantom-b/64/") for c in grid3.cells) and len(grid3.cells) == 20 - 4 - 2
