"""Exact match after normalisation, and mean token NLL, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from w2s.lm.metrics import as_number, exact_match, exact_match_rate, mean_token_nll, normalize


@pytest.mark.parametrize(
    ("pred", "answers", "want"),
    [
        ("42", "42", True),
        (" 42.\n", "42", True),
        ("42.0", "42", True),
        ("+42", "42", True),
        ("1,234", "1234", True),
        ("1e3", "1000", True),
        ("-7", "7", False),
        ("43", "42", False),
        ("17 + 25 = 42.", "42", False),  # no extraction from longer answers
        ("Walked!", "walked", True),
        ("'walked'", "walked", True),
        ("wa lked", "walked", False),
        ("New   York", "new york", True),
        ("ran", ["run", "ran"], True),
        ("runs", ["run", "ran"], False),
        ("", "0", False),
        ("１２", "12", True),  # NFKC folds full-width digits
    ],
)
def test_exact_match(pred, answers, want):
    assert exact_match(pred, answers) is want


def test_normalize_and_numbers():
    assert normalize('  "Paris."  ') == "paris"
    assert as_number("12.5") == 12.5 and as_number("1,23") is None and as_number("12a") is None
    assert as_number(".5") == 0.5 and as_number("1,000,000") == 1e6


def test_rate_and_nll():
    assert exact_match_rate(["1", "2", "x"], ["1", ["3", "2"], "y"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 3"):
        exact_match_rate(["1", "2"], ["1", "2", "3"])
    with pytest.raises(ValueError, match="at least one"):
        exact_match("1", [])
    lp = np.log([[0.5, 0.25, 0.9], [0.1, 1.0, 1.0]])
    mask = np.array([[0, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(
        mean_token_nll(lp, mask), [-(np.log(0.25) + np.log(0.9)) / 2, -np.log(0.1)]
    )
    with pytest.raises(ValueError, match="no response tokens"):
        mean_token_nll(lp, np.zeros_like(mask))
