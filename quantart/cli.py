"""The `quantart` command. Subcommands load lazily, so `quantart stylize` works in a deployment
install that has no torch (it only imports quantart_runtime)."""
from __future__ import annotations

import importlib

import click

SUBCOMMANDS = {
    "demo": ("quantart.training.demo:demo", "Train a tiny model on the sample images and stylize them."),
    "train": ("quantart.training.cli:train", "Train Stage 1 (VQGAN) or Stage 2 (style transfer)."),
    "stylize": ("quantart_runtime.cli:stylize", "Stylize images with an exported model (no torch)."),
    "stylize-dataset": ("quantart_runtime.cluster.cli:stylize_dataset", "Stylize a dataset on Ray Data."),
    "serve": ("quantart_runtime.cluster.cli:serve", "Serve stylization over HTTP on Ray Serve."),
    "bench": ("quantart_benchmarks.cli:bench", "Benchmark backends: speed, memory, fidelity."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
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
                raise click.ClickException(
                    f"'quantart {name}' needs '{missing}', which is not installed here "
                    f"(install the matching extra, e.g. pip install 'quantart[train,export]')")

            return unavailable

    def format_commands(self, ctx, formatter):
        rows = [(n, SUBCOMMANDS[n][1]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="quantart")
def main():
    """QuantArt style transfer: train, export, stylize, benchmark, scale out."""


if __name__ == "__main__":
    main()
