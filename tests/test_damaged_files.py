"""Every reader of a file specdec wrote or the user gave (prompts JSONL, results.json, specdec_run.json,
a teacher cache's meta.json / build_id / checksums.jsonl, metrics.jsonl, checkpoints) turns a damaged
file into one line that names the file and says what to do: no traceback, no message without a file."""
import json

import pytest
import torch

from specdec.benchmark.results import read_results
from specdec.cli import main
from specdec.common.files import read_jsonl
from specdec.common.outdir import RUN_FILE, claim
from specdec.data.prompts import load_prompts_file
from specdec.distill import cache as cache_mod
from specdec.distill.cache import TeacherCache
from specdec.distill.checkpoint import CHECKSUM_FILE, STATE_FILE, MetricsLog, load_latest, save_checkpoint

NOT_UTF8 = b'{"prompt": "caf\xe9"}\n'          # Latin-1, as an editor may save it


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and all(w in err for w in words), err


# ---------------------------------------------------------------------------------------------- user files

def test_a_prompts_file_that_is_not_utf8_names_the_file_and_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n' + NOT_UTF8)
    with pytest.raises(ValueError, match=r"prompts.jsonl:2 is not UTF-8 text \(byte 0xe9\); save the prompts file "
                                         "as UTF-8"):
        load_prompts_file(path)
    monkeypatch.setattr("specdec.models.load.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    assert main(["bench", "--prompts", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    _one_line(capsys, "prompts.jsonl:2 is not UTF-8")
    # a JSON string may hold U+2028 (a line separator to str.splitlines, not to JSONL)
    path.write_text(json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_prompts_file(path)[0]["prompt"] == "a\u2028b"


# ---------------------------------------------------------------------------------------------- results.json

@pytest.mark.parametrize("content, words", [
    (b'{"meta": {"x": "\xff"}, "runs": []}', ["results.json:1 is not UTF-8"]),
    (json.dumps({"runs": [{"method": "sd", "gamma": 2, "temperature": "hot", "batch_size": 1}]}).encode(),
     ["results.json: row 0: 'temperature' is a string"]),
    (json.dumps({"runs": [{"method": "sd", "temperature": 0.0, "batch_size": 1, "tokens_per_s": [1]}]}).encode(),
     ["results.json: row 0: 'tokens_per_s' is an array"]),
])
def test_plot_of_a_damaged_results_file_is_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    assert main(["plot", str(path)]) == 2
    _one_line(capsys, *words)


def test_resume_of_a_results_file_with_damaged_meta_goes_on(tmp_path, monkeypatch):
    """meta.costs that is not an object is measured again (as costmodel drops an unusable entry); a
    meta.resumed that is not a list was a TypeError traceback."""
    from specdec.benchmark import bench

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {"costs": ["x"], "resumed": "yesterday"}, "runs": []}))
    monkeypatch.setattr(bench, "meta_of", lambda cfg, inputs: {"costs": {}, "date": "today"})
    meta, rows = bench._start(bench.BenchConfig(resume=True, out=str(tmp_path)), None, path)
    assert meta["costs"] == {} and meta["resumed"] == ["today"] and rows == []


# ---------------------------------------------------------------------------------------------- specdec_run.json

@pytest.mark.parametrize("content, words", [
    (b'{"command": "bench", "conf', "is not valid JSON"),
    (b"[1, 2]", "holds a JSON array, not an object"),
    (b'{"config": {}}', "has no 'command'"),
    (b'{"command": "bench", "config": [1]}', "'config' is an array, not an object"),
    (b'{"command": "bench", "config": {}, "outputs": "results.json"}', "'outputs' is not a list of names"),
    (b'{"command": "bench", "config": {}, "inputs": 3}', "'inputs' is a number"),
    (b'{"command": "b\xe9nch", "config": {}}', "is not UTF-8 text"),
])
def test_a_damaged_run_file_is_named_for_every_way_in(tmp_path, content, words):
    """A truncated run file read as {} gave "holds a `specdec None` run"; a list was an AttributeError."""
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_bytes(content)
    (out / "results.json").write_text("{}")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError) as e:
            claim(out, "bench", {}, can_resume=True, **kw)
        assert str(out / RUN_FILE) in str(e.value) and words in str(e.value) and "None" not in str(e.value)
        assert "delete the folder's files yourself, or choose another --out" in str(e.value)
    assert (out / "results.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------------- teacher cache

@pytest.fixture
def cache_dir(tmp_path):
    """A tiny finished teacher cache, written the way build_cache writes one (no model needed)."""
    folder = tmp_path / "cache"
    folder.mkdir()
    build_id = cache_mod._build_id(folder)
    step = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "cont_mask": torch.ones(1, 1, dtype=torch.bool), "source": "dataset",
            "topk_idx": torch.zeros(1, 2, dtype=torch.int32), "topk_logp": torch.zeros(1, 2),
            "tail_logp": torch.zeros(1)}
    entry = cache_mod._write_step(folder / "step_000000.pt", {"cache_id": build_id, "step": 0, "micro_batches": [step]})
    (folder / "meta.json").write_text(json.dumps({"format": cache_mod.FORMAT, "steps": 1, "cache_id": build_id,
                                                  "files": {"step_000000.pt": entry}}))
    TeacherCache(folder).entry(0, 0)
    return folder


