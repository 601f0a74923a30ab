"""The command line: every subcommand builds and prints its help; `specdec --help` imports no heavy
module; user and environment errors are one line with exit code 2; a bug keeps its traceback."""
import subprocess
import sys
import types

import pytest

from specdec.cli import COMMANDS, build_parser, main


def test_every_subcommand_is_registered():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: specdec" in capsys.readouterr().out


def _imported_after(code: str) -> set:
    """The modules a fresh interpreter holds after running `code` (stdout discarded)."""
    probe = f"import sys, contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    {code}\n" \
            "print(' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_top_level_help_imports_no_heavy_module():
    """`specdec --help` lists every command without importing torch, transformers or a command module
    (they took seconds at every start)."""
    mods = _imported_after("import specdec.cli as c\n    try: c.main(['--help'])\n    except SystemExit: pass")
    heavy = {"torch", "transformers", "matplotlib", "specdec.benchmark.bench", "specdec.distill.trainer", "specdec.cli.demo"}
    assert not mods & heavy, mods & heavy


def test_plot_help_imports_no_torch():
    mods = _imported_after("import specdec.cli as c\n    try: c.main(['plot', '--help'])\n    except SystemExit: pass")
    assert "torch" not in mods and "specdec.benchmark.plots" in mods


def test_public_api_is_still_importable_from_the_package():
    import specdec.engine.decoding  # noqa: F401 - imports the submodule specdec.engine.verify first
    from specdec import SpeculativeDecoder, verify
    from specdec.engine.verify import verify as verify_fn

    assert verify is verify_fn and callable(SpeculativeDecoder)


@pytest.mark.parametrize("argv, match", [
    (["bench", "--gamma"], "argument --gamma: expected one argument"),
    (["bench", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["bench", "--sweep", "huge"], "invalid choice: 'huge'"),
    (["nope"], "invalid choice: 'nope'"),
    (["plot"], "the following arguments are required: RESULTS"),
])
def test_argparse_errors_are_one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "--help" in err, err


def _fake_command(monkeypatch, exc):
    """A subcommand `boom` whose run raises `exc`."""
    def run(args):
        raise exc

    mod = types.ModuleType("fake_boom_command")
    mod.add_arguments, mod.run = (lambda parser: None), run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(COMMANDS, "boom", (mod.__name__, "raises"))


@pytest.mark.parametrize("exc", [ValueError("bad value\nsecond line"), FileNotFoundError("no such file"),
                                 OSError(30, "Read-only file system"), PermissionError(13, "Permission denied")])
def test_user_and_environment_errors_are_one_line(monkeypatch, capsys, exc):
    _fake_command(monkeypatch, exc)
    assert main(["boom"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("specdec boom: error: "), err


def test_a_bug_keeps_its_traceback(monkeypatch):
    _fake_command(monkeypatch, KeyError("a bug"))
    with pytest.raises(KeyError):
        main(["boom"])


def test_generate_bad_gamma_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "specdec", "generate", "--gamma", "0"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "gamma" in r.stderr and "Traceback" not in r.stderr


def test_generate_missing_model_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "specdec", "generate", "--target", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
