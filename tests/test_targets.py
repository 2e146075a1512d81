"""Class targets: -1 marks an unlabeled row (in int, float and object arrays), classes are encoded once, two are needed."""

from __future__ import annotations

import numpy as np
import pytest

from flowgmm_cli.errors import InputError
from flowgmm_cli.targets import UNLABELED, encode_targets, require_classes, unlabeled_mask


def test_unlabeled_is_minus_one():
    assert UNLABELED == -1


@pytest.mark.parametrize(
    "y, classes, codes",
    [
        (np.array([2, -1, 0, 2, 5]), [0, 2, 5], [1, -1, 0, 1, 2]),
        ([7, -1, 3], [3, 7], [1, -1, 0]),
        (np.array([1.0, -1.0, 0.0]), [0.0, 1.0], [1, -1, 0]),
        (np.array(["b", -1, "a", "b"], dtype=object), ["a", "b"], [1, -1, 0, 1]),
        (np.array(["b", np.int64(-1), "a"], dtype=object), ["a", "b"], [1, -1, 0]),
        (["dog", -1, "cat"], ["cat", "dog"], [1, -1, 0]),  # a list keeps -1 an integer beside strings
        (np.array(["dog", "cat", "dog"]), ["cat", "dog"], [1, 0, 1]),
        (np.array(["a", "-1", "b"]), ["-1", "a", "b"], [1, 0, 2]),  # the string "-1" is a class name
        (np.array([True, False, True]), [False, True], [1, 0, 1]),  # booleans are classes, never -1
    ],
)
def test_encode_targets(y, classes, codes):
    got_classes, got_codes = encode_targets(y)
    assert got_classes.tolist() == classes
    assert got_codes.tolist() == codes
    assert got_codes.dtype == np.int64
    labeled = got_codes != UNLABELED
    assert np.array_equal(got_classes[got_codes[labeled]], np.asarray(y, dtype=object)[labeled].astype(got_classes.dtype))


def test_unlabeled_mask_in_object_arrays():
    y = np.array(["a", -1, np.int32(-1), "-1", True, False, -1.5, None], dtype=object)
    assert unlabeled_mask(y).tolist() == [False, True, True, False, False, False, False, False]
    assert unlabeled_mask(np.array([0, -1, 3, -1])).tolist() == [False, True, False, True]
    assert unlabeled_mask(np.array([-1.0, 0.5])).tolist() == [True, False]


@pytest.mark.parametrize(
    "y, found",
    [
        (np.array([-1, -1, -1]), "no labeled rows"),
        (np.array([4, -1, 4]), "only class '4'"),
        (np.array(["cat", -1], dtype=object), "only class 'cat'"),
    ],
)
def test_encode_targets_needs_two_classes(y, found):
    with pytest.raises(InputError) as caught:
        encode_targets(y)
    assert f"but y has {found};" in str(caught.value)


def test_encode_targets_rejects_continuous_targets():
    with pytest.raises(ValueError, match="Unknown label type"):
        encode_targets(np.array([0.5, 1.25, -1.0, 2.75]))


def test_require_classes_message():
    require_classes(["a", "b"])
    require_classes([0, 1, 2], "labels file 'l.csv'")
    with pytest.raises(InputError) as caught:
        require_classes(["a"], "labels file 'l.csv'")
    message = str(caught.value)
    assert message == (
        "FlowGMM needs labeled rows of at least 2 classes, but labels file 'l.csv' has only class 'a'; "
        "label rows of another class (-1 or an empty label marks an unlabeled row)."
    )
    with pytest.raises(InputError, match="^Calibration needs labeled rows of at least 2 classes, but the calibration labels has no labeled rows;"):
        require_classes([], "the calibration labels", task="Calibration")
