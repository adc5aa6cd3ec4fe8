"""SAGA policies."""
