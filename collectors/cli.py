"""The command: its namespace (the stages' tasks from collectors.tasks, the sandbox's and the demo
from collectors.sandbox.tasks, and the `hyperpod` config tree they read), and `hyperpod-collect`, an
Invoke Program over it (as Fabric's `fab` is). `tasks.py` in a checkout uses the same namespace;
here alone do the product and the sandbox meet."""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from invoke import Collection, Config, Exit, Program
from invoke.exceptions import ParseError

from collectors import settings as config
from collectors.errors import UsageError
from collectors.sandbox import tasks as sandbox_tasks
from collectors.errors import EXIT_BAD_INPUT
from collectors.tasks import TASKS, DeclaredTask, TypedCollection


def check_environment() -> None:
    """A bad `INVOKE_HYPERPOD_*` variable is one line and exit 2, before Invoke would cast or ignore it."""
    try:
        config.check_environment(os.environ)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def namespace() -> Collection:
    ns = TypedCollection(*TASKS, sandbox_tasks.demo, sandbox_tasks.collection)
    ns.configure({config.CONFIG_KEY: config.config_tree()})
    return ns


class CommandConfig(Config):
    """Config as the command reads it: `~/.config/hyperpod-collect/config.yaml`, then the working
    folder's `hyperpod-collect.yaml` (or, failing that, its `invoke.yaml`), then `INVOKE_HYPERPOD_*`
    variables, then the flags. (/etc/hyperpod-collect.yaml first, for a machine-wide default.)"""

    prefix = "hyperpod-collect"
    file_prefix = ""  # the prefixes below are whole paths less the suffix
    env_prefix = "INVOKE"

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("system_prefix", "/etc/hyperpod-collect")
        kwargs.setdefault("user_prefix", str(Path("~/.config/hyperpod-collect/config").expanduser()))
        super().__init__(*args, **kwargs)

    def set_project_location(self, path: Any) -> None:
        """The working folder's hyperpod-collect.yaml, else its invoke.yaml (the prefix is the path less
        its suffix: file_prefix is empty)."""
        super().set_project_location(path)
        if path is not None:
            folder = Path(path)
            name = "hyperpod-collect" if any((folder / f"hyperpod-collect.{suffix}").is_file()
                                             for suffix in self._file_suffixes) else "invoke"
            self._set(_project_prefix=str(folder / name))


class CommandProgram(Program):
    """`hyperpod-collect`: the same tasks as `invoke` in a checkout, from any folder, with typed flags."""

    def __init__(self, *args: Any, **kwargs: Any):
        DeclaredTask.typed = True
        super().__init__(*args, **kwargs)

    def parse_tasks(self) -> None:
        """A flag given what it cannot take (`--max-workers many`) is bad input: one line, exit 2."""
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise Exit(f"error: {exc}", code=EXIT_BAD_INPUT) from None

    def update_config(self, merge: bool = True) -> None:
        self.config.set_project_location(Path.cwd())
        self.config.load_project(merge=False)
        super().update_config(merge=merge)


def main() -> None:
    check_environment()
    CommandProgram(namespace=namespace(), name="hyperpod-collect", binary="hyperpod-collect",
                   version=version("hyperpod-collect"), config_class=CommandConfig).run()
