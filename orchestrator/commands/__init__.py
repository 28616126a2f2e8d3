"""One module per CLI command, each registered on the app in orchestrator.cli."""
