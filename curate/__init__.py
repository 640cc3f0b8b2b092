"""Tessera: curate."""
