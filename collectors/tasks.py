"""The stages as Invoke tasks: parse flags, call a stage or the pipeline, map errors to exit codes
(0 all nodes ok, 1 some nodes failed, 2 bad input, 130 interrupted).

A task's flags are declared, not written out: the settings it takes are named by their paths in
settings.KEYS (flag names and help come from there; the transports add theirs), and what a stage is
asked to do (`--run-id`, `--nodes`, `--json`) is an Option below.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from invoke import Collection, Exit, Task
from invoke.exceptions import ParseError
from invoke.parser import ParserContext

from collectors import console, pipeline, settings as config, transports
from collectors.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CollectorError, NothingToDo, UsageError
from collectors.nodes import STDIN_MARK, split_names


@dataclass(frozen=True)
class Option:
    """A flag that is no setting: what one invocation of a stage is asked to do."""

    help: str
    default: Any = None
    iterable: bool = False


OPTIONS = {
    "run_id": Option("act on this run (YYYYMMDD_HHMMSS) instead of the cluster's latest"),
    "instance_groups": Option("only these instance groups (repeatable or comma-separated; not with --nodes)",
                              iterable=True),
    "nodes": Option("only these nodes: i-…, hyperpod-i-…, ip-a-b-c-d (repeatable or comma-separated; '-' reads "
                    "stdin)", iterable=True),
    "command": Option("extra command to run on every node, in its own output file (repeatable)", iterable=True),
    "quiet": Option("no line per node, only the end result", False),
    "json": Option("print JSON on stdout (logs stay on stderr)", False),
    "download": Option("download and report at the end (--no-download: stop after the summary)", True),
    "retry_failed": Option("also collect again the nodes that failed, timed out or were unreachable", False),
    "against": Option("also show what changed since this earlier run of the cluster: new and cleared findings, "
                      "counters that grew"),
    "keep": Option("leave these as they are: instance-ids (AWS Support needs them)", iterable=True),
    "output": Option("folder for the copies (default: <runs_dir>-shareable, beside the runs folder)"),
}
# Settings every stage that talks to AWS takes, and those of the stages that reach nodes.
AWS_SETTINGS = ("cluster", "region", "profile")
NODE_SETTINGS = ("since", "file_cap_mb", "bundle_cap_mb", "nvidia_bug_report", "dcgm_diag", "upload_mode",
                 "redact_patterns")
SESSION_SETTINGS = ("max_workers", "session.mode", "session.rate", "transport", *transports.flag_keys())
# A yes/no setting gets two flags: --NAME (on) and --skip-NAME (off); neither leaves it to the config.
SKIP = "skip_"


def reports_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """One clear line and the right exit code for every failure a user can cause or meet."""

    @functools.wraps(body)
    def wrapper(ctx, *args, **kwargs):
        try:
            code = body(ctx, *args, **kwargs)
        except NothingToDo as exc:
            console.log(str(exc))
            return
        except CollectorError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader of our stdout went away (`… | head`): not an error worth a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        except OSError as exc:
            # A path the user gave that is not what it must be (a file where a folder goes, no
            # permission): the stages turn the ones they know into errors of their own; this is the net.
            where = f": {exc.filename}" if exc.filename else ""
            raise Exit(f"error: {exc.strerror or exc}{where}", code=EXIT_BAD_INPUT) from None
        if code:
            raise Exit(code=code)

    return wrapper


def settings_of(ctx, **flags: Any) -> config.Settings:
    return config.Settings.from_config(plain(ctx.config.get(config.CONFIG_KEY)), **flags)


def plain(value: Any) -> Any:
    """Invoke's DataProxy as plain dicts, for validation."""
    if hasattr(value, "keys"):
        return {key: plain(value[key]) for key in value.keys()}
    return value


# -- declaring tasks -----------------------------------------------------------------------------

class Typed:
    """A number flag's kind: the help says INT or FLOAT, and text that is not one is one line."""

    LABELS = {int: ("INT", "a whole number"), float: ("FLOAT", "a number")}

    def __init__(self, cast: Callable[[str], Any], flag_name: str):
        self.cast, self.flag = cast, flag(flag_name)
        self.label, self.what = self.LABELS[cast]
        self.__name__ = cast.__name__  # Invoke names a flag's kind in its debug output

    def __call__(self, text: str) -> Any:
        try:
            return self.cast(text)
        except ValueError:
            raise ParseError(f"--{self.flag} takes {self.what}, not {text!r}") from None


