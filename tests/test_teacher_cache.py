"""`specdec cache-teacher`: a cache trains like the live target, holds exactly what its meta.json
describes, and follows the output-folder policy (refuse / --overwrite / --resume)."""
import json
import shutil

import pytest

from distill_helpers import assert_same_weights, flip_tensor_byte, make_cfg, save_pair
from specdec.cli import main
from specdec.distill import CacheConfig, build_cache, train
from specdec.distill.cache import TeacherCache


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("pair"))


def _cache(pair_dirs, out, **kw):
    base = dict(out=str(out), target=pair_dirs["target"], data=pair_dirs["data"], prompt_tokens=12, new_tokens=6,
                batch_size=4, temperature=1.0, seed=0, topk=4, steps=2, micro_batches=1, device="cpu")
    base.update(kw)
    return CacheConfig(**base)


def test_teacher_cache_round_trip(tmp_path, pair_dirs):
    """Training from a cache with K = V gives the weights of training against the live target."""
    cdir = build_cache(_cache(pair_dirs, tmp_path / "cache", topk=4096, steps=3))
    batch, teacher = TeacherCache(cdir).entry(1, 0)
    assert teacher.idx.shape == (batch.num_tokens, 4096)
    train(make_cfg(pair_dirs, tmp_path / "live", steps=3))
    train(make_cfg(pair_dirs, tmp_path / "cached", steps=3, teacher_cache=str(cdir)))
    assert_same_weights(tmp_path / "live", tmp_path / "cached", atol=1e-5)
    # a small K (with its tail bucket) trains too, and a mismatched run is refused
    cdir2 = build_cache(_cache(pair_dirs, tmp_path / "cache8", topk=8, steps=2))
    train(make_cfg(pair_dirs, tmp_path / "k8", steps=2, teacher_cache=str(cdir2)))
    with pytest.raises(ValueError, match="does not match"):
        train(make_cfg(pair_dirs, tmp_path / "bad", steps=2, new_tokens=7, teacher_cache=str(cdir2)))


def test_rebuilding_into_the_same_folder_never_keeps_stale_steps(tmp_path, pair_dirs):
    """Different settings into an existing cache: refused; with --overwrite the old step files go, so
    meta.json and the files describe one build."""
    out = tmp_path / "c"
    build_cache(_cache(pair_dirs, out, topk=4, steps=3))
    with pytest.raises(ValueError, match="already holds a `specdec cache-teacher` run; pass --overwrite"):
        build_cache(_cache(pair_dirs, out, topk=16, temperature=0.5, seed=7, steps=2))
    build_cache(_cache(pair_dirs, out, topk=16, temperature=0.5, seed=7, steps=2, overwrite=True))
    assert sorted(p.name for p in out.glob("step_*.pt")) == ["step_000000.pt", "step_000001.pt"]
    cache = TeacherCache(out)
    assert (cache.meta["topk"], cache.meta["temperature"], cache.meta["seed"]) == (16, 0.5, 7)
    for step in range(2):
        assert cache.entry(step, 0)[1].idx.shape[1] == 16