def _edit(raw: bytes, change) -> bytes:
    d = json.loads(raw)
    change(d)
    return json.dumps(d).encode()


@pytest.mark.parametrize("damage, words", [
    (lambda m: m[:30], "meta.json is not valid JSON"),
    (lambda m: b"\xff" + m, "meta.json:1 is not UTF-8"),
    (lambda m: b"[]", "meta.json holds a JSON array"),
    (lambda m: _edit(m, lambda d: d.pop("steps")), "meta.json has no 'steps'"),
    (lambda m: _edit(m, lambda d: d.update(steps="1")), "'steps' is a string, not a number"),
    (lambda m: _edit(m, lambda d: d.update(files=["step_000000.pt"])), "'files' is an array, not an object"),
    (lambda m: _edit(m, lambda d: d["files"]["step_000000.pt"].update(size="9")),
     "meta.json: step_000000.pt: 'size' is a string"),
])
def test_a_damaged_cache_meta_json_is_named(cache_dir, damage, words):
    """A truncated meta.json was a bare JSONDecodeError; one without 'steps' a KeyError traceback."""
    meta = cache_dir / "meta.json"
    meta.write_bytes(damage(meta.read_bytes()))
    with pytest.raises(ValueError) as e:
        TeacherCache(cache_dir)
    assert words in str(e.value) and "rebuild the cache" in str(e.value), str(e.value)


@pytest.mark.parametrize("content", [b"\xff\xfe\n", b"not-a-build-id\n"])
def test_a_damaged_build_id_is_named(cache_dir, content):
    (cache_dir / "build_id").write_bytes(content)
    with pytest.raises(ValueError, match="build_id.* rebuild the cache"):
        cache_mod._build_id(cache_dir)


def test_damaged_checksums_are_named(cache_dir):
    path = cache_dir / cache_mod.CHECKSUMS
    good = path.read_text()
    path.write_text("{not json\n" + good)
    with pytest.raises(ValueError, match="checksums.jsonl:1 is not JSON; rebuild the cache"):
        cache_mod._checksums(cache_dir)
    path.write_text('{"file": "step_000000.pt"}\n' + good)
    with pytest.raises(ValueError, match="checksums.jsonl: row 1 has no 'size'"):
        cache_mod._checksums(cache_dir)


# ---------------------------------------------------------------------------------------------- metrics.jsonl

def test_metrics_lines_that_are_not_utf8_or_not_objects_are_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = '{"step": 1, "kind": "train"}\n'
    path.write_bytes(b'{"step": 1, "kind": "tr\xffain"}\n' + good.encode())
    with pytest.raises(ValueError, match="metrics.jsonl:1 is not UTF-8 text"):
        read_jsonl(path)
    path.write_text("[1, 2]\n" + good)
    with pytest.raises(ValueError, match="metrics.jsonl:1 is a JSON array, not an object"):
        read_jsonl(path)
    # what a kill leaves: the last line cut, even inside a UTF-8 character, is dropped
    path.write_bytes(good.encode() + '{"step": 2, "note": "é'.encode()[:-1])
    assert read_jsonl(path) == ([json.loads(good)], 1)
    path.write_text(good + '{"step": "two", "kind": "train"}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: a row's step is 'two', not a number"):
        MetricsLog(path).truncate_after(1)


# ---------------------------------------------------------------------------------------------- checkpoints

def test_a_checkpoint_whose_state_has_the_wrong_types_is_skipped(tmp_path, capsys):
    """A state whose step was not a number failed with "invalid literal for int()", naming no file."""
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {"state": {}}, keep=3)
    newest = tmp_path / "checkpoints" / "step_000002"
    state = torch.load(newest / STATE_FILE, weights_only=False)
    state["step"] = "two"
    torch.save(state, newest / STATE_FILE)
    (newest / CHECKSUM_FILE).unlink()            # as a checkpoint from before checksums: loaded, then checked
    folder, state = load_latest(tmp_path)
    assert folder.name == "step_000001" and state["step"] == 1
    _one_line(capsys, "step_000002 is damaged (unreadable: its step is 'two'); resuming from step_000001")
