"""The provider's signing key: encrypted keystores on disk and the ``Signer`` that holds the unlocked key.

Keystores are the Web3 Secret Storage v3 format (geth, Foundry's ``cast wallet``, MetaMask exports,
eth-account), so an operator can bring a key from any Ethereum tool and take ours to any other. A keystore
is the only copy of a key that controls a stake, so it is written once, owner-only, and never overwritten.

Secrets stay out of every string this module makes: errors and log lines name files and addresses, never
a password or key, and ``Signer`` shows only its address and refuses to be pickled, so it cannot travel
into a worker process, a log record's args or a crash dump by accident.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.datastructures import SignedMessage, SignedTransaction
from eth_account.messages import SignableMessage
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from node.config import ConfigError, Settings, read_password, read_wallet_password

log = logging.getLogger(__name__)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # keys are 1..n-1
_KDFS = ("scrypt", "pbkdf2")
_MAX_KEYSTORE_BYTES = 64 * 1024  # real keystores are < 1 KiB; refuse to parse a wrong, huge file


class KeystoreError(RuntimeError):
    """A keystore cannot be read, written or unlocked; the message names the file and the problem only."""


class Signer:
    """An unlocked key that signs, and shows nothing but its address."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @property
    def address(self) -> str:
        """Checksummed address of the key."""
        return self._account.address

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        """eth-account SignedTransaction; send ``.raw_transaction`` with eth_sendRawTransaction."""
        return self._account.sign_transaction(dict(tx))

    def sign_message(self, signable: SignableMessage) -> SignedMessage:
        """Sign an eth-account SignableMessage (e.g. from ``encode_defunct``)."""
        return self._account.sign_message(signable)

    def sign_typed_data(self, *, full_message: Mapping[str, Any]) -> SignedMessage:
        """EIP-712 signature over a full typed-data message (eth_signTypedData_v4 layout)."""
        return self._account.sign_typed_data(full_message=dict(full_message))

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("a Signer holds a private key and cannot be pickled or copied; pass its address instead")


@dataclass(frozen=True)
class KeystoreInfo:
    """What a keystore file says about itself without being unlocked."""

    path: Path
    address: str | None  # None: the file does not record it (some tools omit it); known once unlocked
    kdf: str
    mode: int  # permission bits of the file

    @property
    def too_open(self) -> bool:
        """Group or others have any access: anyone who can read it can try passwords offline."""
        return bool(self.mode & 0o077)


def default_keystore_path(settings: Settings) -> Path:
    """wallet.keystore, or ``<node.data_dir>/keystore.json`` when that is not set."""
    return settings.wallet.keystore or settings.node.data_dir / "keystore.json"


def parse_private_key(text: str) -> bytes:
    """A raw key as 64 hex digits, optionally 0x-prefixed; errors never repeat the input."""
    digits = text.strip()
    digits = digits[2:] if digits[:2].lower() == "0x" else digits
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digits):
        raise KeystoreError("a private key must be 64 hex digits, optionally prefixed with 0x")
    return _checked_key(bytes.fromhex(digits))


def _checked_key(key: bytes) -> bytes:
    if len(key) != 32:
        raise KeystoreError("a private key must be 32 bytes")
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise KeystoreError("the private key is outside the secp256k1 range (zero or >= the curve order)")
    return key


