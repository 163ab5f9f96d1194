"""The `cnclip` command line (see :mod:`cnclip.cli`)."""
