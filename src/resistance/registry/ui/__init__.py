"""The registry's web dashboard under ``/ui/`` (see :mod:`.pages`)."""
