"""VidDF's command line: ``python train.py {fit,validate,test,predict} --config FILE [--key value …]``.

Every model and DataModule is chosen in the YAML by ``class_path``/``init_args``; configs may
interpolate (``${...}``) because the parser runs in omegaconf mode. ``--help`` and
``--print_config`` document every knob.
"""

from lightning.pytorch.cli import LightningCLI


class VidDFCLI(LightningCLI):
    pass


def cli_main(args: list[str] | None = None) -> VidDFCLI:
    return VidDFCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    cli_main()
