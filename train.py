"""VidDF's command line: ``python train.py {fit,validate,test,predict} --config FILE [--key value …]``.

Every model and DataModule is chosen in the YAML by ``class_path``/``init_args``; configs may
interpolate (``${...}``): the parser runs in omegaconf+ mode, which resolves interpolations
after the command line is merged, so ``--run_dir X`` moves every path that refers to it. ``--help`` and
``--print_config`` document every knob.
"""

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

# Configs are written for one subcommand, so ${run_dir} means the subcommand's own key.
set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


class VidDFCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Two folders that configs interpolate (${world_dir}, ${run_dir}), set once per run.
        parser.add_argument("--world_dir", type=str, default="data/demo_world",
                            help="folder of the dataset (the synthetic world's layout: pool/, msrvtt/, msvd_qa/)")
        parser.add_argument("--run_dir", type=str, default="runs/default",
                            help="folder where this run writes logs, checkpoints, tokenizer and annotations")


def cli_main(args: list[str] | None = None) -> VidDFCLI:
    return VidDFCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    cli_main()
