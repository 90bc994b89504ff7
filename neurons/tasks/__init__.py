"""The built-in training tasks (neurons/task.py is the interface and the loader)."""
