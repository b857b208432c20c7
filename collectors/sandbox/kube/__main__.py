"""`python -m collectors.sandbox.kube --root ROOT`: the sandbox's Kubernetes API server."""

from collectors.sandbox.kube.handler import main

main()
