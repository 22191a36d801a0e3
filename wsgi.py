"""`gunicorn wsgi:app` (one process per host, sticky sessions; Socket.IO relays through Redis)."""

from webapp import create_app

app = create_app()
