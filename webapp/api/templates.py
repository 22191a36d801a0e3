"""Message templates over the API."""
