"""Every model module, imported together so the metadata is complete (app, migrations, tests)."""

from tenants import (
    api_tokens,
    audit,
    campaigns,
    contacts,
    event_hooks,
    events,
    models,
    pages,
    plans,
    templates,
    usage,
)

MODEL_MODULES = (
    models,
    plans,
    audit,
    api_tokens,
    pages,
    contacts,
    events,
    templates,
    campaigns,
    usage,
    event_hooks,
)