def _read_keystore(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its parsed JSON, after checking the v3 shape that decryption relies on."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_KEYSTORE_BYTES + 1)
    except OSError as e:
        raise KeystoreError(f"cannot read keystore {path}: {e.strerror or e}") from None
    if len(raw) > _MAX_KEYSTORE_BYTES:
        raise KeystoreError(f"{path} is not a keystore: larger than {_MAX_KEYSTORE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeystoreError(f"{path} is not a keystore: not valid JSON") from None

    def bad(problem: str) -> KeystoreError:
        return KeystoreError(f"{path} is not a usable v3 keystore: {problem}")

    if not isinstance(data, dict):
        raise bad("the JSON is not an object")
    if data.get("version") != 3:
        raise bad(f"version must be 3, got {data.get('version')!r}")
    if "crypto" not in data and isinstance(data.get("Crypto"), dict):  # older geth wrote "Crypto"
        data["crypto"] = data.pop("Crypto")
    crypto = data.get("crypto")
    if not isinstance(crypto, dict):
        raise bad('no "crypto" object')
    if crypto.get("cipher") != "aes-128-ctr":
        raise bad(f"cipher must be aes-128-ctr, got {crypto.get('cipher')!r}")
    if crypto.get("kdf") not in _KDFS:
        raise bad(f"kdf must be one of {', '.join(_KDFS)}, got {crypto.get('kdf')!r}")
    for name, value in (("kdfparams", crypto.get("kdfparams")), ("cipherparams", crypto.get("cipherparams"))):
        if not isinstance(value, dict):
            raise bad(f'no "crypto.{name}" object')
    for name in ("ciphertext", "mac"):
        if not isinstance(crypto.get(name), str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", crypto[name]):
            raise bad(f'"crypto.{name}" must be a hex string')
    address = data.get("address")
    if address and not (isinstance(address, str) and re.fullmatch(r"(0x)?[0-9a-fA-F]{40}", address)):
        raise bad('"address" must be 40 hex digits')
    return raw, data


def keystore_info(path: Path) -> KeystoreInfo:
    """Describe a keystore without its password: recorded address, kdf and file permissions."""
    _, data = _read_keystore(path)
    address = data.get("address")
    return KeystoreInfo(path=path, address=to_checksum_address("0x" + address[-40:]) if address else None,
                        kdf=data["crypto"]["kdf"], mode=stat.S_IMODE(os.stat(path).st_mode))


def keystore_address(path: Path) -> str | None:
    """The address recorded in the file, without decrypting; None if the file does not record one."""
    return keystore_info(path).address


def _unlock(path: Path, password: str) -> tuple[bytes, LocalAccount]:
    raw, data = _read_keystore(path)
    try:
        account: LocalAccount = Account.from_key(Account.decrypt(data, password))
    except Exception as e:  # odd kdfparams raise KeyError/TypeError/...; their text is not repeated
        if isinstance(e, ValueError) and "MAC mismatch" in str(e):
            raise KeystoreError(f"wrong password for {path}") from None
        raise KeystoreError(f"cannot decrypt {path}: malformed keystore ({type(e).__name__})") from None
    recorded = data.get("address")
    if recorded and recorded[-40:].lower() != account.address[2:].lower():
        raise KeystoreError(f"{path} records address 0x{recorded[-40:]} but holds the key of {account.address}")
    return raw, account


def load_signer(path: Path, password: str) -> Signer:
    """Unlock a keystore for signing. Warns when the file is open to group or others."""
    _, account = _unlock(path, password)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("keystore %s has mode %04o, open to group or others: run chmod 600 on it", path, mode)
    return Signer(account)


def refuse_existing(path: Path) -> None:
    """Fail early (before any prompt or kdf work) when `path` exists; the exclusive create stays the guard."""
    if os.path.lexists(path):
        raise _exists(path)


def _exists(path: Path) -> KeystoreError:
    return KeystoreError(f"refusing to overwrite existing {path}; choose another path")


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create `path` owner-only (parent 0700 if new) and durably write it; never replace an existing file."""
    parent = path.parent
    try:
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
            parent.chmod(0o700)  # exact, whatever the umask
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # O_EXCL: no overwrite, no symlink
    except FileExistsError:
        raise _exists(path) from None
    except OSError as e:
        raise KeystoreError(f"cannot create {e.filename or path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)  # a half-written keystore would block the next attempt
        raise KeystoreError(f"cannot write {path}: {e.strerror or e}") from None
    with contextlib.suppress(OSError):  # make the new directory entry durable too, where the fs allows it
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def create_keystore(path: Path, password: str, *, private_key: bytes | None = None, kdf: str = "scrypt",
                    iterations: int | None = None) -> str:
    """Encrypt `private_key` (a new random key when None) into a new keystore file; return its address.

    `iterations` None keeps eth-account's default work factor for the kdf (what real keystores should use).
    """
    if kdf not in _KDFS:
        raise KeystoreError(f"kdf must be one of {', '.join(_KDFS)}")
    refuse_existing(path)
    if private_key is None:
        account: LocalAccount = Account.create()
    else:
        account = Account.from_key(_checked_key(bytes(private_key)))
    document = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)
    _write_exclusive(Path(path), (json.dumps(document, indent=2) + "\n").encode())
    log.info("wrote keystore for %s to %s", account.address, path)
    return account.address


def import_keystore(src: Path, dest: Path, password: str) -> str:
    """Copy an existing keystore to `dest` byte for byte once `password` unlocks it; return its address."""
    refuse_existing(dest)
    raw, account = _unlock(Path(src), password)
    _write_exclusive(Path(dest), raw)
    log.info("imported keystore for %s from %s to %s", account.address, src, dest)
    return account.address


def resolve_password(settings: Settings, *, confirm: bool, what: str = "keystore password",
                     prompt: Callable[[str], str] | None = None, stdin_isatty: Callable[[], bool] | None = None,
                     env: Mapping[str, str] | None = None) -> str:
    """The keystore password: $<wallet.password_env>, else wallet.password_file, else a prompt on a terminal.

    `confirm` (creating a keystore) asks twice and refuses an empty password.
    """
    try:
        password = read_wallet_password(settings, env)
    except ConfigError as e:
        raise KeystoreError(str(e)) from None
    if password is None:
        isatty = stdin_isatty or (lambda: sys.stdin is not None and sys.stdin.isatty())
        if not isatty():
            raise KeystoreError(f"no {what}: stdin is not a terminal, so set ${settings.wallet.password_env} "
                                "or wallet.password_file")
        ask = prompt or getpass.getpass
        password = ask(f"{what}: ")
        if confirm and password and ask(f"repeat {what}: ") != password:
            raise KeystoreError("the passwords do not match")
    if confirm and not password:
        raise KeystoreError(f"refusing an empty {what}")
    return password


def password_or_prompt(variable: str, file: Path | None, label: str, *, what: str, hint: str) -> str:
    """For a tool's own keystore (payout key, requester key): $`variable`, else `file`, else a hidden prompt
    when a human is at a terminal; otherwise a KeystoreError that says `hint` (where to put the password)."""
    try:
        password = read_password(variable, file, label)
    except ConfigError as e:
        raise KeystoreError(str(e)) from None
    if password is not None:
        return password
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"{what}: ")
    raise KeystoreError(f"no {what}: {hint}")
