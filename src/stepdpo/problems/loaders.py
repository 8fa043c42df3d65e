"""Problem loaders: the shipped benchmark files, local files, and Hugging Face datasets.

Every loader turns rows (dicts) into :class:`~stepdpo.records.Problem` through a
row converter that raises :class:`BadRow` naming the offending field; the
caller turns that into an :class:`~stepdpo.errors.InputError` with the file and
line, or skips and counts the row (``on_bad_row="skip"``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from stepdpo.errors import ConfigError, InputError, StepdpoError
from stepdpo.problems.answers import format_number, gsm8k_final, gsm8k_to_steps, last_boxed
from stepdpo.records import Problem

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
QUESTION_FIELDS = ("question", "problem", "Problem", "input", "prompt", "query", "Question")
ANSWER_FIELDS = ("answer", "final_answer", "target", "gold", "Answer", "label", "solution")
ID_FIELDS = ("id", "unique_id", "ID", "idx", "uid")
_PROBLEM_FIELDS = {"id", "question", "answer", "source", "solution", "metadata"}


class BadRow(Exception):
    """A row that cannot become a Problem; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class LoadReport:
    """What a load read, kept and skipped (``on_bad_row="skip"``), with the first few reasons."""

    spec: str
    path: str = ""
    rows: int = 0
    loaded: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Skipped rows by reason (the error message without file and line)."""
    examples: list[str] = field(default_factory=list)
    """Up to 10 full error lines of skipped rows (file:line: field: message)."""

    def skip(self, error: InputError) -> None:
        self.skipped += 1
        reason = (f"field '{error.field}': " if error.field else "") + error.message
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(str(error))


log = logging.getLogger(__name__)

Converter = Callable[[dict[str, Any], int], Problem]


# --- data directory -------------------------------------------------------------------------


def data_dir() -> Path:
    """Folder of the shipped data: $STEPDPO_DATA_DIR, else ``<project root>/../shared/data``, else ``./../shared/data``."""
    override = os.environ.get("STEPDPO_DATA_DIR")
    if override:
        path = Path(override)
        if not path.is_dir():
            raise ConfigError(f"STEPDPO_DATA_DIR={override}: not a folder")
        return path
    project_root = Path(__file__).resolve().parents[3]
    for candidate in (project_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"shipped data not found at {project_root.parent / 'shared' / 'data'}; set STEPDPO_DATA_DIR to the folder holding gsm8k/, math/, ..."
    )


# --- field helpers ----------------------------------------------------------------------------


def _text(row: dict[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise BadRow(name, "missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(name, f"expected text, got {type(value).__name__}")
    text = value.strip() if isinstance(value, str) else format_number(value)
    if not text:
        raise BadRow(name, "empty")
    return text


def _number(row: dict[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise BadRow(name, "missing")
    value = row[name]
    if isinstance(value, str):
        try:
            value = float(value.replace(",", ""))
        except ValueError:
            raise BadRow(name, f"expected a number, got {row[name]!r}") from None
    try:
        return format_number(value)
    except (TypeError, ValueError) as err:
        raise BadRow(name, str(err)) from None


def gold_from_text(text: str) -> tuple[str, str | None]:
    """(gold answer, step-format solution or None) from an answer field that may be a whole worked solution.

    ``... #### N`` (GSM8K) gives N and the converted steps; text with a
    ``\\boxed{}`` gives the last box's content; anything else is the answer itself.
    """
    final = gsm8k_final(text)
    if final is not None:
        try:
            return final, gsm8k_to_steps(text)
        except ValueError:
            return final, None
    if "\\boxed" in text or "\\fbox" in text:
        boxed = last_boxed(text)
        if not boxed:
            raise ValueError("\\boxed{} is empty or not closed")
        return boxed, text if text.lstrip().startswith("Step 1:") else None
    return text, None


# --- shipped sets -----------------------------------------------------------------------------


def _gsm8k(split: str) -> Converter:
    def convert(row: dict[str, Any], index: int) -> Problem:
        question = _text(row, "question")
        answer_text = _text(row, "answer")
        final = gsm8k_final(answer_text)
        if final is None:
            raise BadRow("answer", "no '#### N' final answer")
        try:
            solution = gsm8k_to_steps(answer_text)
        except ValueError as err:
            raise BadRow("answer", str(err)) from None
        return Problem(id=f"gsm8k:{split}:{index}", question=question, answer=final, source=f"gsm8k:{split}", solution=solution)

    return convert


def _math(name: str, split: str) -> Converter:
    def convert(row: dict[str, Any], index: int) -> Problem:
        question = _text(row, "problem")
        solution = _text(row, "solution")
        answer = last_boxed(solution)
        if not answer:
            raise BadRow("solution", "no \\boxed{} final answer")
        metadata = {key: row[key] for key in ("level", "type") if key in row}
        return Problem(id=_text(row, "unique_id"), question=question, answer=answer, source=f"{name}:{split}", metadata=metadata)

    return convert


def _svamp(row: dict[str, Any], index: int) -> Problem:
    body, question = _text(row, "Body"), _text(row, "Question")
    # Some bodies end without a full stop; the question must still read as its own sentence.
    joined = f"{body} {question}" if body.endswith((".", "!", "?")) else f"{body}. {question}"
    metadata = {key: row[key] for key in ("Equation", "Type") if key in row}
    return Problem(id=f"svamp:{_text(row, 'ID')}", question=joined, answer=_number(row, "Answer"), source="svamp:test", metadata=metadata)


def _mawps(row: dict[str, Any], index: int) -> Problem:
    metadata = {"type": row["type"]} if "type" in row else {}
    return Problem(id=f"mawps:test:{_text(row, 'idx')}", question=_text(row, "input"), answer=_number(row, "target"), source="mawps:test", metadata=metadata)


def _multiarith(row: dict[str, Any], index: int) -> Problem:
    return Problem(id=f"multiarith:test:{index}", question=_text(row, "input"), answer=_number(row, "target"), source="multiarith:test")


# name -> split -> (file under the data folder, converter)
SHIPPED: dict[str, dict[str, tuple[str, Converter]]] = {
    "gsm8k": {split: (f"gsm8k/{split}.jsonl", _gsm8k(split)) for split in ("train", "test")},
    "math": {split: (f"math/{split}.jsonl", _math("math", split)) for split in ("train", "test")},
    "math500": {"test": ("math500/test.jsonl", _math("math500", "test"))},
    "svamp": {"test": ("svamp/test.jsonl", _svamp)},
    "mawps": {"test": ("mawps/test.jsonl", _mawps)},
    "multiarith": {"test": ("mawps/multiarith.jsonl", _multiarith)},
}


# --- generic rows (local files, hub datasets) -------------------------------------------------


@dataclass(frozen=True)
class FieldNames:
    """Which columns hold the question, the answer and the id (None: detect from the usual names)."""

    question: str | None = None
    answer: str | None = None
    id: str | None = None

    def resolve(self, columns: Iterable[str], where: str) -> "FieldNames":
        """Pick the columns of a table once; a missing one is an InputError naming the file and field."""
        columns = list(columns)
        picked = {}
        for role, explicit, candidates in (("question", self.question, QUESTION_FIELDS), ("answer", self.answer, ANSWER_FIELDS)):
            if explicit is not None:
                if explicit not in columns:
                    raise InputError(where, f"no column '{explicit}' (columns: {', '.join(columns)})", field=explicit)
                picked[role] = explicit
            else:
                found = next((name for name in candidates if name in columns), None)
                if found is None:
                    raise InputError(where, f"no {role} column (looked for {', '.join(candidates)}; columns: {', '.join(columns)})", field=role)
                picked[role] = found
        if self.id is not None and self.id not in columns:
            raise InputError(where, f"no column '{self.id}' (columns: {', '.join(columns)})", field=self.id)
        picked["id"] = self.id if self.id is not None else next((name for name in ID_FIELDS if name in columns), None)
        return FieldNames(**picked)


def generic_converter(fields: FieldNames, source: str, id_prefix: str) -> Converter:
    """Rows with a question, an answer (a number, a bare answer, a ``#### N`` or ``\\boxed{}`` solution) and maybe an id.

    Rows that are stored :class:`Problem` records (exactly its fields) load
    unchanged, so a pipeline's ``problems/*.jsonl`` round-trips.
    """

    def convert(row: dict[str, Any], index: int) -> Problem:
        if set(row) <= _PROBLEM_FIELDS and {"id", "question", "answer", "source"} <= set(row) and fields == FieldNames():
            return _stored_problem(row)
        question_field = fields.question or next((name for name in QUESTION_FIELDS if name in row), "question")
        answer_field = fields.answer or next((name for name in ANSWER_FIELDS if name in row), "answer")
        id_field = fields.id if fields.id is not None else next((name for name in ID_FIELDS if name in row), None)
        question = _text(row, question_field)
        try:
            answer, solution = gold_from_text(_text(row, answer_field))
        except ValueError as err:
            raise BadRow(answer_field, str(err)) from None
        if solution is None and answer_field != "solution" and isinstance(row.get("solution"), str) and row["solution"].lstrip().startswith("Step 1:"):
            solution = row["solution"]
        problem_id = _text(row, id_field) if id_field is not None else f"{id_prefix}:{index}"
        metadata = {key: row[key] for key in ("level", "type") if isinstance(row.get(key), (str, int, float))}
        return Problem(id=problem_id, question=question, answer=answer, source=source, solution=solution, metadata=metadata)

    return convert


def _stored_problem(row: dict[str, Any]) -> Problem:
    from stepdpo.records import record_from_dict

    try:
        problem = record_from_dict(Problem, row)
    except InputError as err:
        raise BadRow(err.field, err.message) from None
    for name in ("id", "question", "answer"):
        if not str(getattr(problem, name)).strip():
            raise BadRow(name, "empty")
    return problem


# --- reading files ------------------------------------------------------------------------------


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(str(path), f"not valid UTF-8 (byte {err.start})", raw.count(b"\n", 0, err.start) + 1) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """(line, object) per non-blank line; a line that is not a UTF-8 JSON object yields (line, InputError) instead of
    raising, so :func:`convert_rows` can skip it under ``on_bad_row="skip"`` and go on with the next line."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        item: dict[str, Any] | InputError
        try:
            item = _jsonl_object(path, number, line)
        except InputError as err:
            item = err
        yield number, item


def _jsonl_object(path: Path, number: int, line: bytes) -> dict[str, Any]:
    """One JSONL line as an object: UTF-8, valid JSON and a JSON object, else an InputError at its line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(str(path), f"not valid UTF-8 (byte {err.start})", number) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(str(path), f"malformed JSON: {err.msg} at column {err.colno}", number) from None
    if not isinstance(obj, dict):
        raise InputError(str(path), f"expected a JSON object, got {type(obj).__name__}", number)
    return obj


def read_rows(path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], list[str] | None]:
    """(iterator of (line or row number, row), the table's columns when the format has a header).

    JSONL rows are numbered by line, JSON-array rows and Parquet rows by position
    (1-based), CSV rows by the line they end on.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(str(path), "file not found")
    if suffix == ".jsonl":
        return _jsonl_rows(path), None
    if suffix == ".json":
        text = _decode(path, path.read_bytes())
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(str(path), f"malformed JSON: {err.msg} at column {err.colno}", err.lineno) from None
        if isinstance(data, dict):
            lists = [value for value in data.values() if isinstance(value, list)]
            if len(lists) != 1:
                raise InputError(str(path), "expected a JSON array of objects (or an object holding exactly one array)")
            data = lists[0]
        if not isinstance(data, list):
            raise InputError(str(path), f"expected a JSON array of objects, got {type(data).__name__}")
        for position, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise InputError(str(path), f"item {position}: expected a JSON object, got {type(item).__name__}")
        return iter(enumerate(data, start=1)), None
    if suffix == ".csv":
        text = _decode(path, path.read_bytes())
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            for row in reader:
                if None in row:
                    raise InputError(str(path), f"{len(row[None]) + len(columns)} cells for {len(columns)} columns", reader.line_num)
                yield reader.line_num, {key: (value if value != "" else None) for key, value in row.items()}

        return rows(), columns
    if suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        try:
            table = pyarrow.parquet.read_table(path)
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise InputError(str(path), f"not a readable Parquet file ({err})") from None
        return iter(enumerate(table.to_pylist(), start=1)), list(table.column_names)
    raise ConfigError(f"{path}: unknown file type '{suffix}' (expected one of {', '.join(FILE_SUFFIXES)})")


def convert_rows(
    rows: Iterable[tuple[int, dict[str, Any] | InputError]],
    convert: Converter,
    where: str,
    report: LoadReport,
    skip_bad: bool,
) -> list[Problem]:
    """Apply a converter to numbered rows; bad rows and duplicate ids raise or are skipped and counted in ``report``."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, (line, row) in enumerate(rows):
        report.rows += 1
        try:
            if isinstance(row, InputError):
                raise row
            try:
                problem = convert(row, index)
            except BadRow as bad:
                raise InputError(where, bad.message, line, bad.field) from None
            if problem.id in seen:
                raise InputError(where, f"duplicate id {problem.id!r} (first on line {seen[problem.id]})", line, "id")
        except InputError as err:
            if not skip_bad:
                raise
            report.skip(err)
            continue
        seen[problem.id] = line
        problems.append(problem)
    if report.rows == 0:
        raise InputError(where, "no rows (empty file)")
    if not problems:
        raise InputError(where, f"no usable rows: all {report.rows} were skipped ({'; '.join(report.reasons)})")
    report.loaded = len(problems)
    return problems


def load_shipped(name: str, split: str, report: LoadReport) -> list[Problem]:
    """A shipped benchmark split. Its few unusable rows (MATH train has two solutions with an
    empty ``\\boxed{}``) are always skipped, counted in ``report`` and logged: the files are
    read-only and a user cannot fix them."""
    relative, convert = SHIPPED[name][split]
    path = data_dir() / relative
    report.path = str(path)
    rows, _ = read_rows(path)
    problems = convert_rows(rows, convert, str(path), report, skip_bad=True)
    if report.skipped:
        log.warning("%s: skipped %d unusable row(s): %s", path, report.skipped, "; ".join(report.examples))
    return problems


def load_file(path: Path, fields: FieldNames, source: str, report: LoadReport, skip_bad: bool) -> list[Problem]:
    report.path = str(path)
    rows, columns = read_rows(path)
    if columns is not None:
        fields = fields.resolve(columns, str(path))
    return convert_rows(rows, generic_converter(fields, source, path.name), str(path), report, skip_bad)


def load_hub(name: str, split: str, config_name: str | None, fields: FieldNames, source: str, report: LoadReport, skip_bad: bool) -> list[Problem]:
    """A Hugging Face dataset split through ``datasets.load_dataset``; an unreachable hub is one clear StepdpoError."""
    import datasets

    report.path = f"hf:{name}"
    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") else ""
        raise StepdpoError(
            f"hf:{name} split {split!r}: cannot load from the Hugging Face hub{offline}: {type(err).__name__}: {first_line}; "
            "download it as a file and pass its path instead"
        ) from None
    fields = fields.resolve(dataset.column_names, f"hf:{name}:{split}")
    rows = ((position, row) for position, row in enumerate(dataset, start=1))
    return convert_rows(rows, generic_converter(fields, source, f"{name}:{split}"), f"hf:{name}:{split}", report, skip_bad)
