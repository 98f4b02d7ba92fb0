from tuner.cli.uncertainty import main


def test_cli_refuses_bad_input(tmp_path, capsys):
    base = ["--model", str(tmp_path), "--data", str(tmp_path / "none"), "--no-mlflow"]
    assert main([*base, "--method", "temperature", "--out", str(tmp_path / "r"), "--alpha", "1.5"]) == 2
    assert "--alpha must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main([*base, "--method", "temperature", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "--method", "laplace", "--out", str(tmp_path / "r")]) == 2
    assert "none" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main([*base, "--method", "bayes", "--out", str(tmp_path / "r")]) == 2
    assert "lenstune uncertainty: error: argument --method: invalid choice" in capsys.readouterr().err
