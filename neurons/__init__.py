"""Composition root: configuration, wiring and the neuron entrypoints.

The only package that knows which adapter implements which port.
"""
