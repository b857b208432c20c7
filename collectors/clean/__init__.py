"""A shareable copy of a run: names and addresses replaced by stand-ins, the same one everywhere.

Anchor: sos clean (sosreport/sos, sos/cleaner). As there, it works in two passes over every file of
the run: the first learns what is in it (sos's "preppers": the state's names, every address, every
instance id, account ids from ARNs and registry hosts, user names from where logs and tables name
them), stand-ins are then chosen for all of it at once, and the second writes every file again
with them (sos's "parsers"). The mapping from stand-ins back to names is written beside the copy,
0600, and never into it (sos's private_map).

Unlike sos's stand-ins, ours keep the shapes the report reads, so that `invoke report` on the copy
finds what it finds on the original: an IPv4 address keeps its last number and its /24 network gets
a stand-in network (10.1.4.7 → 10.0.0.7), and an EC2 host name follows its address (ip-10-1-4-7 →
ip-10-0-0-7), so Slurm's and the report's node sets fold the same way (ip-10-0-0-[1-3]); instance
ids stay i- and hex of their length, account ids 12 digits. Stand-ins are chosen in sorted order and
never equal to anything of the original run, so the copy holds none of it.

Every kind is a Finder: the spans of a block of text it replaces. Blocks are whole lines (nothing
here spans lines); all kinds' spans are found first, then spliced in at once, so a stand-in is
never read again by another kind.

The package, in the order a run goes through it: spans.py finds what names someone in a block of
text (a Finder per kind), learn.py is the first pass (the Inventory), standins.py chooses the stand-ins
(the Mapping), rewrite.py is the second pass over files and tarballs (the Cleaner), files.py says which
files a run has and makes the copy's private, and run.py does the whole run. Tarballs are read as the
report reads them (collectors/report/bundles.py).
"""

from collectors.clean.run import CleanResult, clean_run
from collectors.clean.spans import KEEPABLE, KIND_LABELS

__all__ = ["KEEPABLE", "KIND_LABELS", "CleanResult", "clean_run"]
