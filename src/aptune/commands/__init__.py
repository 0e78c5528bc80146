"""User-facing sub-commands other than train/eval, one module each.

Each module holds the command's work and takes typed arguments; its flags live in
``aptune.cli.<name>``, which parses them and calls here. Commands sit on top of the
engine and never the other way round.
"""
