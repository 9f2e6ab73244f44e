"""Stage `check`: every setting in params.yaml, checked before any other stage runs.

DVC removes a stage's outputs just before it runs the stage, so a bad value found by the train stage would cost the
committed metrics and plots. Every other stage depends on this one, which fails first. Its output is the same bytes
for every valid params.yaml, so a valid change reruns only the stages that read the changed keys.
"""

import argparse

from llama_pe.errors import ConfigError
from llama_pe.io import write_text
from llama_pe.settings.config import load_config
from llama_pe.settings.refused_params import restore_hint
from llama_pe.settings.stage import run_stage

VALID = "params.yaml holds valid settings for every stage\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="the stamp the other stages depend on")
    args = parser.parse_args()
    try:
        load_config(args.params)  # raises ConfigError naming the first bad key
    except ConfigError as err:
        hint = restore_hint(args.params)  # `dvc exp run -S` leaves a refused value in params.yaml: say so
        raise ConfigError(f"{err}. {hint}" if hint else str(err)) from None
    write_text(args.out, VALID)


if __name__ == "__main__":
    run_stage(main)
