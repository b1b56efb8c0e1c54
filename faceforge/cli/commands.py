"""Imports every built-in command module; each registers itself in :data:`faceforge.cli.registry.COMMANDS`."""

from faceforge.cli import (  # noqa: F401
    align,
    attributes,
    embed,
    evaluate,
    export,
    fetch,
    import_model,
    prepare,
    quality,
    search,
    serve,
    synthesize,
    train,
)
