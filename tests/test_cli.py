import subprocess
import sys
from pathlib import Path

import pytest

from urbanseg.cli import main


def test_synth_then_prepare_from_the_command_line(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--train", "3", "--val", "2", "--size", "48x96", "--seed", "1"]) == 0
    assert "wrote 5 scenes (train 3, val 2) at 48x96" in capsys.readouterr().out
    assert len(list(tmp_path.rglob("*_leftImg8bit.png"))) == 5
    assert main(["prepare", "cityscapes", "--root", str(tmp_path)]) == 0


def test_bad_arguments_fail_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path), "--size", "256by512"])
    assert exit_info.value.code == 2
    assert "expected HEIGHTxWIDTH such as 256x512, got '256by512'" in capsys.readouterr().err
    assert main(["synth", str(tmp_path), "--size", "16x16"]) == 2
    assert capsys.readouterr().err.strip() == "urbanseg: error: size: expected at least 32x32, got 16x16"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "urbanseg"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "synth" in result.stdout and "prepare" in result.stdout


def test_only_user_errors_become_one_line_messages(tmp_path, monkeypatch, capsys):
    """An UrbansegError is the user's to fix (one line, exit 2); anything else is a bug in urbanseg
    and keeps its traceback, a ValueError from deep inside included."""
    import urbanseg.data.synth as synth
    from urbanseg.errors import DataError

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(synth, "write_dataset", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["synth", str(tmp_path)])

    def user_error(*args, **kwargs):
        raise DataError(f"{tmp_path}: not writable")

    monkeypatch.setattr(synth, "write_dataset", user_error)
    assert main(["synth", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"urbanseg: error: {tmp_path}: not writable\n"


def test_help_does_not_import_torch():
    """`urbanseg --help`, `synth` and `prepare` start without loading PyTorch (2-3 s on a laptop)."""
    code = "import sys, urbanseg.cli, urbanseg.data.prepare, urbanseg.data.synth; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
