"""The command line: every subcommand builds and prints its help; user errors are one line, exit 2."""
import subprocess
import sys

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


def test_generate_bad_gamma_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "specdec", "generate", "--gamma", "0"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "gamma" in r.stderr and "Traceback" not in r.stderr


def test_generate_missing_model_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "specdec", "generate", "--target", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
