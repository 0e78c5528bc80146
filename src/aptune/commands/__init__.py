"""User-facing sub-commands other than train/eval, one module each.

Each module holds the command's work and an ``add_<name>_parser(subparsers)`` that
``aptune.cli`` calls; commands sit on top of the engine and never the other way round.
"""
