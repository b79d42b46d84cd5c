"""Label-fraction subsampling keeps whole patients of the split it is given (probes never make a split)."""
from __future__ import annotations

import numpy as np
import pytest

import probes.splits
from probes.errors import ProbeError
from probes.splits import subsample_train


def test_subsampling_keeps_whole_training_patients():
    groups = np.repeat([f"p{i}" for i in range(100)], 3)
    split = np.repeat(np.array(["train"] * 70 + ["val"] * 10 + ["test"] * 20), 3)
    keep = subsample_train(split, fraction=0.1, groups=groups, seed=0)
    kept_patients = np.unique(groups[keep])
    assert kept_patients.size == 7 and (split[keep] == "train").all()
    assert keep[np.isin(groups, kept_patients)].all()
    assert not np.array_equal(keep, subsample_train(split, fraction=0.1, groups=groups, seed=1))
    assert np.array_equal(subsample_train(split, fraction=1.0, groups=groups), split == "train")
    with pytest.raises(ProbeError, match="label_fraction"):
        subsample_train(split, fraction=0.0, groups=groups)


def test_probes_offer_no_way_to_invent_a_split():
    assert not {"patient_split", "carve_val", "check_no_leak"} & set(dir(probes.splits))
