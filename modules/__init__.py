"""Specialty modules shipped with Tessera; each is found through the tessera.modules entry points."""
