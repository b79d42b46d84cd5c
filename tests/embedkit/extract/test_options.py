"""One options dataclass per engine: ExtractOptions / CacheOptions validate once and are what CLI, API and engine take."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

import embedkit.api as ek
from embedkit.errors import ExtractionError
from embedkit.extract.options import CacheOptions, ExtractOptions
from embedkit.extract.run import run_cache_images, run_extract


@pytest.mark.parametrize("field,value,message", [
    ("res", 4, "The 'res' parameter of extract must be an int >= 8. Got 4."),
    ("res", 512.0, "The 'res' parameter of extract must be an int >= 8. Got 512.0."),
    ("batch_size", 0, "The 'batch_size' parameter of extract must be an int >= 1. Got 0."),
    ("batch_size", True, "The 'batch_size' parameter of extract must be an int >= 1. Got True."),
    ("workers", -1, "The 'workers' parameter of extract must be an int >= 0. Got -1."),
    ("limit", 0, "The 'limit' parameter of extract must be an int >= 1. Got 0."),
    ("rows_per_shard", 0, "The 'rows_per_shard' parameter of extract must be an int >= 1. Got 0."),
    ("preprocess", "imagenet", "The 'preprocess' parameter of extract must be 'model' or 'paper'. Got 'imagenet'."),
    ("resize", "crop", "The 'resize' parameter of extract must be 'pad' or 'stretch'. Got 'crop'."),
    ("dtype", "int8", "The 'dtype' parameter of extract must be 'float16' or 'float32'. Got 'int8'."),
    ("precision", "fp16", "The 'precision' parameter of extract must be one of 'auto', 'fp32', 'bf16', "
                          "'bf16-weights'. Got 'fp16'."),
    ("features", "cls", "The 'features' parameter of extract must be a sequence of view names. Got 'cls'."),
])
def test_extract_options_refuse_bad_values(field, value, message):
    kwargs = {"res": 64, field: value}
    with pytest.raises(ExtractionError) as info:
        ExtractOptions(**kwargs)
    assert str(info.value) == message


def test_cache_options_name_their_command():
    with pytest.raises(ExtractionError, match="^The 'unit_rows' parameter of cache-images must be an int >= 1"):
        CacheOptions(res=64, unit_rows=0)
    with pytest.raises(ExtractionError, match="^The 'batch_size' parameter of cache-images"):
        CacheOptions(res=64, batch_size=0)


def test_options_are_frozen_and_normalised():
    opts = ExtractOptions(res=64, features=["cls", "mean_patch"], labels=["Effusion", "Edema"])
    assert opts.features == ("cls", "mean_patch") and opts.labels == ("Effusion", "Edema")
    assert ExtractOptions(res=64, features=[]).features is None
    assert opts.policies()["labels"] == ["Effusion", "Edema"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.res = 128  # type: ignore[misc]
    assert hash(opts) == hash(ExtractOptions(res=64, features=("cls", "mean_patch"), labels=("Effusion", "Edema")))


@pytest.mark.parametrize("func,cls", [(ek.extract, ExtractOptions), (run_extract, ExtractOptions),
                                      (ek.cache_images, CacheOptions), (run_cache_images, CacheOptions)],
                         ids=["api.extract", "run_extract", "api.cache_images", "run_cache_images"])
def test_signatures_are_the_dataclass_fields(func, cls):
    params = inspect.signature(func).parameters
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) <= set(params)
    for name, f in fields.items():
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert params[name].default == expected and params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert "options" in params


def test_api_refuses_unknown_or_doubled_options(tmp_path):
    with pytest.raises(ExtractionError, match="Unknown option\\(s\\) of extract: batch. Options: "):
        ek.extract("dinov3-vitb16", "x.csv", tmp_path / "s.zarr", res=64, batch=3)
    with pytest.raises(ExtractionError, match="either options= or keyword options \\(res\\)"):
        ek.extract("dinov3-vitb16", "x.csv", tmp_path / "s.zarr", ExtractOptions(res=64), res=64)
    with pytest.raises(ExtractionError, match="options= must be a CacheOptions"):
        ek.cache_images("x.csv", tmp_path / "c.zarr", ExtractOptions(res=64))
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "c.zarr").exists()
