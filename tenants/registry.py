"""Every model module, imported together so the metadata is complete (app, migrations, tests)."""

from tenants import audit, campaigns, contacts, events, models, pages, plans, templates, usage

MODEL_MODULES = (models, plans, audit, pages, contacts, events, templates, campaigns, usage)
