"""`python -m quantart_runtime stylize ...`: the stylize command without the `quantart` package."""
from __future__ import annotations

import click

from .cli import stylize


@click.group()
@click.version_option(package_name="quantart")
def main():
    """quantart_runtime: run exported QuantArt models (no torch)."""


main.add_command(stylize)

if __name__ == "__main__":
    main()
