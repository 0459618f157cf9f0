"""Writes docs/cli.md from the commands themselves, so the reference cannot drift from the code.

`python -m airlock.cli.docgen > docs/cli.md`; a test fails when the file is out of date.
"""

from __future__ import annotations

import typer

from airlock.cli.main import app


def walk(command, path: list[str]):
    yield path, command
    if hasattr(command, "commands"):  # a group
        for name in sorted(command.commands):
            yield from walk(command.commands[name], path + [name])


def _option_line(param) -> str:
    if param.param_type_name == "argument":
        return f"- `{param.name.upper()}`{': ' + param.help if getattr(param, 'help', None) else ''}"
    names = ", ".join(f"`{o}`" for o in param.opts)
    default = "" if param.is_flag or param.default in (None, (), []) else f" (default: `{param.default}`)"
    return f"- {names}: {param.help or ''}{default}"


def render() -> str:
    root = typer.main.get_command(app)
    lines = ["# CLI reference", "", "Generated from the commands by `python -m airlock.cli.docgen`; "
             "`airlock COMMAND --help` prints the same.", ""]
    for path, command in walk(root, ["airlock"]):
        if hasattr(command, "commands") and len(path) > 1:
            lines += [f"## `{' '.join(path)}`", "", command.help or "", ""]
            continue
        if len(path) == 1:
            continue
        lines += [f"### `{' '.join(path)}`", "", (command.help or "").strip(), ""]
        params = [p for p in command.params if p.name not in ("help",) and not getattr(p, "hidden", False)]
        lines += [_option_line(p) for p in params] + ([""] if params else [])
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
