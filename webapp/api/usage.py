"""Usage over the API."""
