"""The ``conceptattention`` command line."""
