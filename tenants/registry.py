"""Every model module, imported together so the metadata is complete (app, migrations, tests)."""

from tenants import campaigns, contacts, events, models, pages, templates

MODEL_MODULES = (models, pages, contacts, events, templates, campaigns)
