"""The one config mechanism: flags built from a dataclass, typed parsing with one-line errors, and the
output-folder policy every command follows."""
import argparse
import json
from dataclasses import dataclass

import pytest

from specdec.common.config import add_arguments, config_from_args, differences, option, parse_script_args
from specdec.common.files import write_json_atomic
from specdec.common.outdir import RUN_FILE, claim


@dataclass
class _Cfg:
    out: str = option(None, "output folder", group="output", required=True)
    threads: int | None = option(None, "CPU threads", group="models")
    lr: float = option(3e-4, "learning rate")
    gamma: tuple[int, ...] = option((1, 2, 4), "draft tokens per step")
    kind: str = option("fkl", "divergence", choices=("fkl", "rkl"))
    quick: bool = option(False, "shorter run")
    progress: bool = option(True, "progress bar")


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, _Cfg)
    return config_from_args(p.parse_args(argv), _Cfg)


def test_types_come_from_annotations():
    cfg = _parse(["--out", "x", "--threads", "1", "--lr", "1e-3", "--gamma", "2,8", "--quick", "--no-progress"])
    assert cfg == _Cfg(out="x", threads=1, lr=1e-3, gamma=(2, 8), kind="fkl", quick=True, progress=False)
    assert isinstance(cfg.threads, int)  # `int | None` once came back as a str
    assert _parse(["--out", "x"]) == _Cfg(out="x")


@pytest.mark.parametrize("argv,match", [(["--threads", "one"], "--threads must be an integer"),
                                        (["--lr", "nan"], "--lr must be a finite number"),
                                        (["--lr", "inf"], "--lr must be a finite number"),
                                        (["--gamma", "1,x"], "--gamma must be an integer")])
def test_bad_values_are_one_line(argv, match):
    with pytest.raises(ValueError, match=match) as e:
        _parse(["--out", "x"] + argv)
    assert "\n" not in str(e.value)


def test_help_shows_groups_and_defaults():
    p = argparse.ArgumentParser()
    add_arguments(p, _Cfg)
    text = p.format_help()
    assert "models:" in text and "output:" in text
    assert "(default: 1,2,4)" in text and "--no-progress" in text


def test_differences_names_each_field():
    assert differences({"lr": 1e-3, "gamma": [1, 2]}, {"lr": 3e-4, "gamma": (1, 2)}) == ["--lr: 0.001 -> 0.0003"]


def prepare_out_dir(path, command, config, **kw):
    """Claim the folder for a run (writing results.json) that ends at once, successfully."""
    with claim(path, command, config, outputs=("results.json",), **kw) as run:
        return run.path


def test_out_dir_policy(tmp_path):
    out = tmp_path / "run"
    prepare_out_dir(out, "bench", {"a": 1})
    assert json.loads((out / RUN_FILE).read_text())["config"] == {"a": 1}
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a `specdec bench` run; pass --overwrite"):
        prepare_out_dir(out, "bench", {"a": 1})
    with pytest.raises(ValueError, match="--a: 1 -> 2"):
        prepare_out_dir(out, "bench", {"a": 2}, resume=True, can_resume=True)
    assert prepare_out_dir(out, "bench", {"a": 1}, resume=True, can_resume=True) == out
    assert (out / "results.json").exists()
    prepare_out_dir(out, "bench", {"a": 2}, overwrite=True)
    assert not (out / "results.json").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no specdec run"):
        prepare_out_dir(foreign, "bench", {}, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="is a file"):
        prepare_out_dir(foreign / "notes.txt", "bench", {})


def test_json_is_standard(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"x": float("inf"), "y": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": [None, 1.0]}


@dataclass
class _Listed:
    results: tuple[str, ...] = option((), "results files", positional=True)
    prompt: tuple[str, ...] | None = option(None, "a prompt", repeat=True)
    temperature: tuple[float, ...] = option((0.0,), "temperatures")


def test_positional_and_repeated_fields_keep_the_text():
    p = argparse.ArgumentParser()
    add_arguments(p, _Listed)
    cfg = config_from_args(p.parse_args(["a.json", "b.json", "--prompt", " x, y ", "--prompt", "z"]), _Listed)
    assert cfg.results == ("a.json", "b.json") and cfg.prompt == (" x, y ", "z")  # commas and spaces kept
    assert config_from_args(p.parse_args(["a.json"]), _Listed).prompt is None


def test_to_argv_rebuilds_the_config():
    from specdec.common.config import to_argv

    cfg = _Cfg(out="x", threads=1, lr=1e-3, gamma=(2, 8), quick=True, progress=False)
    argv = to_argv(cfg)
    assert "--kind" not in argv  # defaults are left out
    assert _parse(argv) == cfg
    listed = _Listed(results=("a", "b"), prompt=("p, q",), temperature=(0.1, 1.0))
    p = argparse.ArgumentParser()
    add_arguments(p, _Listed)
    assert config_from_args(p.parse_args(to_argv(listed)), _Listed) == listed


@dataclass
class _Other:
    steps: int = option(10, "steps")

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def test_script_args_one_parser_for_several_configs(capsys):
    """bench/ scripts: one command line -> one config per class; a value a config rejects is argparse's
    usage error (exit code 2), not a traceback."""
    cfg, other = parse_script_args(["--out", "x", "--lr", "0.01", "--steps", "3"], "doc", _Cfg, _Other)
    assert (cfg.out, cfg.lr, other.steps) == ("x", 0.01, 3)
    assert parse_script_args(["--steps", "4"], None, _Other).steps == 4
    with pytest.raises(SystemExit) as e:
        parse_script_args(["--out", "x", "--steps", "0"], "doc", _Cfg, _Other)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith("--steps must be >= 1, got 0")
