"""`invoke report`: a versioned signature catalog (catalog.yaml) applied to a run's node bundles,
the kubectl bundle and the state file, folded into findings across the fleet.

catalog.py loads and checks the catalog; scan.py streams each bundle through it (bundles.py: how a
tarball is read, also for clean); checks/ holds the rules written in Python (a module per family, and
the registry of their names); findings.py folds hits across nodes; engine.py makes the report
document; diff.py compares two of them; screen.py, render_md.py and render_html.py (with
fleetview.py, svg.py and logtime.py) turn it into the screen, report.md and report.html.
"""
