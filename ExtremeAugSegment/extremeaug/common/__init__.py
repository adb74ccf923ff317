"""What every stage shares: the settings and their one definition (config), errors, progress events,
records as JSON, the structure table, dependency floors and what differs on Windows (portable).
Imports nothing else of the engine."""
