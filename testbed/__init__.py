"""Test beds: real Consul agents (live/) and a real Kubernetes control plane (cluster/). Test tooling, not the product."""
