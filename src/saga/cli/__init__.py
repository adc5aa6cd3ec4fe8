"""SAGA command line."""
