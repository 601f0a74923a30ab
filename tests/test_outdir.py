"""The output-folder policy (specdec/common/outdir.py) for every command: one run per folder, and a run
that fails before any work leaves the folder as it found it."""
import json
import shutil

import pytest

from distill_helpers import save_pair
from specdec.cli import main
from specdec.common.outdir import REPLACED, RUN_FILE, claim

COMMANDS = ("bench", "distill", "cache-teacher", "demo")


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    dirs = save_pair(root)
    broken = root / "broken"          # its tokenizer loads, its weights do not: found only after the claim
    shutil.copytree(dirs["target"], broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    dirs["broken"] = str(broken)
    return dirs


def argv(command, out, dirs, target):
    """The smallest run of `command` into `out` (every command loads the target after claiming)."""
    common = ["--out", str(out), "--target", target, "--device", "cpu", "--threads", "1"]
    if command == "bench":
        return ["bench", *common, "--draft", dirs["draft"], "--no-progress", "--max-new-tokens", "2"]
    if command == "distill":
        return ["distill", *common, "--draft", dirs["draft"], "--data", dirs["data"], "--data-source", "dataset",
                "--prompt-tokens", "12", "--new-tokens", "6", "--steps", "1", "--no-progress"]
    if command == "cache-teacher":
        return ["cache-teacher", *common, "--data", dirs["data"], "--prompt-tokens", "12", "--new-tokens", "6",
                "--steps", "1"]
    return ["demo", *common, "--draft", dirs["draft"], "--quick", "--no-progress"]


def listing(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------------------------------------- a failed start

def test_a_run_that_fails_before_any_work_leaves_the_folder_as_found(tmp_path):
    new = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError), claim(new, "bench", {}, setup_files=("settings.json",)) as run:
        (run.path / "settings.json").write_text("{}")
        raise RuntimeError("the model does not load")
    assert not (tmp_path / "new").exists()          # the folder and the parent it created are gone
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt), claim(empty, "bench", {}):
        raise KeyboardInterrupt
    assert empty.is_dir() and not any(empty.iterdir())
    # a run that wrote a result keeps it (and its run file), and so does one that committed
    with pytest.raises(RuntimeError), claim(empty, "bench", {}) as run:
        (run.path / "results.json").write_text("{}")
        raise RuntimeError("later")
    assert {p.name for p in empty.iterdir()} == {RUN_FILE, "results.json"}
    other = tmp_path / "committed"
    with pytest.raises(RuntimeError), claim(other, "bench", {}) as run:
        run.commit()
        raise RuntimeError("later")
    assert (other / RUN_FILE).is_file()


def test_overwrite_that_fails_before_any_work_puts_the_old_run_back(tmp_path):
    out = tmp_path / "run"
    with claim(out, "bench", {"a": 1}) as run:
        (run.path / "results.json").write_text('{"runs": []}')
    old = listing(out)
    with pytest.raises(RuntimeError), claim(out, "bench", {"a": 2}, overwrite=True):
        assert not (out / "results.json").exists()
        raise RuntimeError("the model does not load")
    assert listing(out) == old
    with claim(out, "bench", {"a": 2}, overwrite=True) as run:   # a run that succeeds replaces it for good
        (run.path / "results.json").write_text('{"runs": [1]}')
    assert not (out / REPLACED).exists() and (out / "results.json").read_text() == '{"runs": [1]}'
    assert json.loads((out / RUN_FILE).read_text())["config"] == {"a": 2}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_whose_target_does_not_load_leaves_out_as_found(command, pair_dirs, tmp_path, capsys):
    """distill, cache-teacher and demo once left --out claimed (a run file, distill_config.json,
    prompts.jsonl, an empty before/) after failing on a target that does not load."""
    out = tmp_path / "new" / "run"
    assert main(argv(command, out, pair_dirs, pair_dirs["broken"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot load a causal LM" in err, err
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(argv(command, empty, pair_dirs, pair_dirs["broken"])) == 2
    assert not any(empty.iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_overwrite_with_a_target_that_does_not_load_keeps_the_old_run(command, pair_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    with claim(out, command, {"old": True}) as run:
        (run.path / "summary.json").write_text('{"old": true}')
    old = listing(out)
    assert main(argv(command, out, pair_dirs, pair_dirs["broken"]) + ["--overwrite"]) == 2
    assert listing(out) == old