class DeclaredTask(Task):
    """A task whose number flags are typed (Invoke types a flag by its default, and ours are None).

    Typed under the command's own Program only (`typed`, set by collectors.cli): `invoke` in a checkout
    rebuilds the namespace as a plain Collection, whose help would show a typed flag as a switch; there
    the settings check the text (one line, exit 2) as for an environment variable."""

    typed = False

    def __init__(self, body: Callable[..., Any], kinds: dict[str, Typed], **kwargs: Any):
        self.kinds = kinds
        super().__init__(body, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        if self.typed and name in self.kinds:
            opts["kind"] = self.kinds[name]
        return opts


class TypedParserContext(ParserContext):
    def help_for(self, flag: str) -> tuple[str, str]:
        names, text = super().help_for(flag)
        kind = self.flags[flag].kind
        if isinstance(kind, Typed):
            names = ", ".join(f"{name}={kind.label}" for name in self.names_for(flag))
        return names, text


class TypedCollection(Collection):
    """A namespace whose help shows the typed flags' kinds (INT, FLOAT)."""

    def to_contexts(self, ignore_unknown_help: bool | None = None) -> list[ParserContext]:
        return [TypedParserContext(name=primary, aliases=aliases,
                                   args=self[primary].get_arguments(ignore_unknown_help=ignore_unknown_help))
                for primary, aliases in self.task_names.items()]


def declared_task(run: Callable[..., int | None], *, name: str, doc: str, settings: Sequence[str] = (),
                  options: Sequence[str] = (), help: dict[str, str] | None = None) -> Task:
    """A task whose flags are the named settings (by path) and options; `run(ctx, settings_flags, options)`
    gets the settings flags by path (None where not given) and the options by name."""
    keys = [config.KEYS_BY_PATH[path] for path in settings]
    parameters, flag_help, iterable = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)], {}, []
    kinds = {key.flag_name: Typed(key.kind, key.flag_name) for key in keys if key.kind in Typed.LABELS}
    for key in keys:
        for flag, text in key_flags(key):
            parameters.append(keyword(flag, False if key.kind is bool else None))
            flag_help[flag] = text
            if key.kind is tuple:
                iterable.append(flag)
    for option in options:
        parameters.append(keyword(option, OPTIONS[option].default))
        flag_help[option] = OPTIONS[option].help
        if OPTIONS[option].iterable:
            iterable.append(option)
    flag_help.update(help or {})

    @reports_errors
    def body(ctx, **given: Any) -> int | None:
        chosen = {key.path: flag_value(key, given) for key in keys}
        return run(ctx, chosen, {option: given[option] for option in options})

    body.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    body.__doc__, body.__name__ = doc, name
    return DeclaredTask(body, kinds, name=name, help=flag_help, iterable=iterable, auto_shortflags=False)


def keyword(name: str, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)


def key_flags(key: config.Key) -> list[tuple[str, str]]:
    """(flag, help) pairs for a setting: one, or --NAME and --skip-NAME for a yes/no one."""
    if key.kind is not bool:
        default = "" if key.default in (None, ()) else f" (default {key.default})"
        return [(key.flag_name, key.help + default)]
    return [(key.flag_name, f"{key.help} (default: {'yes' if key.default else 'no'})"),
            (SKIP + key.flag_name, f"do not: {key.help}")]


def flag_value(key: config.Key, given: dict[str, Any]) -> Any:
    if key.kind is tuple:
        return given[key.flag_name] or None
    if key.kind is not bool:
        return given[key.flag_name]
    on, off = given[key.flag_name], given[SKIP + key.flag_name]
    if on and off:
        raise UsageError(f"--{flag(key.flag_name)} and --{flag(SKIP + key.flag_name)} cannot be used together")
    return True if on else False if off else None


def flag(name: str) -> str:
    return name.replace("_", "-")


# -- running stages ------------------------------------------------------------------------------

def stage(name: str) -> Callable[..., int]:
    """Runs one stage on the latest run of the cluster (or --run-id)."""
    def run(ctx, chosen: dict[str, Any], options: dict[str, Any]) -> int:
        return pipeline.run_stage(name, settings_of(ctx, **chosen), stage_options(options))
    return run


def run_collect(ctx, chosen: dict[str, Any], options: dict[str, Any]) -> int:
    return pipeline.collect(settings_of(ctx, **chosen), stage_options(options))


def stage_options(options: dict[str, Any]) -> dict[str, Any]:
    if "command" in options:
        options["commands"] = options.pop("command") or None
    if "keep" in options:
        options["keep"] = options["keep"] or None
    if options.get("instance_groups") is not None:
        options["instance_groups"] = selection("--instance-groups", options["instance_groups"], options)
    if options.get("nodes") is not None:
        options["nodes"] = selection("--nodes", options["nodes"], options)
    if options.get("nodes") and options.get("instance_groups"):
        raise UsageError("--instance-groups and --nodes cannot be used together")
    return {key: value for key, value in options.items() if value is not None}


