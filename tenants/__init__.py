"""Crier's domain: tenants, accounts and tenant-scoped data. No Flask request objects here."""
