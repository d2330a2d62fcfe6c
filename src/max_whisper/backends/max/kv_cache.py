"""The decoder's self-attention KV cache between steps, two ways (decoder_graph builds the step for
either): written in place where our kernels run (a CPU), copied by each step elsewhere (a GPU).

Both serve a decoding session's rows [A windows x G rows each]: steps feed them new positions,
beam search reorders them (`reorder`), and windows that end leave the batch (`keep`).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from max.driver import Buffer

from ...dims import ModelDimensions
from .buffers import DeviceBuffers, kept_rows, to_numpy

GROWTH = 64  # a cache's capacity grows in multiples of it


class SlotPool:
    """The arrays of caches that have ended or grown, for the next cache of the same shape. New
    arrays are paged in again, and a first step touches every page of K (its positions run along
    the rows): for the forty rows of eight windows' beams, tens of ms a session."""

    KEPT = 2  # sets of arrays kept, the latest: a session and the next one overlap

    def __init__(self):
        self._free: list[tuple[tuple, list[np.ndarray]]] = []
        # a cache ends on whichever thread drops it last, and servers decode on threads of their own
        self._lock = threading.Lock()

    def take(self, shapes: tuple) -> list[np.ndarray]:
        with self._lock:
            for i, (kept, arrays) in enumerate(self._free):
                if kept == shapes:
                    del self._free[i]
                    return arrays
        return [np.empty(shape, np.float32) for shape in shapes]

    def give(self, shapes: tuple, arrays: list[np.ndarray]) -> None:
        with self._lock:
            self._free = [*self._free, (shapes, arrays)][-self.KEPT :]


