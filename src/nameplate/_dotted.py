"""Importing the ``"pkg.module:attr.sub"`` targets that kinds' validators and entries' targets name.

One importer for both, so they fail the same ways: :class:`ImportFailed` when importing the module
fails (missing, or its code raised), :class:`AttributeMissing` when an attribute on the way is not
there. Callers turn these into their own user-facing errors.
"""

from __future__ import annotations

import importlib
from typing import Any


class ImportFailed(Exception):
    """Importing ``module`` raised ``cause`` (an ImportError, or whatever the module's code raised)."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"importing {module!r} failed: {type(cause).__name__}: {cause}")
        self.module = module
        self.cause = cause


class AttributeMissing(Exception):
    """``where`` (a module or attribute path) has no attribute ``part``."""

    def __init__(self, where: str, part: str) -> None:
        super().__init__(f"{where!r} has no attribute {part!r}")
        self.where = where
        self.part = part


def load_dotted(path: str) -> Any:
    """The object ``"pkg.module:attr.sub"`` names."""
    module_name, _, attribute = path.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or any error the module's own code raised while importing
        raise ImportFailed(module_name, error) from error
    walked = [module_name]
    for part in attribute.split(".") if attribute else ():
        try:
            value = getattr(value, part)
        except AttributeError as error:
            raise AttributeMissing(".".join(walked), part) from error
        walked.append(part)
    return value
