"""One interface for every way of finding the first wrong step of a wrong sample.

A localizer takes (problem, sample) pairs and returns one
:class:`~stepdpo.records.LocatedError` per pair, in order. ``locate_many`` is the
batched entry point (rollouts and judge calls are far cheaper in batches);
``locate`` is the one-item convenience.

Status values a localizer may return (``LocatedError.status``):

- ``ok``: ``first_wrong_step`` holds the 1-based index of the first wrong step;
- ``no_wrong_step``: the localizer judged every step sound (no pair can be made);
- ``unparseable``: a judge verdict that could not be read (never guessed);
- ``unlabeled``: no label for this sample (file localizer);
- ``failed: ...``: the attempt itself failed (e.g. an API error); retried on a rerun.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from stepdpo.records import LocatedError, Problem, Sample

STATUS_OK = "ok"
STATUS_NO_WRONG_STEP = "no_wrong_step"
STATUS_UNPARSEABLE = "unparseable"
STATUS_UNLABELED = "unlabeled"
FAILED_PREFIX = "failed"


def is_failure(located: LocatedError) -> bool:
    """True for an attempt that failed and should be retried, not stored as a decision."""
    return located.status.startswith(FAILED_PREFIX)


@runtime_checkable
class Localizer(Protocol):
    name: str
    """Short name written into ``LocatedError.localizer`` ('rollout-binary', 'judge', 'exact', 'file')."""

    def locate_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[LocatedError]:
        """One decision per (problem, sample), in order."""
        ...


def locate(localizer: Localizer, problem: Problem, sample: Sample) -> LocatedError:
    """Locate the first wrong step of one sample."""
    return localizer.locate_many([(problem, sample)])[0]


def empty_response(problem: Problem, sample: Sample, localizer: str) -> LocatedError | None:
    """The decision for a sample with no steps at all (nothing to locate), else None."""
    if sample.steps:
        return None
    return LocatedError(sample_id=sample.id, problem_id=problem.id, first_wrong_step=None, localizer=localizer,
                        status=STATUS_NO_WRONG_STEP, evidence={"reason": "empty response"})
