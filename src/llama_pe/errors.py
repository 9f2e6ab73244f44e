"""Errors for people: each one means bad input or a missing prerequisite, and its message says what to change."""


class LlamaPeError(Exception):
    """Base of the errors a stage reports as one clear line instead of a traceback."""


class ConfigError(LlamaPeError, ValueError):
    """A setting in params.yaml is unknown, missing, mistyped or out of range; the message names it."""


class DataError(LlamaPeError, ValueError):
    """The corpus or its split cannot be used with these settings."""


class MissingInputError(LlamaPeError, FileNotFoundError):
    """An input of a stage is absent; the message names the stage that makes it."""


class ContextLengthError(LlamaPeError, ValueError):
    """A sequence is longer than the model's position encoding can place."""


class TrainingError(LlamaPeError, RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""
