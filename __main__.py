"""Consul on Kubernetes: the program `pulumi up` and `pulumi preview` run."""

from consul.program import main

main()
