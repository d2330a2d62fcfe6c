"""The in-place KV cache's bookkeeping on the host (backends/max/kv_cache.SlotCache): which slot
each row writes into and which slots its history reads, through a beam search's reorders, a prefill
shared by a window's rows and windows leaving the batch; and the reuse of ended caches' arrays.
The kernels that read and write the slots are tested in test_kernels, whole decodes in
test_max_decoder."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from max_whisper.dims import ModelDimensions


@pytest.fixture
def dims():
    from max_whisper.weights import load_model_weights

    return load_model_weights("tiny.en").dims


def _step(cache, n_new: int = 1) -> np.ndarray:
    history, _ = cache.step_inputs(n_new)
    cache.advance(history, [])
    return history


def _check_distinct_writers(cache) -> None:
    assert len(set(cache.slots.tolist())) == cache.rows  # no two rows write one place


def test_a_reorder_keeps_the_first_continuation_in_its_parents_slot(dims: ModelDimensions):
    from max_whisper.backends.max.kv_cache import SlotCache

    cache = SlotCache(dims, slots=5, capacity=16)
    first = _step(cache, 3)  # a prompt of 3 tokens, each row in its own slot
    assert (first == np.arange(5)[:, None]).all()
    cache.reorder(np.array([2, 2, 0, 4, 4]))  # rows 1 and 3 are continued by nobody
    assert cache.slots[0] == 2 and cache.slots[2] == 0 and cache.slots[3] == 4
    assert {int(cache.slots[1]), int(cache.slots[4])} == {1, 3}  # the slots nobody continues
    _check_distinct_writers(cache)
    history = _step(cache)
    # each row reads its parent's past, then its own new position in the slot it writes
    assert (history[:, :3] == np.array([2, 2, 0, 4, 4])[:, None]).all()
    assert (history[:, 3] == cache.slots).all()
    order = np.array([1, 0, 2, 3, 4])  # two rows swap: each keeps its parent's slot
    before = (history, cache.slots.copy())
    cache.reorder(order)
    assert (cache.slots == before[1][order]).all()
    assert (_step(cache)[:, :4] == before[0][order]).all()
    with pytest.raises(ValueError, match="holds 16 positions"):
        cache.step_inputs(12)


def test_histories_stay_a_few_runs_through_many_reorders(dims: ModelDimensions):
    """Over 100 random steps of a beam of 5 (each step's rows continue the best rows), a row's
    history changes slot only where its lineage forked: far fewer runs than positions."""
    from max_whisper.backends.max.kv_cache import SlotCache

    rng = np.random.default_rng(0)
    cache = SlotCache(dims, slots=5, capacity=128)
    _step(cache, 4)
    for _ in range(100):
        cache.reorder(np.sort(rng.choice(5, 5, p=[0.5, 0.3, 0.1, 0.05, 0.05])))
        _check_distinct_writers(cache)
        _step(cache)
    runs = [1 + int((np.diff(h) != 0).sum()) for h in cache.history]
    assert max(runs) < 30, runs


def test_a_prefill_is_shared_then_each_row_writes_its_own_slot(dims: ModelDimensions):
    from max_whisper.backends.max.kv_cache import SlotCache

    cache = SlotCache(dims, slots=6, capacity=16, rows=2)  # 2 windows x 3 beams, prefilled alone
    assert cache.rows == 2
    assert (_step(cache, 4) == np.array([0, 3])[:, None]).all()
    cache.expand(3)
    assert cache.rows == 6 and (cache.slots == np.arange(6)).all()
    history = _step(cache)
    assert (history[:, :4] == np.repeat([0, 3], 3)[:, None]).all()
    cache.keep(np.array([3, 4, 5]))  # the first window has ended
    assert cache.rows == 3 and (cache.slots == [3, 4, 5]).all()
    assert (_step(cache)[:, :4] == 3).all()


def test_ended_caches_lend_their_arrays_to_the_next_of_their_shape(dims: ModelDimensions):
    from max_whisper.backends.max.kv_cache import SlotCache, SlotPool

    def arrays_of(cache) -> list[int]:
        _step(cache)  # a cache takes its arrays at its first step
        assert len(cache.arrays) == 2 * dims.n_text_layer
        return [id(a) for a in cache.arrays]

    pool = SlotPool()
    cache = SlotCache(dims, slots=2, capacity=16, pool=pool)
    arrays = arrays_of(cache)
    other = SlotCache(dims, slots=2, capacity=16, pool=pool)  # the first is alive: new arrays
    assert not set(arrays) & set(arrays_of(other))
    del cache
    gc.collect()
    assert arrays_of(SlotCache(dims, slots=2, capacity=16, pool=pool)) == arrays
    assert not set(arrays_of(SlotCache(dims, 3, 16, pool=pool))) & set(arrays)


def test_a_cache_grows_as_its_rows_need_and_keeps_what_they_wrote(dims: ModelDimensions):
    """A cache starts with room for its first step and doubles (in multiples of 64 positions, up to
    its limit): the positions written before are where they were, the smaller arrays go back to
    the pool."""
    from max_whisper.backends.max.kv_cache import GROWTH, SlotCache, SlotPool

    pool = SlotPool()
    cache = SlotCache(dims, slots=3, capacity=200, pool=pool)
    _step(cache, 5)
    assert cache.capacity == GROWTH
    rng = np.random.default_rng(1)
    for i, a in enumerate(cache.arrays):  # what steps would have written at positions 0..59
        if i % 2 == 0:
            a[..., :60] = rng.standard_normal(a[..., :60].shape)
        else:
            a[:, :, :60] = rng.standard_normal(a[:, :, :60].shape)
    written = [
        a[..., :60].copy() if i % 2 == 0 else a[:, :, :60].copy()
        for i, a in enumerate(cache.arrays)
    ]
    small = [id(a) for a in cache.arrays]
    _step(cache, 55)  # 60 positions: still room
    assert cache.capacity == GROWTH
    _step(cache, 10)  # 70: doubled
    assert cache.capacity == 2 * GROWTH
    for i, (a, w) in enumerate(zip(cache.arrays, written)):
        assert np.array_equal(a[..., :60] if i % 2 == 0 else a[:, :, :60], w)
    first = tuple(
        (*a.shape[:3], GROWTH) if i % 2 == 0 else (*a.shape[:2], GROWTH, a.shape[3])
        for i, a in enumerate(cache.arrays)
    )
    assert [id(a) for a in pool.take(first)] == small  # the first arrays, lent again
    _step(cache, 100)  # 170: doubled, but no further than the limit
    assert cache.capacity == 200
    with pytest.raises(ValueError, match="holds 200 positions"):
        cache.step_inputs(31)
