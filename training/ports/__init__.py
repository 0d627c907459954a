"""Ports of published weights from other frameworks into convserve's models."""
