"""Tessera: train."""