class SlotCache:
    """Each layer's K [S, H, hd, cap] and V [S, H, cap, hd] in host buffers that the step writes in
    place: S slots of `cap` positions (grown as the rows' pasts need, up to `capacity`). A row's
    past is its history, the slot each of its positions was written in; a step writes every row's
    new positions into the row's own slot. Rows that share a past (the beams of one window) share
    its positions, and a reorder or a window's end only rewrites the histories: no step copies the
    cache.

    A row that continues another keeps writing into its slot (the first to continue it does; the
    others take the slots of rows nobody continues), so a history is a few long runs of one slot,
    which the attention kernel reads as whole blocks.
    """

    def __init__(
        self,
        dims: ModelDimensions,
        slots: int,
        capacity: int,
        rows: int | None = None,
        pool: SlotPool | None = None,
    ):
        """rows: fewer rows than slots to begin with (a prefill, one row per window, which
        `expand` gives to the window's rows: they write to slots 0, G, 2G, ...). pool: where the
        arrays come from and go back to when the cache grows or ends."""
        self._dims, self._pool, self._n_slots = dims, pool or SlotPool(), slots
        self.limit, self.capacity = capacity, 0  # the positions it may grow to, and holds now
        self.arrays: list[np.ndarray] = []
        self.buffers: list[Buffer] = []
        self._give_back = None
        group = 1 if rows is None else slots // rows
        # where each row writes its new positions
        self.slots = np.arange(0, slots, group, dtype=np.int64)
        self.history = np.zeros((len(self.slots), 0), np.int64)  # [rows, positions]

    def _grow(self, needed: int) -> None:
        """Hold at least `needed` positions: new arrays (from the pool), the past copied over. A
        first step touches every page of K (its positions run along the rows), so the cache starts
        small and doubles: a whole context for each of forty rows would page in ~220 MB of base."""
        capacity = min(self.limit, -(-max(needed, 2 * self.capacity) // GROWTH) * GROWTH)
        dims, past = self._dims, self.history.shape[1]
        heads, hd = dims.n_text_head, dims.n_text_state // dims.n_text_head
        shapes = ((self._n_slots, heads, hd, capacity), (self._n_slots, heads, capacity, hd))
        arrays = self._pool.take(shapes * dims.n_text_layer)  # uninitialised: read once written
        for i, (new, old) in enumerate(zip(arrays, self.arrays)):
            if i % 2 == 0:  # K: positions along the last axis
                new[..., :past] = old[..., :past]
            else:
                new[:, :, :past] = old[:, :, :past]
        if self._give_back is not None:
            self._give_back()  # the smaller arrays back to the pool
        self._give_back = weakref.finalize(
            self, self._pool.give, shapes * dims.n_text_layer, arrays
        )
        self.arrays, self.capacity = arrays, capacity
        self.buffers = [Buffer.from_numpy(a) for a in arrays]  # the arrays' own memory

    @property
    def rows(self) -> int:
        return len(self.slots)

    def step_inputs(self, n_new: int) -> tuple[np.ndarray, list[Buffer]]:
        """(the step's order of the rows' past: history [rows, past + n_new], the new positions'
        slots last; the buffers)."""
        needed = self.history.shape[1] + n_new
        if needed > self.limit:
            raise ValueError(f"the KV cache holds {self.limit} positions")
        if needed > self.capacity:
            self._grow(needed)
        new = np.repeat(self.slots[:, None], n_new, axis=1)
        return np.concatenate([self.history, new], axis=1), self.buffers

    def advance(self, history: np.ndarray, _outputs: list[Buffer]) -> None:
        self.history = history

    def expand(self, group: int) -> None:
        """One row per window (a prefill shared by the window's rows) -> `group` rows each: they
        all read its positions; each writes into a slot of its own."""
        self.history = np.repeat(self.history, group, axis=0)
        first = np.repeat(self.slots, group)
        self.slots = first + np.tile(np.arange(group), len(self.slots))  # the prefill's slot first
        if len(np.unique(self.slots)) != len(self.slots) or self.slots.max() >= self._n_slots:
            raise ValueError("a prefill's rows must write to slots 0, G, 2G, ... of the cache")

    def reorder(self, source: np.ndarray) -> None:
        """Row i continues the past of row source[i]."""
        self.history = self.history[source]
        old = self.slots
        slots = np.full(len(source), -1, np.int64)
        taken = set()
        for i, parent in enumerate(source):
            if old[parent] not in taken:
                slots[i] = old[parent]
                taken.add(int(old[parent]))
        free = (int(s) for s in old if int(s) not in taken)  # slots of rows nobody continues
        for i in np.flatnonzero(slots < 0):
            slots[i] = next(free)
        self.slots = slots

    def keep(self, rows: np.ndarray) -> None:
        """Go on with only these rows (ascending)."""
        self.history, self.slots = self.history[rows], self.slots[rows]


class CopiedCache:
    """Each layer's K [A, G, H, hd, past] and V [A, G, H, past, hd] as device buffers that each step
    returns grown by its positions (MAX's ops: a GPU); a reorder is made by the next step's copy."""

    def __init__(self, dims: ModelDimensions, buffers: DeviceBuffers, n_audio: int, group: int):
        heads, hd = dims.n_text_head, dims.n_text_state // dims.n_text_head
        self._device = buffers
        self.buffers = [
            buffers.to_device(np.zeros((n_audio, group, *shape), np.float32))
            for _ in range(dims.n_text_layer)
            for shape in ((heads, hd, 0), (heads, 0, hd))
        ]
        self.n_audio, self.group = n_audio, group
        self.sources: np.ndarray | None = None  # the row each row continues; None: its own

    @property
    def rows(self) -> int:
        return self.n_audio * self.group

    def step_inputs(self, _n_new: int) -> tuple[np.ndarray, list[Buffer]]:
        """(the step's order of the rows' past: the row each continues [rows]; the buffers)."""
        sources = np.arange(self.rows, dtype=np.int64) if self.sources is None else self.sources
        return sources, self.buffers

    def advance(self, _order: np.ndarray, outputs: list[Buffer]) -> None:
        self.buffers, self.sources = outputs, None

    def expand(self, group: int) -> None:
        self.buffers = [
            self._device.to_device(np.repeat(to_numpy(b), group, axis=1)) for b in self.buffers
        ]
        self.group *= group

    def reorder(self, source: np.ndarray) -> None:
        self.sources = source if self.sources is None else self.sources[source]

    def keep(self, rows: np.ndarray) -> None:
        """Go on with only these rows: whole windows' (ascending)."""
        windows = rows[:: self.group] // self.group
        if self.sources is not None:
            sources = self.sources.reshape(self.n_audio, self.group)
            if (sources // self.group == np.arange(self.n_audio)[:, None]).all():
                # a beam search's rows take their past from rows of their own window
                kept = np.arange(len(windows))[:, None] * self.group + sources[windows] % self.group
                self.sources = kept.ravel()
            else:  # any other reorder is made here, on the host
                self.buffers = [self._rows(b, self.sources) for b in self.buffers]
                self.sources = None
        self.buffers = [self._rows(b, rows, in_place=True) for b in self.buffers]
        self.n_audio = len(windows)

    def _rows(self, buffer: Buffer, rows: np.ndarray, in_place: bool = False) -> Buffer:
        """Rows `rows` of a [A, G, ...] buffer, flat indices into its A*G rows; in_place (rows
        ascending): moved to the front of the buffer's own memory."""
        array = to_numpy(buffer)
        kept = kept_rows(array.reshape(-1, *array.shape[2:]), rows, in_place)
        return self._device.to_device(kept.reshape(-1, self.group, *array.shape[2:]))
