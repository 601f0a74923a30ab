"""The one progress bar (specdec/common/progress.py) that bench and distill show."""
from specdec.common.progress import Progress


def test_bar_counts_shows_status_and_figures(capsys):
    bar = Progress(4, "bench", unit="pass", initial=1)
    bar.status("loading the models")
    bar.advance()
    bar.advance(2, loss="0.1234", acc="0.700")
    assert bar.bar.n == 4
    assert bar.bar.postfix == "loss=0.1234, acc=0.700"
    bar.close()
    err = capsys.readouterr().err
    assert "bench" in err and "loading the models" in err and "4/4" in err


def test_disabled_bar_is_silent(capsys):
    bar = Progress(3, "distill", enabled=False)
    bar.status("x")
    bar.advance(loss="1")
    bar.close(keep=False)
    assert capsys.readouterr().err == "" and bar.bar is None
