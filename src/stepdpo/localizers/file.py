"""Labels imported from a file: human annotations or another tool's output.

The file is JSONL, one object per line with ``sample_id`` (string) and
``first_wrong_step`` (a 1-based integer, or null for "no wrong step").
Samples without a line are reported as ``unlabeled``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from stepdpo.errors import InputError
from stepdpo.localizers.base import STATUS_NO_WRONG_STEP, STATUS_OK, STATUS_UNLABELED
from stepdpo.records import LocatedError, Problem, Sample, read_jsonl_dicts


def read_labels(path: str | Path) -> dict[str, int | None]:
    """sample_id -> first wrong step (None = no wrong step); bad lines raise InputError naming file, line, field."""
    labels: dict[str, int | None] = {}
    for line, obj in read_jsonl_dicts(path):
        sample_id = obj.get("sample_id")
        if not isinstance(sample_id, str) or not sample_id:
            raise InputError(str(path), "expected a non-empty string", line, "sample_id")
        if "first_wrong_step" not in obj:
            raise InputError(str(path), "missing", line, "first_wrong_step")
        step = obj["first_wrong_step"]
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise InputError(str(path), f"expected an integer >= 1 or null, got {step!r}", line, "first_wrong_step")
        if sample_id in labels:
            raise InputError(str(path), f"duplicate label for {sample_id!r}", line, "sample_id")
        labels[sample_id] = step
    return labels


class FileLocalizer:
    """Looks each sample up in a label file."""

    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.labels = read_labels(self.path)

    def locate_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[LocatedError]:
        out = []
        for problem, sample in items:
            if sample.id not in self.labels:
                out.append(LocatedError(sample_id=sample.id, problem_id=problem.id, first_wrong_step=None,
                                        localizer=self.name, status=STATUS_UNLABELED))
                continue
            k = self.labels[sample.id]
            if k is not None and k > len(sample.steps):
                raise InputError(str(self.path), f"step {k} out of range: sample {sample.id} has {len(sample.steps)} steps", None, "first_wrong_step")
            out.append(LocatedError(sample_id=sample.id, problem_id=problem.id, first_wrong_step=k, localizer=self.name,
                                    status=STATUS_OK if k is not None else STATUS_NO_WRONG_STEP, evidence={"labels": str(self.path)}))
        return out
