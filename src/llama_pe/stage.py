"""What every stage script shares: logging set-up and turning project errors into one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from llama_pe.errors import LlamaPeError

log = logging.getLogger("llama_pe")


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except LlamaPeError as err:
        log.error("%s", err)
        sys.exit(1)
