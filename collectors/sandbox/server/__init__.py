"""The sandbox's AWS: moto in server mode on 127.0.0.1, patched for what HyperPod needs.

Run as `python -m collectors.sandbox.server --root DIR` (control.py starts it detached, app.py serves).

moto lacks parts of the HyperPod API (Orchestrator, node addresses, working pagination, random-looking
cluster ids) and SSM StartSession; sagemaker.py patches moto for the first, and checks first that the
moto internals it patches have not moved.

A WSGI middleware in front of moto (app.py) lets each handler in turn answer what moto lacks, and
passes the rest to moto: SSM sessions (sessions.py), HyperPod's cluster events and CloudWatch log
streams (cluster_events.py), the control endpoints under /_emu/ (controls.py), and the scenario's
faults, shown the way the real services show them (injection.py, docs/scenarios.md):
ThrottlingException above a StartSession rate, TargetNotConnected for chosen nodes, S3 errors for
chosen keys, AccessDeniedException for denied IAM actions. `GET|POST /_emu/faults` reads and changes
the faults at run time; the server writes them to ROOT/faults.json for the session plugin and applies
the faults that live on the nodes themselves (nodes.apply_node_faults).

S3 requests are checked as S3 checks them before moto sees them (s3auth.py: SigV4 only, verified, in
the bucket's region, unexpired, and allowed to the caller). A second listener serves the nodes'
instance metadata (imds.py): the node role's temporary credentials, set by `POST /_emu/node-role`.
"""
