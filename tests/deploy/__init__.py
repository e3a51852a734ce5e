"""Deployment files: Compose, Dockerfile, Prometheus and Grafana, checked without Docker."""
