"""Agent Execution Graph."""
