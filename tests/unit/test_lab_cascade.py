"""The lab cascade's config files (no root: files only)."""

from __future__ import annotations

from pathlib import Path

from resistance.config import node_settings
from resistance.lab import cascade


def test_the_exits_config_masks_its_hop_users_password_in_the_banner(tmp_path: Path) -> None:
    path, pin = cascade.exit_config(tmp_path / "exit", "hop-password-1234")
    settings = node_settings(config_file=path)
    assert settings.hide_passwords is True
    assert dict(settings.users) == {cascade.HOP_USER: "hop-password-1234"}
    assert path.stat().st_mode & 0o077 == 0 and len(pin) == 64
