"""Adapters: implementations of the ports for real and fake infrastructure."""