def selection(flag_name: str, values: list[str], options: dict[str, Any]) -> list[str]:
    """The names a filter flag gives. An empty one never means "everything": in a pipeline that would act
    on the whole fleet when the step before found nothing."""
    names = split_names(values, sys.stdin)
    if names or not values:  # Invoke gives an iterable flag that was left out as []
        return names
    from_stdin = any(value.strip() == STDIN_MARK for value in values)
    if from_stdin and options.get("retry_failed"):
        raise NothingToDo(f"run: nothing to retry ({flag_name} - read no node names); no node was touched")
    where = "standard input held no names" if from_stdin else "it names nothing"
    raise UsageError(f"{flag_name} selects nothing ({where}); leave the flag out to select every node")


def with_settings(*groups: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(path for group in groups for path in group))


# -- the tasks -----------------------------------------------------------------------------------

collect = declared_task(
    run_collect, name="collect",
    doc="Collect diagnostics from every node: discover, render, upload, cluster, kubectl, run, summarize, download, "
        "report.",
    settings=with_settings(AWS_SETTINGS, ("s3_path",), SESSION_SETTINGS, NODE_SETTINGS, ("kube_context", "discovery")),
    options=("run_id", "instance_groups", "nodes", "command", "quiet", "download"),
    help={"run_id": "continue this run (YYYYMMDD_HHMMSS) from its first unfinished stage instead of starting one"})

discover = declared_task(
    stage("discover"), name="discover",
    doc="Start a run: describe the cluster, list its nodes (all pages) and select the ones to collect.",
    settings=with_settings(AWS_SETTINGS, ("s3_path", "discovery", "transport"), transports.flag_keys()),
    options=("run_id", "instance_groups", "nodes", "json"),
    help={"run_id": "refresh the nodes of this run instead of starting a new one"})

render = declared_task(
    stage("render"), name="render",
    doc="Compose the node script (bash/) into the run's collector_script.sh, with the run's node options.",
    settings=with_settings(("cluster", "s3_path"), NODE_SETTINGS), options=("run_id", "command"))

upload = declared_task(
    stage("upload"), name="upload", doc="Put the run's collector_script.sh under the run's S3 prefix.",
    settings=with_settings(AWS_SETTINGS, ("s3_path",)), options=("run_id",))

cluster = declared_task(
    stage("cluster"), name="cluster",
    doc="Collect what HyperPod recorded (cluster, nodes, events, CloudWatch logs) into cluster_api.tar.gz.",
    settings=AWS_SETTINGS, options=("run_id",))

kubectl = declared_task(
    stage("kubectl"), name="kubectl",
    doc="Collect the cluster's Kubernetes state (EKS clusters) into kubectl_resources.tar.gz, locally and in S3.",
    settings=with_settings(AWS_SETTINGS, ("kube_context",)), options=("run_id",))

run_nodes = declared_task(
    stage("run"), name="run",
    doc="Collect from the run's nodes that have not finished (one session per node, paced).",
    settings=with_settings(AWS_SETTINGS, SESSION_SETTINGS), options=("run_id", "nodes", "retry_failed", "quiet", "json"),
    help={"nodes": "only these nodes of the run: i-…, hyperpod-i-…, ip-a-b-c-d ('-' reads stdin)",
          "json": "one JSON line per node outcome on stdout"})

summarize = declared_task(
    stage("summarize"), name="summarize",
    doc="Write summary.json (locally and in S3) and show who succeeded; exit 1 if any node failed.",
    settings=AWS_SETTINGS, options=("run_id", "json"))

download = declared_task(
    stage("download"), name="download",
    doc="Download every node tarball of the run into runs/<cluster>/<run-id>/results/, verified.",
    settings=with_settings(AWS_SETTINGS, ("download_workers",)), options=("run_id",))

report = declared_task(
    stage("report"), name="report",
    doc="""Tell what is wrong across the fleet: the signature catalog over the run's downloaded bundles.

    Writes findings.json, report.md and report.html (one self-contained file) into the run folder
    and prints the summary: cluster state, then findings by severity with their nodes folded.
    Works offline; exit 0 whenever a report is made, 2 when the run is missing or not downloaded.
    """,
    settings=("cluster",), options=("run_id", "against", "json"),
    help={"run_id": "report on this downloaded run (YYYYMMDD_HHMMSS) instead of the cluster's latest",
          "json": "print findings.json on stdout instead of the summary (logs stay on stderr)"})

clean = declared_task(
    stage("clean"), name="clean",
    doc="Write a copy of a run to share: host names, IP and MAC addresses, account ids, user names and the "
        "cluster's names replaced by stand-ins, the same everywhere, with the private mapping beside it (0600). "
        "Works offline.",
    settings=("cluster",), options=("run_id", "keep", "output"),
    help={"run_id": "clean this downloaded run (YYYYMMDD_HHMMSS) instead of the cluster's latest"})

TASKS = (collect, discover, render, upload, cluster, kubectl, run_nodes, summarize, download, report, clean)
