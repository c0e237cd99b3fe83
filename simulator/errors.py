"""The project's one error type for bad user input.

Anything the user can get wrong (a file, a YAML field, a checkpoint, an image
folder, a recipe, a budget) raises `InputError` with a single line naming the
file/field and what was expected. The CLI prints it as
``simulate: error: <message>`` and exits with status 2. Every other exception
is a bug and keeps its traceback.
"""

__all__ = ["InputError"]


class InputError(Exception):
    """Bad user input; the message is one line naming what was wrong."""
