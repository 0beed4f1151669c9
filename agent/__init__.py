"""Edge agent daemon: config, pipeline, supervisor, CLI."""
