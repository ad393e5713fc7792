"""Prometheus metrics: Triton's ``nv_*`` families and this server's own extras."""
