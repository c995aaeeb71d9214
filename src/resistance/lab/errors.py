"""The lab's one error: something about the world could not be built or reached."""

from __future__ import annotations

from resistance.errors import ResistanceError


class LabError(ResistanceError):
    """A lab step failed; the message is one line saying what and why."""