def test_a_cache_whose_files_do_not_match_its_meta_is_refused(tmp_path, pair_dirs):
    a = build_cache(_cache(pair_dirs, tmp_path / "a", topk=4))
    other_k = build_cache(_cache(pair_dirs, tmp_path / "k8", topk=8))
    same_settings = build_cache(_cache(pair_dirs, tmp_path / "twin", topk=4))
    # a step file of another build with the same settings (same size): caught by its build id
    shutil.copy(same_settings / "step_000001.pt", a / "step_000001.pt")
    with pytest.raises(ValueError, match="step_000001.pt belongs to another build"):
        TeacherCache(a)   # when the cache opens (its checksum differs), before any model loads
    # a step file with other settings (another size), and a missing one: refused when the run starts
    shutil.copy(other_k / "step_000001.pt", a / "step_000001.pt")
    run = make_cfg(pair_dirs, tmp_path / "run", steps=2, teacher_cache=str(a))
    with pytest.raises(ValueError, match="step_000001.pt is missing or not the file meta.json describes"):
        train(run)
    (a / "step_000001.pt").unlink()
    with pytest.raises(ValueError, match="step_000001.pt is missing"):
        train(run)
    assert not (tmp_path / "run").exists()  # refused before the run claimed its folder
    # an unfinished build (no meta.json) and one written by an older specdec (no build id)
    (other_k / "meta.json").unlink()
    with pytest.raises(ValueError, match="not a finished teacher cache"):
        TeacherCache(other_k)
    meta = json.loads((same_settings / "meta.json").read_text())
    del meta["cache_id"], meta["format"]
    (same_settings / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another version of specdec"):
        TeacherCache(same_settings)


def test_resume_finishes_an_interrupted_build(tmp_path, pair_dirs):
    full = build_cache(_cache(pair_dirs, tmp_path / "full", steps=3))
    out = build_cache(_cache(pair_dirs, tmp_path / "c", steps=3))
    # what a kill during step 2 leaves: steps 0 and 1 written, no meta.json
    (out / "meta.json").unlink()
    (out / "step_000002.pt").unlink()
    kept = (out / "step_000000.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match="--topk: 4 -> 8"):
        build_cache(_cache(pair_dirs, out, steps=3, topk=8, resume=True))
    build_cache(_cache(pair_dirs, out, steps=3, resume=True))
    assert (out / "step_000000.pt").stat().st_mtime_ns == kept
    a, b = TeacherCache(out), TeacherCache(full)
    for step in range(3):
        (ba, ta), (bb, tb) = a.entry(step, 0), b.entry(step, 0)
        assert ba.input_ids.equal(bb.input_ids) and ta.idx.equal(tb.idx) and ta.logp.equal(tb.logp)


def test_cli_out_that_is_a_file_fails_before_the_target_loads(tmp_path, pair_dirs, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("specdec.models.load.load_model", boom)
    monkeypatch.setattr("specdec.distill.cache.load_model", boom, raising=False)
    (tmp_path / "f").write_text("x")
    args = ["cache-teacher", "--target", pair_dirs["target"], "--data", pair_dirs["data"], "--device", "cpu",
            "--steps", "1"]
    assert main(args + ["--out", str(tmp_path / "f")]) == 2
    assert main(args + ["--out", str(tmp_path / "f" / "sub")]) == 2
    assert main(args + ["--out", str(tmp_path / "c"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "is a file" in err[0] and "cannot write" in err[1] and "--device" in err[2]


def _copy(entry):
    """A cached entry detached from its file (a reader may map the file: its tensors would see the damage)."""
    batch, teacher = entry
    return (type(batch)(batch.input_ids.clone(), batch.attention_mask.clone(), batch.cont_mask.clone(), batch.source),
            type(teacher)(teacher.idx.clone(), teacher.logp.clone(), teacher.tail.clone()))


def _same_entry(a, b) -> bool:
    (ba, ta), (bb, tb) = a, b
    return all(x.equal(y) for x, y in ((ba.input_ids, bb.input_ids), (ba.attention_mask, bb.attention_mask),
                                       (ba.cont_mask, bb.cont_mask), (ta.idx, tb.idx), (ta.logp, tb.logp),
                                       (ta.tail, tb.tail)))


def test_a_damaged_step_file_is_named_and_resume_rewrites_it(tmp_path, pair_dirs, capsys):
    """A step file with one byte flipped (same size) was read without a word and trained on."""
    out = build_cache(_cache(pair_dirs, tmp_path / "c", steps=2))
    good = _copy(TeacherCache(out).entry(1, 0))
    cache = TeacherCache(out)
    flip_tensor_byte(out / "step_000001.pt")
    cache.entry(0, 0)
    with pytest.raises(ValueError, match="step_000001.pt is damaged .* --resume"):   # damaged while in use
        cache.entry(1, 0)
    with pytest.raises(ValueError, match="step_000001.pt is damaged .* --resume"):   # damaged before the run
        TeacherCache(out)
    run = ["distill", "--out", str(tmp_path / "run"), "--target", pair_dirs["target"], "--draft", pair_dirs["draft"],
           "--data", pair_dirs["data"], "--data-source", "dataset", "--prompt-tokens", "12", "--new-tokens", "6",
           "--batch-size", "4", "--steps", "2", "--eval-every", "0", "--spec-eval-every", "0", "--eval-prompts", "2",
           "--no-progress", "--device", "cpu", "--teacher-cache", str(out)]
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step_000001.pt is damaged" in err, err
    build_cache(_cache(pair_dirs, out, steps=2, resume=True))          # rewrites only the damaged step
    assert _same_entry(TeacherCache(out).entry(1, 0), good)


def test_resume_rewrites_a_damaged_step_of_an_unfinished_build(tmp_path, pair_dirs):
    out = build_cache(_cache(pair_dirs, tmp_path / "c", steps=2))
    good = _copy(TeacherCache(out).entry(0, 0))
    (out / "meta.json").unlink()                                       # unfinished
    flip_tensor_byte(out / "step_000000.pt")
    kept = (out / "step_000001.pt").stat().st_mtime_ns
    build_cache(_cache(pair_dirs, out, steps=2, resume=True))
    assert (out / "step_000001.pt").stat().st_mtime_ns == kept
    assert _same_entry(TeacherCache(out).entry(0, 0), good)
