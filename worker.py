"""`dramatiq worker:broker`: the app (for its configuration and database), its broker and actors."""

from webapp import create_app

app = create_app()
broker = app.extensions["crier.workers"].broker
