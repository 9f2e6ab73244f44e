"""The training curves through DVCLive (rank 0 writes them), and its stand-in on the ranks that do not."""

from __future__ import annotations

from pathlib import Path

from llama_pe.errors import TrainingError


class NoLive:
    """DVCLive's place on the ranks that do not write: rank 0 writes the curves."""

    step = 0

    def __enter__(self) -> NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log_metric(self, name: str, value: float) -> None:
        return None


def open_live(directory: Path):
    from dvclive import Live  # imported here: slow, and only the loop needs it
    from scmrepo.exceptions import SCMError

    try:
        # dvcyaml=False and save_dvc_exp=False: DVCLive's defaults would rewrite dvc.yaml and make experiments itself.
        return Live(str(directory), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    except SCMError as err:
        raise TrainingError(
            f"DVCLive cannot log to {directory}: {err}. It needs a git repository with at least one commit: "
            f"run `git add -A && git commit -m init` first"
        ) from None


def log_point(live, point: dict[str, float]) -> None:
    live.step = int(point["step"])
    for name, value in point.items():
        if name != "step":
            live.log_metric(name, value)
