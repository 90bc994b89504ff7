"""Templar's wire facts (docs/templar.md): its object names, coordination bodies and payloads."""
