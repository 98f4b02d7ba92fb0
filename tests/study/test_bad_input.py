"""Bad inputs stop the entry point before anything is written: clear message, exit code 2."""

import socket

from tuner.run import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_family(tmp_path, capsys):
    assert main(["--family", "vit,nosuch", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nosuch'" in err and "allowed: all, vit" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset(tmp_path, capsys):
    code = main(["--family", "vit", "--profile", "micro", "--data", str(tmp_path / "nodata"),
                 "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "nodata" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unreachable_tracking_server(tmp_path, capsys, micro_dataset):
    uri = f"http://127.0.0.1:{_free_port()}"
    code = main(["--family", "vit", "--profile", "micro", "--data", str(micro_dataset),
                 "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_flag_value_is_named(tmp_path, capsys):
    assert main(["--samples", "0", "--runs-dir", str(tmp_path)]) == 2
    assert "samples=0" in capsys.readouterr().err
