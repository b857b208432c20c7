"""clean: a copy of a downloaded run to share (with AWS Support, in a public issue), in which host
names, addresses, account ids, user names and the cluster's names are replaced by stand-ins, the
same one everywhere (collectors/clean/ says how).

Works offline on the run folder, like report. The copy is a run folder of its own,
`<output>/<cluster stand-in>/<run-id>/`, so that `invoke report` reads it as it reads the original;
the private mapping (stand-in -> original) is written beside it, never in it.
"""

from __future__ import annotations

from pathlib import Path

from collectors import console
from collectors.clean import KEEPABLE, KIND_LABELS, CleanResult, clean_run
from collectors.context import StageContext
from collectors.errors import EXIT_OK, UsageError
from collectors.report.engine import default_workers
from collectors.state import RunState


def execute(ctx: StageContext) -> int:
    state = ctx.state
    require_downloaded(state)
    keep = kinds_to_keep(ctx.options.get("keep") or [])
    output = Path(ctx.options.get("output") or default_output(ctx.settings.runs_dir))
    if output.resolve().is_relative_to(state.run_dir.resolve()):
        raise UsageError(f"--output {output} is inside the run it would copy: pick a folder outside {state.run_dir}")
    console.log(f"clean: reading run {state.run_id} in {state.run_dir}")
    result = clean_run(state.run_dir, state.data, output, keep, workers=default_workers())
    state.mark_stage("clean", "done", copy=str(result.copy_dir), private_map=str(result.map_path),
                     kept=sorted(ctx.options.get("keep") or []))
    console.out(summary(result, output))
    return EXIT_OK


def default_output(runs_dir: Path) -> Path:
    """Beside the runs folder, never in it: no path of the copy holds the cluster's own name."""
    return runs_dir.parent / f"{runs_dir.name}-shareable"


def require_downloaded(state: RunState) -> None:
    if not state.is_downloaded():
        raise UsageError(f"run {state.run_id} is not downloaded: run `invoke download --run-id {state.run_id}` first")


def kinds_to_keep(values: list[str]) -> frozenset[str]:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(KEEPABLE))
    if unknown:
        raise UsageError(f"--keep {', '.join(unknown)}: only {', '.join(sorted(KEEPABLE))} can be kept")
    return frozenset(KEEPABLE[name] for name in names)


def summary(result: CleanResult, output: Path) -> str:
    lines = [f"Shareable copy: {result.copy_dir} ({result.files} file(s))"]
    lines += [f"  {'kind':<16} {'replaced':>9}  {'distinct':>8}"]
    for kind, label in KIND_LABELS.items():
        counts = result.counts.get(kind)
        if counts:
            lines.append(f"  {label:<16} {counts['replaced']:>9}  {counts['items']:>8}")
    if result.left_out:
        lines.append(f"  left out (binary, cannot be cleaned): {', '.join(result.left_out)}")
    lines += [f"Private mapping: {result.map_path} (0600): it turns the stand-ins back into names; never share it.",
              f"Report on the copy: INVOKE_HYPERPOD_RUNS_DIR={output} invoke report "
              f"--cluster {result.copy_dir.parent.name} --run-id {result.copy_dir.name}"]
    return "\n".join(lines)
