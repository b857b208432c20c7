"""`python -m collectors.sandbox.server --root DIR`: the sandbox's AWS (app.py)."""

from collectors.sandbox.server.app import main

main()
