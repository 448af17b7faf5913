"""`slm-jax`: every command answers --help with its flags (gin commands add the gin flags)
before touching gin, data or devices."""
import pytest

from slm_jax import cli


@pytest.mark.parametrize("command", ["train", "compile", "eval", "generate"])
def test_gin_commands_print_help_without_a_gin_file(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--gin_file=FILE" in out and "--module_import=MODULE" in out
    if command != "train":
        assert out.startswith("usage: slm-jax " + command)


def test_unknown_command_lists_the_commands(capsys):
    assert cli.main(["nope"]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
