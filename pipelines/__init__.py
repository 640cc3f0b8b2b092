"""Tessera: pipelines."""
