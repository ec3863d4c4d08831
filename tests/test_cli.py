"""The real CLI: every shipped config parses, bad arguments get LightningCLI's own message."""

import re
from pathlib import Path

import pytest

from train import cli_main

CONFIGS = sorted(Path("configs").rglob("*.yaml"))


def subcommand_of(config: Path) -> str:
    """Each config's header names the command it is for: ``python train.py <sub> --config <this file>``."""
    match = re.search(rf"train\.py (fit|validate|test|predict) --config {re.escape(str(config))}\b", config.read_text())
    assert match, f"{config}: header must show the command it is for"
    return match.group(1)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand_of(config), "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "${" not in printed, "interpolations must be resolved"


def test_run_dir_on_the_command_line_moves_every_interpolated_path(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", "configs/demo/videollm_pretrain.yaml", "--run_dir", "elsewhere/run", "--print_config"])
    printed = capsys.readouterr().out
    assert "dirpath: elsewhere/run/checkpoints" in printed and "tokenizer: elsewhere/run/tokenizer" in printed


def test_bad_argument_gets_lightningcli_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", "configs/demo/videollm_pretrain.yaml", "--model.init_args.no_such_knob", "3"])
    assert exit_info.value.code == 2
    assert "no_such_knob" in capsys.readouterr().err


def test_bad_value_type_is_rejected_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", "configs/demo/videollm_pretrain.yaml", "--data.init_args.batch_size", "many"])
    assert exit_info.value.code == 2
    assert "batch_size" in capsys.readouterr().err
