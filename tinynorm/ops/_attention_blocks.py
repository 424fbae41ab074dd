"""How scaled_dot_product_attention cuts its work: into units (a head, or several heads
stacked) shared out over the thread pool, and within a unit into blocks of query rows, each
block of scores made and used while it is in cache; and the per-thread scratch arrays the
blocks reuse.

The op (``attention.py``) asks for ``units(...)`` and ``row_blocks(...)`` and runs the same
maths on every block; nothing here depends on the maths, only on the shapes. The results are
the same bits however the heads are cut (see ``units``). Tests shrink BLOCK_ROWS and
TILE_ELEMENTS to push tiny inputs through many blocks.
"""
from __future__ import annotations

import itertools
import math
import threading

from ._rows import BLOCK_ELEMENTS, get_num_threads

BLOCK_ROWS = 128  # causal attention runs over blocks of this many query rows
TILE_ELEMENTS = 1 << 18  # CPU: a block of scores (rows × keys), 1 MiB in float32, stays in
#                          cache from the matmul that writes it through softmax to P V
UNITS_PER_THREAD = 2  # CPU: units per thread, at least, when the heads go to several threads


def units(batch: tuple, length: int, source: int, is_causal: bool, on_cpu: bool) -> tuple:
    """(units, heads per unit): the units of work, each an index into the batch dims (ints,
    and a slice of the dim it cuts), and how many heads each one stacks (the last unit of a
    cut dim may hold fewer).

    Each unit is one call of the per-unit work, its heads stacked so that every NumPy call
    handles them together: Python's cost per call stays small next to the work (a 4-head
    model on 24 tokens would otherwise make hundreds of tiny calls per layer; 24 heads of
    256 causal tokens took 11.3 ms forward+backward one head per unit, 9.1 in units of six,
    on 2 cores). A unit stacks at most as many heads as fit one query block of each
    (``row_blocks``: BLOCK_ROWS rows when causal, else every row) into TILE_ELEMENTS
    scores, so the row blocks are those of one head: the same products of the same sizes,
    the same bits, however the heads are cut. With several threads, and scores enough work
    for two (``for_each_block``'s rule), the heads are cut into at least UNITS_PER_THREAD
    units per thread, of sizes that differ by at most one head, shared out over the thread
    pool. On the GPU one unit, ``(...,)``, runs every head in each launch.
    """
    heads = math.prod(batch)
    if not on_cpu:
        return [(Ellipsis,)], heads
    block_rows = min(BLOCK_ROWS, length) if is_causal else length
    count = -(-heads // max(1, TILE_ELEMENTS // max(block_rows * source, 1)))
    threads = get_num_threads()
    if threads > 1 and heads * length * source >= 2 * BLOCK_ELEMENTS:
        count = max(count, min(heads, UNITS_PER_THREAD * threads))
    per_unit = -(-heads // max(count, 1))
    # whole trailing batch dims while they fit in a unit, then the next dim cut into slices
    depth, inner = len(batch), 1
    while depth > 0 and inner * batch[depth - 1] <= per_unit:
        depth -= 1
        inner *= batch[depth]
    if depth == 0:
        return [()], heads
    size, step = batch[depth - 1], max(1, per_unit // inner)
    step = -(-size // -(-size // step))  # as many slices, as even as they go (5: 3 + 2)
    cut = [index + (slice(start, min(start + step, size)),)
           for index in itertools.product(*(range(n) for n in batch[:depth - 1]))
           for start in range(0, size, step)]
    return cut, step * inner


def row_blocks(length, source, is_causal, on_cpu, heads_per_unit=1):
    """(r0, r1, keys) per block: query rows r0..r1−1 and the keys 0..keys−1 they may see.

    Rows are independent, so attention can run block by block. With a causal mask, row i
    sees keys j <= i, so rows before r1 see only the first min(r1, S) keys: the scores right
    of each block are never computed (about half of them for long sequences, the saving
    FlashAttention makes) and P stays 0 there. Without one, CPU blocks hold about
    TILE_ELEMENTS scores (over the unit's heads), so a block is written by Q Kᵀ, normalised
    and read by P V while it is in cache; the GPU takes every row at once.
    """
    if is_causal:
        step = BLOCK_ROWS
    elif on_cpu:
        step = min(length, TILE_ELEMENTS // max(source * heads_per_unit, 1))
    else:
        step = length
    step = max(step, 1)
    return [(r0, min(r0 + step, length), min(r0 + step, length, source) if is_causal else source)
            for r0 in range(0, length, step)]


class Scratch:
    """Block-sized work arrays, one of each name per thread, reused from block to block.

    A block of scores (up to TILE_ELEMENTS, 1 MiB) is above malloc's threshold for mapping
    fresh pages, so a new array per block would pay a page fault per 4 KiB on every block;
    while a graph is being recorded nothing is freed between blocks, and that cost doubled
    the attention's forward time.
    """

    def __init__(self, xp, dtype):
        self.xp, self.dtype, self.local = xp, dtype, threading.local()

    def get(self, name, shape):
        size = math.prod(shape)
        flat = getattr(self.local, name, None)
        if flat is None or flat.size < size:
            flat = self.xp.empty(size, dtype=self.dtype)
            setattr(self.local, name, flat)
        return flat[:size].reshape(shape)
