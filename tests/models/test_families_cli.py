import pytest

from tuner.cli.families import main


def test_table_lists_requested_family(capsys):
    assert main(["--family", "scratch", "--sizes", "32"]) == 0
    out = capsys.readouterr().out
    assert "scratch" in out and "ours" in out and "GFLOPs@32" in out


def test_unknown_family_exits_nonzero(capsys):
    assert main(["--family", "nope"]) == 2
    assert "allowed:" in capsys.readouterr().err


def test_too_small_size_exits_nonzero_before_the_table(capsys):
    assert main(["--family", "scratch", "--sizes", "64,8"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and ">= 16 pixels, got 8" in captured.err


@pytest.mark.slow
def test_full_table_prints_every_family(capsys):
    from tuner.models import list_families
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in list_families())
