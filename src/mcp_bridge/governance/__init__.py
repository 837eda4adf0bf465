"""What may be used: the allowlist and its sources (config, Port), the Port client, tool pins, naming, the merged
catalog and the resource routes. Imports only ``auth`` and the base modules (config, errors, logs, files, ...);
nothing here loads the MCP SDK at import (``serve`` reads the allowlist before it answers ``initialize``)."""
