"""AES-256-GCM for one secret value: base64(12-byte nonce ‖ ciphertext ‖ 16-byte tag), bound to env + name.

The associated data binds each ciphertext to its env and name, so a value copied to another name or
env in the store fails authentication instead of silently decrypting there.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tako.secrets.value import Secret

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_AAD_PREFIX = b"tako-secret-v1\x00"


class MalformedCiphertext(ValueError):
    """The stored text is not base64 of nonce ‖ ciphertext ‖ tag."""


class DecryptionFailed(ValueError):
    """Authentication failed: wrong key, tampered ciphertext, or a value moved to another env or name."""


def generate_key() -> bytes:
    return os.urandom(KEY_SIZE)


def associated_data(env: str, name: str) -> bytes:
    return _AAD_PREFIX + env.encode("utf-8") + b"\x00" + name.encode("utf-8")


def encrypt(key: bytes, env: str, name: str, value: Secret) -> str:
    """The stored text for `value` of secret `name` in `env`; a fresh random nonce every time."""
    _check_key(key)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, value.reveal().encode("utf-8"), associated_data(env, name))
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt(key: bytes, env: str, name: str, text: str) -> Secret:
    """Inverse of `encrypt`. Raises MalformedCiphertext or DecryptionFailed; neither carries any value."""
    _check_key(key)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedCiphertext("not valid base64") from None
    if len(raw) < NONCE_SIZE + TAG_SIZE:
        raise MalformedCiphertext("too short to hold a nonce and a tag")
    try:
        plain = AESGCM(key).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], associated_data(env, name))
    except InvalidTag:
        raise DecryptionFailed("authentication failed") from None
    try:
        return Secret(plain.decode("utf-8"))
    except UnicodeDecodeError:
        # Authenticated but not text: only a foreign writer could produce this. `from None` keeps the
        # bytes (inside the UnicodeDecodeError) out of any traceback.
        raise MalformedCiphertext("decrypted value is not UTF-8 text") from None


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"an AES-256 key is {KEY_SIZE} bytes, got {len(key)}")
