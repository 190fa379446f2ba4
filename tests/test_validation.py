import numpy as np
import pytest

from jaxbias.validation import check_labels


def test_accepts_and_returns_integer_labels():
    out = check_labels("y", [0, 2, 1], n=3, num_classes=3)
    np.testing.assert_array_equal(out, [0, 2, 1])
    assert check_labels("y", np.zeros(0, np.int32)).shape == (0,)


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.zeros((2, 2), int), {}, r"y must be a 1-D .* shape \(2, 2\)"),
        (np.array([0.0, 1.0]), {}, "y must have an integer dtype, got float64"),
        ([0, 1], {"n": 3, "against": "images"}, "y has 2 entries but images has 3"),
        ([0, -1], {}, "y must be non-negative class indices, got minimum -1"),
        ([0, 5], {"num_classes": 5}, r"y must be class indices in \[0, 4\], got range \[0, 5\]"),
        ([-1, 0], {"num_classes": 5}, r"y must be class indices in \[0, 4\]"),
    ],
)
def test_rejects_bad_labels(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_labels("y", labels, **kwargs)
