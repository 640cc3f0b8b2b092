"""Tessera: model."""
