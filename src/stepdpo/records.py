"""The typed records that flow between stages, and the resumable JSONL store they live in.

Every stage reads and writes these dataclasses; no stage re-parses another
stage's strings. Records are stored one JSON object per line. A store is
append-only and keyed: a rerun skips the keys already present, and a torn last
line (a process killed mid-write) is detected, reported and cut off rather than
parsed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Sequence, TypeVar

import dacite

from stepdpo.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """A question with a known final answer."""

    id: str
    question: str
    answer: str
    """Gold final answer as text (e.g. '72', '\\frac{1}{2}')."""
    source: str = ""
    """Loader spec or file the problem came from, e.g. 'gsm8k:test'."""
    solution: str | None = None
    """A reference worked solution in the step format (``Step 1: ...``), when known."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Source-specific extras: MATH level/subject, synthetic intermediate values, ..."""


@dataclass
class Sample:
    """One model response to one problem, graded."""

    id: str
    """'<problem_id>#<index>'."""
    problem_id: str
    prompt: str
    """Exact text the generator was given (chat template applied, step priming included)."""
    response: str
    """The assistant's solution text, starting at 'Step 1:' (priming included, header excluded)."""
    steps: list[str]
    """``split_steps(response)``."""
    predicted: str | None
    """The final answer the response states (box, 'The answer is', '####'), None when it states none."""
    correct: bool
    """Graded by :func:`stepdpo.grading.grade_for_data`: a stated answer equal to gold, in a response the model ended."""
    num_tokens: int = 0
    finish_reason: str = ""
    """'eos', 'stop' (a stop string), 'length' (the token limit) or 'error: ...'; records written before
    'eos' was told apart say 'stop' for both of the first two."""
    temperature: float = 0.0
    model: str = ""


@dataclass
class LocatedError:
    """The first wrong step of a wrong sample, as decided by a localizer."""

    sample_id: str
    problem_id: str
    first_wrong_step: int | None
    """1-based index into the sample's steps; None when the localizer found no wrong step."""
    localizer: str
    confidence: float | None = None
    """Localizer-specific certainty in [0, 1] (e.g. the share of rollouts that agree)."""
    rollouts: int = 0
    """Continuations generated to reach the decision (rollout localizer)."""
    localizer_tokens: int = 0
    """Tokens the localizer generated to decide: its rollouts', or the judge's answer (records
    written before this name was chosen call it ``rollout_tokens``; both load)."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """Per-prefix statistics (step -> successes/trials), the judge's analysis, ..."""
    status: str = "ok"
    """'ok', or why no decision was made ('unparseable', 'no_wrong_step', 'failed: ...')."""


@dataclass
class Rectification:
    """Candidate winning steps for one located error."""

    sample_id: str
    problem_id: str
    first_wrong_step: int
    prefix: str
    """Exact text of steps 1..k-1 of the original sample."""
    rejected: str
    """Step k of the original sample."""
    chosen: list[str]
    """Deduplicated first steps of continuations that reached the gold answer."""
    full_chosen: list[str]
    """The whole continuations, aligned with ``chosen``."""
    tried: int = 0
    reached_gold: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)
    """The judge's verdict on each candidate when ``stepdpo rectify --confirm`` ran (empty otherwise)."""


@dataclass
class StepPair:
    """One preference pair, in the public Math-Step-DPO-10K schema plus provenance."""

    id: str
    dataset: str
    prompt: str
    """The problem text."""
    initial_reason_steps: str
    """'Let's think step by step.\\n' followed by the exact text of the correct prefix steps."""
    chosen: str
    rejected: str
    full_chosen: str
    full_rejected: str
    answer: str
    kind: str = "step-dpo"
    """'step-dpo', 'dpo' (whole solutions), 'scdpo' (whole solutions sharing a prefix), 'judge-free'."""
    problem_id: str = ""
    sample_id: str = ""
    step_index: int | None = None
    localizer: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


RecordT = TypeVar("RecordT")

_DACITE = dacite.Config(strict=True, check_types=True)


RENAMED_FIELDS: dict[type, dict[str, str]] = {LocatedError: {"rollout_tokens": "localizer_tokens"}}
"""Old field name -> current one, per record type: records written under the old name still load."""


