"""Consul on Kubernetes: the program `pulumi up` and `pulumi preview` run."""

import pulumi

from consul.program import main

pulumi.run(main)
