import json
import os

import pytest

from stepdpo.config import config_from_dict, load_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.generation.base import GeneratorConfig
from stepdpo.records import Problem, RecordStore, atomic_write_json, read_jsonl_dicts


def test_store_appends_and_resumes(tmp_path):
    path = tmp_path / "p.jsonl"
    store = RecordStore(path, Problem)
    assert store.append([Problem(id="a", question="q", answer="1"), Problem(id="b", question="q", answer="2")]) == 2
    again = RecordStore(path, Problem)
    assert again.keys() == {"a", "b"}
    assert again.append([Problem(id="a", question="q", answer="1"), Problem(id="c", question="q", answer="3")]) == 1
    assert [p.id for p in RecordStore(path, Problem).records()] == ["a", "b", "c"]


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "p.jsonl"
    RecordStore(path, Problem).append([Problem(id="a", question="q", answer="1")])
    with open(path, "ab") as handle:
        handle.write(b'{"id": "b", "question": "q", "ans')
    store = RecordStore(path, Problem)
    assert store.keys() == {"a"}
    store.append([Problem(id="b", question="q", answer="2")])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_last_record_without_its_newline_is_kept_on_disk_and_in_memory(tmp_path):
    """A process killed between a line's closing brace and its newline left a whole record: loading keeps it
    in memory, so it must stay in the file too (it used to be cut off, and later stages never saw it)."""
    path = tmp_path / "p.jsonl"
    RecordStore(path, Problem).append([Problem(id="a", question="q", answer="1")])
    with open(path, "ab") as handle:
        handle.write(b'{"id": "b", "question": "q", "answer": "2"}')
    store = RecordStore(path, Problem)
    assert store.keys() == {"a", "b"}
    assert [p.id for p in RecordStore(path, Problem).records()] == ["a", "b"]
    assert store.append([Problem(id="b", question="q", answer="2"), Problem(id="c", question="q", answer="3")]) == 1
    lines = path.read_text().split("\n")
    assert [json.loads(line)["id"] for line in lines[:-1]] == ["a", "b", "c"] and lines[-1] == ""
    assert [p.id for p in RecordStore(path, Problem).records()] == ["a", "b", "c"]


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "q", "answer": "1"}\n{oops\n{"id": "b", "question": "q", "answer": "1"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: malformed JSON"):
        RecordStore(path, Problem).records()


def test_wrong_field_type_names_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "q", "answer": 3}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'answer'"):
        RecordStore(path, Problem).records()


def test_non_utf8_is_an_input_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(InputError, match="not valid UTF-8"):
        list(read_jsonl_dicts(path))


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"x": 1})
    assert os.listdir(tmp_path) == ["r.json"]


def test_config_yaml_errors_name_line_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backend: hf\nbatch_sizee: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: unknown key 'batch_sizee'"):
        load_config(GeneratorConfig, path)
    path.write_text("backend: hf\nbatch_size: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: key 'batch_size' expects int"):
        load_config(GeneratorConfig, path)
    assert config_from_dict(GeneratorConfig, {"batch_size": 4}).batch_size == 4


def test_located_error_written_with_the_old_token_field_still_loads(tmp_path):
    """LocatedError.rollout_tokens was renamed localizer_tokens (a judge's tokens are no rollouts); old files load."""
    from stepdpo.records import LocatedError, record_to_dict

    path = tmp_path / "located.jsonl"
    old = {"sample_id": "p#0", "problem_id": "p", "first_wrong_step": 2, "localizer": "judge", "rollout_tokens": 321}
    path.write_text(json.dumps(old) + "\n")
    [located] = RecordStore(path, LocatedError, key="sample_id").records()
    assert located.localizer_tokens == 321 and "rollout_tokens" not in record_to_dict(located)
