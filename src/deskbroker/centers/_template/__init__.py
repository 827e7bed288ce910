"""A skeleton center driver to copy: see README.md. It is not registered."""
