"""Error and warning types of the data pipeline."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset cannot be built: missing or empty folder, no readable images, bad CSV.

    Raised at construction time (before training starts) with a one-line message
    that names the folder or file at fault.
    """


class DataWarning(UserWarning):
    """Some files were skipped (unreadable, truncated, missing); the run continues."""
