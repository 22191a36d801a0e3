"""Contact lists and segments over the API."""
