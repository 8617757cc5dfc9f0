"""The `adaptkit` command line: one sub-command per job, each a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from adaptkit import __version__


def _format_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def cmd_info(args: argparse.Namespace) -> int:
    """Print a generalist's parts, sizes, dtype, resolution and known task prompts."""
    from adaptkit.generalist import load_generalist

    generalist = load_generalist(args.base, device=args.device)
    config = generalist.config
    print(f"generalist: {config.name}  ({args.base})")
    if config.description:
        print(f"  {config.description}")
    print(f"resolution: {config.resolution} px -> latent {generalist.latent_size} x {generalist.latent_size}")
    print(f"device: {generalist.device}")
    print(f"{'part':<26}{'parameters':>14}  dtype")
    for name, count, dtype in generalist.parts():
        print(f"{name:<26}{_format_count(count):>14}  {dtype}")
    print("task prompts:")
    for task, prompt in config.task_prompts.items():
        print(f"  {task:<14}{prompt}")
    if len(generalist.prompts.cache):
        print(f"cached prompt embeddings: {len(generalist.prompts.cache)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptkit",
        description="Adapt a frozen generalist perception diffusion model (DICEPTION) to new tasks "
                    "from ~50 labelled images with LoRA.")
    parser.add_argument("--version", action="version", version=f"adaptkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    info = add("info", cmd_info, "describe a generalist: parts, parameter counts, dtype, task prompts")
    info.add_argument("base", help="'tiny', 'diception', an adaptkit generalist folder or a Hub repo id")
    info.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
