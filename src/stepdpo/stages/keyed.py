"""The machinery every record-producing stage shares: run a stage over keyed records.

A stage (sample, locate, rectify, scdpo, eval) turns items (problems, wrong samples,
located errors, ...) into records kept in an append-only :class:`~stepdpo.records.RecordStore`.
:func:`run_keyed` does the rest once: it skips the items already done (a rerun resumes),
cuts the others into chunks, gives each item its seed derived from (run seed, stage, item
key) by :func:`stepdpo.seeding.derive_seed`, hands each chunk to the stage's ``make``,
saves what comes back before the next chunk starts (nothing computed is lost when a run
dies), shows a progress bar with counts, and returns the new records with how many items were
already done. Each stage's funnel (its own drop reasons) is built from the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from tqdm.auto import tqdm

from stepdpo.seeding import derive_seed

ItemT = TypeVar("ItemT")
RecordT = TypeVar("RecordT")


@dataclass
class KeyedRun(Generic[RecordT]):
    """What one :func:`run_keyed` call did: the items it was given, how many were done already, the new records."""

    items: int
    already_done: int
    new: list[RecordT] = field(default_factory=list)


def run_keyed(items: Sequence[ItemT], make: Callable[[list[ItemT], list[int]], list[RecordT]], *, stage: str, seed: int | None,
              key: Callable[[ItemT], str], done: Callable[[ItemT], bool] = lambda item: False,
              save: Callable[[list[RecordT]], object] | None = None, chunk_size: int = 16, unit: str = "item",
              desc: str | None = None) -> KeyedRun[RecordT]:
    """Make the records of every item of ``items`` not ``done``, ``chunk_size`` items per ``make(chunk, seeds)`` call.

    ``seeds[i]`` is ``derive_seed(seed, stage, key(chunk[i]))``: an item's records do not depend
    on the chunk it lands in or on what was done before. ``seed=None`` for a stage that seeds
    deeper than per item (a localizer per prefix, SCDPO per step): ``make`` then gets no seeds. ``save`` gets each chunk's records
    as soon as they are made (e.g. ``store.append``). The progress bar (``desc``, default the
    stage) counts items, starting at the ones already done.
    """
    todo = [item for item in items if not done(item)]
    result: KeyedRun[RecordT] = KeyedRun(items=len(items), already_done=len(items) - len(todo))
    size = max(1, chunk_size)
    with tqdm(total=len(items), initial=result.already_done, desc=desc or stage, unit=unit, disable=not todo) as bar:
        for start in range(0, len(todo), size):
            chunk = list(todo[start: start + size])
            records = make(chunk, [] if seed is None else [derive_seed(seed, stage, key(item)) for item in chunk])
            if save is not None:
                save(records)
            result.new += records
            bar.update(len(chunk))
    return result