def record_from_dict(record_type: type[RecordT], data: dict[str, Any], path: str | os.PathLike = "<dict>", line: int | None = None) -> RecordT:
    """Build a record from a dict, with an error that names the file, line and field."""
    for old, new in RENAMED_FIELDS.get(record_type, {}).items():
        if old in data and new not in data:
            data = {**{k: v for k, v in data.items() if k != old}, new: data[old]}
    try:
        return dacite.from_dict(record_type, data, config=_DACITE)
    except dacite.UnexpectedDataError as err:
        raise InputError(str(path), f"unexpected field(s) for {record_type.__name__}", line, ", ".join(sorted(err.keys))) from None
    except dacite.MissingValueError as err:
        raise InputError(str(path), f"missing for {record_type.__name__}", line, err.field_path) from None
    except dacite.WrongTypeError as err:
        raise InputError(str(path), f"expected {err.field_type}, got {type(err.value).__name__}", line, err.field_path) from None
    except dacite.DaciteError as err:
        raise InputError(str(path), str(err), line) from None


def record_to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole file or nothing: a temporary file in the same folder, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_jsonl_dicts(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) from a JSONL file; blank lines are skipped.

    With ``allow_torn_tail`` a last line that has no newline and does not parse
    (a writer killed mid-line) is skipped with a warning; anywhere else a line
    that does not parse is an :class:`InputError`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    lines = raw.split(b"\n")
    torn_candidate = not raw.endswith(b"\n")
    for number, line_bytes in enumerate(lines, start=1):
        if not line_bytes.strip():
            continue
        is_last = number == len(lines)
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            if allow_torn_tail and is_last and torn_candidate:
                log.warning("%s:%d: dropping a torn last line (not UTF-8)", path, number)
                return
            raise InputError(str(path), f"not valid UTF-8 (byte {err.start})", number) from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            if allow_torn_tail and is_last and torn_candidate:
                log.warning("%s:%d: dropping a torn last line (%d bytes)", path, number, len(line_bytes))
                return
            raise InputError(str(path), f"malformed JSON: {err.msg} at column {err.colno}", number) from None
        if not isinstance(obj, dict):
            raise InputError(str(path), f"expected a JSON object, got {type(obj).__name__}", number)
        yield number, obj


class RecordStore(Generic[RecordT]):
    """An append-only JSONL file of one record type, keyed for resumption.

    Loading reads what is there and remembers the keys already written. A last
    line without its newline is either torn (it does not parse: it is cut off the
    file) or complete up to the newline (the process died between the closing
    ``}`` and the ``\n``: it is kept, and the newline is written), so the file and
    the records in memory always agree. ``append`` writes whole lines and flushes
    them to disk, so a SIGKILL loses at most the line being written, never earlier ones.
    """

    def __init__(self, path: str | os.PathLike, record_type: type[RecordT], key: str = "id"):
        self.path = Path(path)
        self.record_type = record_type
        self.key = key
        self._keys: set[Any] = set()
        self._records: list[RecordT] = []
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        last_line = raw.count(b"\n") + 1
        kept_last = False
        records: list[RecordT] = []
        for number, obj in read_jsonl_dicts(self.path, allow_torn_tail=True):
            kept_last = number == last_line
            record = record_from_dict(self.record_type, obj, self.path, number)
            key = getattr(record, self.key)
            if key in self._keys:
                continue  # a duplicate can only come from a crash between write and bookkeeping
            self._keys.add(key)
            records.append(record)
        self._records = records
        if raw and not raw.endswith(b"\n"):
            # The next append must start on a fresh line: end a complete last record (loaded above)
            # with its newline, or cut a torn one off, as it was not loaded.
            with open(self.path, "r+b") as handle:
                if kept_last:
                    handle.seek(0, os.SEEK_END)
                    handle.write(b"\n")
                else:
                    handle.truncate(raw.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def __contains__(self, key: Any) -> bool:
        self._load()
        return key in self._keys

    def __len__(self) -> int:
        self._load()
        return len(self._records)

    def keys(self) -> set[Any]:
        self._load()
        return set(self._keys)

    def records(self) -> list[RecordT]:
        self._load()
        return list(self._records)

    def append(self, records: Iterable[RecordT]) -> int:
        """Append the records whose key is new; returns how many were written."""
        self._load()
        lines = []
        for record in records:
            key = getattr(record, self.key)
            if key in self._keys:
                continue
            self._keys.add(key)
            self._records.append(record)
            lines.append(json.dumps(record_to_dict(record), ensure_ascii=False) + "\n")
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        return len(lines)


def append_failures(path: Path, failures: Sequence[Any]) -> None:
    """Log failed attempts (one JSON line each, with a UTC time) so they can be inspected; they are retried on rerun."""
    if not failures:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"time": stamp, **record_to_dict(f)}, ensure_ascii=False) + "\n" for f in failures))
        handle.flush()
        os.fsync(handle.fileno())
