"""`specdec distill` as a user meets it: flags parse to their types, bad input is one line before any
model loads or any file is written, an output folder holds one run, and --resume continues exactly that
run (same settings, newest intact checkpoint)."""
import json
import math

import pytest

from distill_helpers import assert_same_weights, flip_tensor_byte, make_cfg, save_pair
from specdec.cli import main
from specdec.distill import DistillConfig, train
from specdec.common.outdir import RUN_FILE


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: the error under test must come first."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("specdec.models.load.load_model", boom)
    monkeypatch.setattr("specdec.distill.trainer.load_model", boom, raising=False)


def _argv(pair_dirs, out, *extra):
    return ["distill", "--out", str(out), "--target", pair_dirs["target"], "--draft", pair_dirs["draft"],
            "--data", pair_dirs["data"], "--data-source", "dataset", "--prompt-tokens", "12", "--new-tokens", "6",
            "--batch-size", "2", "--eval-every", "0", "--spec-eval-every", "0", "--eval-prompts", "2",
            "--save-every", "0", "--no-progress", "--device", "cpu", *extra]


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _prompt_only(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n    return x"}) + "\n" for i in range(4)))
    return str(path)


# ---------------------------------------------------------------------------------------------- flags

def test_cli_threads_and_steps_are_numbers(tmp_path, pair_dirs, capsys):
    """`--threads 1 --steps 1` once crashed with a TypeError: `int | None` fields were parsed as str."""
    out = tmp_path / "run"
    assert main(_argv(pair_dirs, out, "--threads", "1", "--steps", "1")) == 0
    assert (out / "model.safetensors").is_file()
    assert [r["step"] for r in _rows(out) if r["kind"] == "train"] == [1]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"] == str(out)


@pytest.mark.parametrize("extra, match", [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_values_are_one_line_before_any_model_loads(tmp_path, pair_dirs, no_models, capsys, extra, match):
    assert main(_argv(pair_dirs, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_api_rejects_non_finite_floats(tmp_path):
    for name in ("temperature", "lr", "beta", "lmbda", "max_grad_norm"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be a finite number"):
            DistillConfig(out=str(tmp_path), **{name: math.nan})


def test_out_that_is_a_file_or_unwritable_fails_before_any_model_loads(tmp_path, pair_dirs, no_models, capsys):
    (tmp_path / "f").write_text("keep")
    assert main(_argv(pair_dirs, tmp_path / "f", "--steps", "1")) == 2
    assert main(_argv(pair_dirs, tmp_path / "f" / "sub", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "cannot write" in err[1]
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("source", ["dataset", "mix"])
def test_prompt_only_jsonl_is_refused_before_anything_runs(tmp_path, pair_dirs, no_models, source):
    """A source that trains on the data's continuations needs them: refused before the step-0
    evaluation, before any model loads and before the output folder is created."""
    cfg = make_cfg(pair_dirs, tmp_path / "run", data=_prompt_only(tmp_path), data_source=source, eval_every=1)
    with pytest.raises(ValueError, match='without "completion"'):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- one run per folder

def test_a_second_run_into_the_same_out_is_refused_and_nothing_is_overwritten(tmp_path, pair_dirs):
    out = tmp_path / "run"
    train(make_cfg(pair_dirs, out, steps=2))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="already holds a `specdec distill` run; pass --overwrite"):
        train(make_cfg(pair_dirs, out, steps=3, lr=1e-3))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    train(make_cfg(pair_dirs, out, steps=3, lr=1e-3, overwrite=True))
    assert [r["step"] for r in _rows(out) if r["kind"] == "train"] == [1, 2, 3]
    assert json.loads((out / "distill_config.json").read_text())["steps"] == 3


def test_resume_with_changed_settings_is_refused_naming_each_field(tmp_path, pair_dirs):
    out = tmp_path / "run"
    first = make_cfg(pair_dirs, out, steps=3, save_every=1)
    train(first)
    saved = {n: (out / n).read_bytes() for n in ("distill_config.json", RUN_FILE)}
    changed = make_cfg(pair_dirs, out, steps=5, save_every=1, lr=1e-3, divergence="rkl", data_source="student",
                       batch_size=2, resume=True)
    with pytest.raises(ValueError) as e:
        train(changed)
    msg = str(e.value)
    for flag in ("--lr", "--divergence", "--data-source", "--batch-size", "--steps"):
        assert flag in msg, flag
    assert "\n" not in msg
    assert {n: (out / n).read_bytes() for n in saved} == saved  # still describe the checkpoint
    # settings that do not change the weights may change
    train(make_cfg(pair_dirs, out, steps=3, save_every=2, eval_every=1, threads=1, resume=True))
    assert {n: (out / n).read_bytes() for n in saved} == saved


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path, pair_dirs):
    out = tmp_path / "run"
    train(make_cfg(pair_dirs, out, steps=2))
    with pytest.raises(ValueError, match="no intact checkpoint .* --overwrite"):
        train(make_cfg(pair_dirs, out, steps=2, resume=True))
    with pytest.raises(ValueError, match="holds no run to continue"):
        train(make_cfg(pair_dirs, tmp_path / "empty", steps=2, resume=True))


# ---------------------------------------------------------------------------------------------- damaged files

def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(tmp_path, pair_dirs, capsys):
    """Resume skips a checkpoint that does not read (one warning line) and ends with the weights of the
    uninterrupted run; a line torn by a kill during the last metrics write is dropped."""
    out = tmp_path / "run"
    cfg = dict(data_source="student", steps=4, save_every=1, keep_checkpoints=2)
    train(make_cfg(pair_dirs, out, **cfg))
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    newest = out / "checkpoints" / "step_000003" / "trainer_state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "kind": "tra')
    capsys.readouterr()
    train(make_cfg(pair_dirs, out, resume=True, **cfg))
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "step_000003" in err[0]
    assert_same_weights(out, full)
    assert [r["step"] for r in _rows(out) if r["kind"] == "train"] == [1, 2, 3, 4]


def test_a_checkpoint_with_a_flipped_byte_is_skipped_and_named(tmp_path, pair_dirs, capsys):
    """One byte flipped in the newest checkpoint (same size, still loads) was resumed from without a word."""
    out = tmp_path / "run"
    cfg = dict(steps=4, save_every=1, keep_checkpoints=2)
    train(make_cfg(pair_dirs, out, **cfg))
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    flip_tensor_byte(out / "checkpoints" / "step_000003" / "trainer_state.pt")
    capsys.readouterr()
    train(make_cfg(pair_dirs, out, resume=True, **cfg))
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "step_000003 is damaged (the sha256" in err[0] and "resuming from step_000002" in err[0]
    assert_same_weights(out, full)
    flip_tensor_byte(out / "checkpoints" / "step_000003" / "trainer_state.pt")
    flip_tensor_byte(out / "checkpoints" / "step_000002" / "trainer_state.pt")
    with pytest.raises(ValueError, match="no intact checkpoint .*: every one is damaged"):
        train(make_cfg(pair_dirs, out, resume=True, **cfg))


def test_a_corrupt_metrics_line_names_the_file(tmp_path, pair_dirs):
    out = tmp_path / "run"
    train(make_cfg(pair_dirs, out, steps=2, save_every=1))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not JSON"):
        train(make_cfg(pair_dirs, out, steps=2, save_every=1, resume=True))
