import math

import pytest

from duckllm.confidence import auroc, choice_prob, mean_token_prob, sequence_prob


def test_mean_token_prob_averages_probabilities_not_logs():
    assert mean_token_prob([math.log(0.9), math.log(0.5)]) == pytest.approx(0.7)
    assert mean_token_prob([]) is None
    assert choice_prob(math.log(0.25)) == pytest.approx(0.25)


def test_sequence_prob_is_the_probability_of_every_token_together():
    assert sequence_prob([math.log(0.9), math.log(0.5)]) == pytest.approx(0.45)
    assert sequence_prob([]) is None


@pytest.mark.parametrize("scores, correct, expected", [
    ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),
    ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),
    ([0.9, 0.3, 0.6, 0.1], [True, True, False, False], 0.75),
    ([0.9, 0.8], [True, True], None),
])
def test_auroc(scores, correct, expected):
    assert auroc(scores, correct) == expected
