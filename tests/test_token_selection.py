"""Beam search's candidate tokens: the k best of each row of a vocabulary's log-probabilities, in
the order of a full stable sort (ties: lowest index first, as torch.topk)."""

import numpy as np
import pytest

from max_whisper.token_selection import top_k


@pytest.mark.parametrize("n_vocab", [51864, 51865, 51866, 7])
def test_top_k_is_the_head_of_a_stable_sort(n_vocab):
    rng = np.random.default_rng(n_vocab)
    for trial in range(20):
        logprobs = (rng.standard_normal((5, n_vocab)) * 3).astype(np.float32)
        if trial % 2:  # suppressed tokens
            logprobs[:, rng.integers(0, n_vocab, n_vocab // 10)] = -np.inf
        if trial % 3 == 0:  # ties at the top, some across a block boundary
            logprobs[:, [i for i in (1, 2, 3, 63, 64) if i < n_vocab]] = logprobs.max() + 1
        k = min(6, n_vocab)
        expected = np.argsort(-logprobs, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top_k(logprobs, k), expected)


def test_top_k_of_a_row_with_fewer_finite_values_than_k():
    logprobs = np.full((2, 51865), -np.inf, np.float32)
    logprobs[0, 7] = logprobs[1, 51000] = -0.5
    expected = np.argsort(-logprobs, axis=1, kind="stable")[:, :6]
    assert np.array_equal(top_k(logprobs, 6), expected)
