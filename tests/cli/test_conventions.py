"""Every command follows one convention (tuner.cli.command): bad input exits 2 with one line
``lenstune <command>: error: ...`` naming the bad value, no traceback, nothing written;
``lenstune`` alone prints usage and exits 2; ``--version`` and ``--help`` (ending with examples)
on every command, ``-v/--verbose`` and ``-q/--quiet`` too."""

from __future__ import annotations

import re

import pytest

from tuner.cli import COMMANDS, main

# command -> (arguments with a bad input, a piece of the message naming the bad value)
BAD_INPUT = {
    "simulate": (["--preset", "nope", "--n-per-class", "30", "--out", "ds"], "'nope'"),
    "import-deeplense": (["no_such_folder", "--out", "ds"], "no_such_folder"),
    "show": (["no_such_dataset", "--out", "montage.png"], "no_such_dataset"),
    "families": (["--family", "nope"], "nope"),
    "tune": (["--family", "vit,nope", "--runs-dir", "runs"], "'nope'"),
    "promote": (["--experiment", "x", "--tracking-uri", "sqlite:///{tmp}/none/mlflow.db"],
                "no MLflow database"),
    "predict": (["missing.npy", "--model", "models:/m@champion", "--out", "preds.csv"],
                "missing.npy"),
    "report": (["--experiment", "x", "--out", "report", "--tracking-uri",
                "sqlite:///{tmp}/none/mlflow.db"], "no MLflow database"),
    "uncertainty": (["--model", "m", "--method", "temperature", "--data", "nodata", "--out",
                     "unc", "--alpha", "2"], "--alpha"),
    "demo": (["--samples", "0", "--runs-dir", "runs"], "--samples 0"),
    "robustness": (["--model", "models:/m@champion", "--shifts", "noise_x3"], "'noise_x3'"),
    "dashboard": (["--runs-dir", "runs"], "no Optuna storage in --runs-dir runs"),
}


def test_every_command_has_a_bad_input_case():
    assert set(BAD_INPUT) == set(COMMANDS)


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert re.fullmatch(rf"lenstune {re.escape(command)}: error: \S.*", errors[0]), errors[0]
    return errors[0]


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_exits_2_in_one_form_and_writes_nothing(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, named = BAD_INPUT[command]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main([command, *args]) == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert named in line, line
    assert list(tmp_path.iterdir()) == [], f"{command} wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_error_is_one_line_with_exit_2(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([command, "--no-such-flag"]) == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert f"lenstune {command} --help" in line  # argparse names a missing argument first
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_ends_with_examples_and_lists_common_flags(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--version", "--verbose", "--quiet"):
        assert flag in out, (command, flag)
    examples = out.rstrip().split("examples:\n")
    assert len(examples) == 2, out
    lines = examples[1].splitlines()
    assert 1 <= len(lines) <= 2 and all(l.strip().startswith(("lenstune", "python", "ray", "make"))
                                        for l in lines), lines


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version_on_every_command(command, capsys):
    from tuner import __version__

    assert main([command, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lenstune {__version__}"


def test_lenstune_alone_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lenstune <command>") and "--version" in err
    assert main(["--version"]) == 0 and "lenstune " in capsys.readouterr().out
    assert main(["--help"]) == 0 and "examples:" in capsys.readouterr().out
    assert main(["nope"]) == 2
    assert "lenstune: error: unknown command 'nope', allowed: simulate" in capsys.readouterr().err


def test_failure_while_working_exits_1_without_traceback_unless_verbose(tmp_path, monkeypatch, capsys):
    import tuner.cli.families as families

    def broken(family, sizes):
        raise RuntimeError("the flop counter broke\nsecond line")

    monkeypatch.setattr(families, "family_row", broken)
    assert main(["families", "--family", "scratch", "--sizes", "32"]) == 1
    err = capsys.readouterr().err
    line = _one_error_line(err, "families")
    assert line.endswith("RuntimeError: the flop counter broke (--verbose shows the traceback)")
    assert main(["families", "--family", "scratch", "--sizes", "32", "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_quiet_leaves_only_warnings_and_verbose_adds_debug(tmp_path, monkeypatch, capsys):
    import logging

    from tuner.cli.command import CommandParser, run_command

    log = logging.getLogger("tuner.test")

    def body(args):
        log.debug("details")
        log.info("done")
        log.warning("careful")

    def run(*flags):
        parser = CommandParser("probe", description="probe", examples=["lenstune probe"])
        assert run_command(parser, body, list(flags)) == 0
        return capsys.readouterr()

    normal = run()
    assert normal.out == "done\n" and normal.err == "lenstune probe: warning: careful\n"
    quiet = run("--quiet")
    assert quiet.out == "" and "careful" in quiet.err
    assert "details" in run("--verbose").out
