"""One way to keep a secret file: made once, atomically, 0600, never over a bad one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance import keyfile
from resistance.errors import ConfigError
from resistance.node.identity import load_or_create_identity, probe_credential
from resistance.node.users import generated_user
from resistance.probe.keys import load_or_create_probe_key, load_or_create_wireguard_key
from resistance.registry.keys import load_or_create_ring_key, load_or_create_signing_keys
from resistance.vpn import keys as wg_keys


def test_made_once_with_mode_0600_and_the_same_value_after(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "key.pem"
    key = keyfile.load_or_create_ed25519(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = keyfile.load_or_create_ed25519(path)
    assert keyfile.ed25519_pem(again) == keyfile.ed25519_pem(key)
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temporary left


def test_an_existing_file_wins_over_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "ring.key"
    first = keyfile.new_hex32()
    assert keyfile.create_private(path, first, what="ring key")
    assert not keyfile.create_private(path, keyfile.new_hex32(), what="ring key")
    assert path.read_bytes() == first
    assert keyfile.load_or_create(
        path, parse=keyfile.parse_hex32, new=keyfile.new_hex32, what="ring key"
    ) == bytes.fromhex(first.decode())


def test_create_new_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    keyfile.create_new(path, b"one", what="key")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keyfile.create_new(path, b"two", what="key")
    assert path.read_bytes() == b"one"


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    keyfile.load_or_create_ed25519(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        keyfile.load_or_create_ed25519(path)


def test_a_truncated_key_is_a_one_line_error_and_stays(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    keyfile.load_or_create_ed25519(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as raised:
        keyfile.load_or_create_ed25519(path, what="node identity key")
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "node identity key" in message
    assert path.read_bytes() == data[: len(data) // 2]


def test_an_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.mkdir(mode=0o700)  # a directory where the key should be
    with pytest.raises(ConfigError, match="cannot read"):
        keyfile.read_private(path, keyfile.parse_hex32, what="key")


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "key"
    keyfile.create_private(path, b"0" * (keyfile.MAX_SIZE + 10), what="key")
    with pytest.raises(ConfigError, match="too large"):
        keyfile.read_private(path, keyfile.parse_hex32, what="key")


FORMATS = {
    "ed25519": (keyfile.parse_ed25519_pem, keyfile.new_ed25519_pem),
    "hex32": (keyfile.parse_hex32, keyfile.new_hex32),
    "wireguard": (wg_keys.parse_key_file, wg_keys.new_key_file),
    "credential": (keyfile.parse_credential, lambda: keyfile.credential_text("u1", "pw")),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=400))
def test_garbage_either_parses_or_is_a_clear_error(name: str, garbage: bytes, cut: int) -> None:
    parse, new = FORMATS[name]
    good = new()
    with tempfile.TemporaryDirectory() as folder:
        for content in (garbage, good[:cut], good[:cut] + garbage):
            path = Path(folder) / f"key-{len(content)}"
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, content)
            os.close(fd)
            try:
                keyfile.load_or_create(path, parse=parse, new=new, what="test key")
            except ConfigError as exc:
                text = str(exc)
                assert "\n" not in text and str(path) in text and "test key" in text
            assert path.read_bytes() == content  # never replaced, good or bad


def test_the_callers_share_it(tmp_path: Path) -> None:
    """Each command's key comes back the same, 0600, and refuses a garbled file."""
    loaders = [
        ("node-identity.pem", lambda: keyfile.ed25519_pem(load_or_create_identity(tmp_path))),
        ("node-probe-user.txt", lambda: probe_credential(tmp_path)),
        ("probe-key.pem", lambda: keyfile.ed25519_pem(load_or_create_probe_key(tmp_path))),
        ("wireguard.key", lambda: load_or_create_wireguard_key(tmp_path).private),
        ("distribution.key", lambda: load_or_create_ring_key(tmp_path)),
        (
            "registry-keys/key-1.pem",
            lambda: [keyfile.ed25519_pem(k) for k in load_or_create_signing_keys(tmp_path)],
        ),
    ]
    for name, load in loaders:
        first = load()
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o600, name
        assert load() == first, name
        path.write_bytes(b"\x00garbled")
        with pytest.raises(ConfigError, match="is damaged"):
            load()
        assert path.read_bytes() == b"\x00garbled"
    name, password, created = generated_user(tmp_path)
    assert created and generated_user(tmp_path) == (name, password, False)
