"""The `quantart` command. Subcommands load lazily, so `quantart stylize` works in a deployment
install that has no torch (it only imports quantart_runtime)."""
from __future__ import annotations

import importlib

import click

SUBCOMMANDS = {
    "demo": ("quantart.training.demo:demo", "Stylize the sample images with the shipped demo model; metrics, grids."),
    "train": ("quantart.training.cli:train", "Train Stage 1 (VQGAN) or Stage 2 (style transfer)."),
    "stylize": ("quantart_runtime.cli:stylize", "Stylize images with an exported model (no torch)."),
    "verify": ("quantart_runtime.verify_cli:verify", "Verify a backend's precision per graph; make a precision plan."),
    "stylize-dataset": ("quantart_runtime.cluster.cli:stylize_dataset", "Stylize a dataset on Ray Data."),
    "serve": ("quantart_runtime.cluster.cli:serve", "Serve stylization over HTTP on Ray Serve."),
    "bench": ("quantart_benchmarks.cli:bench", "Benchmark backends: speed, memory, fidelity."),
}


# What a subcommand needs beyond its extra, said when its extra is missing (one line).
NEEDS = {"demo": "a checkout of the quantart repository (its assets/ and configs/: the demo model and sample "
                 "images are not in the wheel) with the train,export extras: in a clone, run `make demo`"}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked (see ``SUBCOMMANDS``).

    A subcommand whose extra is not installed still appears in ``--help`` and, when run, fails with one
    line naming the missing package and the extra to install.
    """
    def list_commands(self, ctx):
        """The subcommand names, sorted (nothing is imported)."""
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        """Import and return the click command ``name``; ``None`` for an unknown name.

        When its module cannot be imported (an extra is missing) it returns a stand-in command that
        exits with a ``ClickException`` naming the missing package.
        """
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:  # the extra that provides it is not installed
            missing = exc.name or str(exc)

            @click.command(name, help=SUBCOMMANDS[name][1], context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args):
                if name in NEEDS:
                    raise click.ClickException(f"'quantart {name}' needs {NEEDS[name]} ('{missing}' is not "
                                               f"installed here)")
                raise click.ClickException(
                    f"'quantart {name}' needs '{missing}', which is not installed here "
                    f"(install the matching extra, e.g. pip install 'quantart[train,export]')")

            return unavailable

    def format_commands(self, ctx, formatter):
        """Write the ``Commands`` section of ``--help`` from the static descriptions (no imports)."""
        rows = [(n, SUBCOMMANDS[n][1]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="quantart")
def main():
    """QuantArt style transfer: train, export, stylize, benchmark, scale out."""


if __name__ == "__main__":
    main()
