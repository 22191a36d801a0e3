"""Contacts over the API."""
