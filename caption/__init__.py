"""Tessera: caption."""
