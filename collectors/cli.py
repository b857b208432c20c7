"""The command's namespace: the stages' tasks (collectors.tasks), the sandbox's and the demo
(collectors.sandbox.tasks), and the `hyperpod` config tree they read. `tasks.py` in a checkout and
the `hyperpod-collect` command both use it; here alone do the product and the sandbox meet."""

from __future__ import annotations

import os
import sys

from invoke import Collection

from collectors import settings as config
from collectors.errors import UsageError
from collectors.sandbox import tasks as sandbox_tasks
from collectors.tasks import TASKS


def check_environment() -> None:
    """A bad `INVOKE_HYPERPOD_*` variable is one line and exit 2, before Invoke would cast or ignore it."""
    try:
        config.check_environment(os.environ)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def namespace() -> Collection:
    ns = Collection(*TASKS, sandbox_tasks.demo, sandbox_tasks.collection)
    ns.configure({config.CONFIG_KEY: config.config_tree()})
    return ns
