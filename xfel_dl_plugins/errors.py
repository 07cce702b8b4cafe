"""User-facing errors: each one is printed by the CLI as a single line, with a non-zero exit."""


class XfelDLError(Exception):
    """A problem the user can fix (bad input, bad manifest, missing file). Printed without traceback."""

    exit_code = 2


class ManifestError(XfelDLError):
    """A manifest is invalid: the message names the file, the key and what was expected."""


class InputDataError(XfelDLError):
    """Input data is missing, unreadable, corrupt or not what the chain needs."""


class OutputExistsError(XfelDLError):
    """The output file exists and --overwrite was not given."""


class StageError(XfelDLError):
    """A stage is unknown, failed to load, or was given invalid parameters or inputs."""


class WeightsError(XfelDLError):
    """Packaged model weights are missing, corrupt or do not match the model."""
