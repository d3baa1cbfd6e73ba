"""Tests for node.chain.keys: keystore files, interoperability, password sources and secrecy."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from node.chain import keys
from node.chain.keys import (
    SECP256K1_N,
    KeystoreError,
    Signer,
    create_keystore,
    default_keystore_path,
    import_keystore,
    keystore_address,
    keystore_info,
    load_signer,
    parse_private_key,
    resolve_password,
)
from node.config import load_settings

PASSWORD = "correct horse battery staple"
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY = bytes.fromhex(KEY_HEX)
ADDRESS = Account.from_key(KEY).address
CHEAP = {"kdf": "scrypt", "iterations": 16}  # tests only: real keystores keep eth-account's work factor

# Web3 Secret Storage definition, "Test Vectors": password "testpassword", no "address" field.
SPEC_KEY_HEX = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
SPEC_ADDRESS = Account.from_key(bytes.fromhex(SPEC_KEY_HEX)).address
SPEC_VECTORS = {
    "pbkdf2": {
        "crypto": {
            "cipher": "aes-128-ctr",
            "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
            "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
            "kdf": "pbkdf2",
            "kdfparams": {"c": 262144, "dklen": 32, "prf": "hmac-sha256",
                          "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},
            "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
        },
        "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
        "version": 3,
    },
    "scrypt": {
        "crypto": {
            "cipher": "aes-128-ctr",
            "cipherparams": {"iv": "83dbcc02d8ccb40e466191a123791e0e"},
            "ciphertext": "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
            "kdf": "scrypt",
            "kdfparams": {"dklen": 32, "n": 262144, "p": 8, "r": 1,
                          "salt": "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"},
            "mac": "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097",
        },
        "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
        "version": 3,
    },
}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_json(path: Path, document: object, file_mode: int = 0o644) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    path.chmod(file_mode)
    return path


def foreign_keystore(tmp_path: Path, name: str = "foreign.json") -> Path:
    """As another tool would leave it: pbkdf2 (not our scrypt), written world-readable."""
    return write_json(tmp_path / name, Account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1000))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (KEY_HEX, KEY_HEX.upper(), PASSWORD, SPEC_KEY_HEX):
            assert secret not in text


# --- writing ---------------------------------------------------------------------------------------------


def test_new_keystore_is_owner_only_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keystore.json"
    old_umask = os.umask(0)  # the modes must not depend on the operator's umask
    try:
        address = create_keystore(path, PASSWORD, **CHEAP)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    document = json.loads(path.read_text())
    assert document["version"] == 3 and document["crypto"]["kdf"] == "scrypt"
    assert keystore_address(path) == address
    assert load_signer(path, PASSWORD).address == address


def test_given_key_round_trips_and_existing_dir_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "keystore.json"
    assert create_keystore(path, PASSWORD, private_key=KEY, kdf="pbkdf2", iterations=1000) == ADDRESS
    assert mode(tmp_path) == 0o755
    assert keystore_info(path).kdf == "pbkdf2"
    assert load_signer(path, PASSWORD).address == ADDRESS


def test_default_kdf_is_scrypt_with_eth_account_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = Account.encrypt

    def spy(key: bytes, password: str, kdf: str | None = None, iterations: int | None = None) -> dict:
        seen.update(kdf=kdf, iterations=iterations)
        return real(key, password, kdf="scrypt", iterations=16)

    monkeypatch.setattr(Account, "encrypt", spy)
    create_keystore(tmp_path / "k.json", PASSWORD)
    assert seen == {"kdf": "scrypt", "iterations": None}


@pytest.mark.parametrize("early_check", [True, False], ids=["early-check", "exclusive-create"])
def test_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_check: bool) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, PASSWORD, private_key=KEY, **CHEAP)
    before = path.read_bytes()
    if not early_check:  # as if the file appeared between the check and the write
        monkeypatch.setattr(keys, "refuse_existing", lambda _: None)
    with pytest.raises(KeystoreError, match="refusing to overwrite existing .*keystore.json"):
        create_keystore(path, PASSWORD, **CHEAP)
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        import_keystore(foreign_keystore(tmp_path), path, PASSWORD)
    assert path.read_bytes() == before
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")  # a dangling symlink must not be followed either
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        create_keystore(link, PASSWORD, **CHEAP)
    assert not (tmp_path / "elsewhere.json").exists()


def test_rejects_invalid_private_keys() -> None:
    for bad in (b"", b"\x00" * 32, SECP256K1_N.to_bytes(32, "big"), b"\x01" * 31):
        with pytest.raises(KeystoreError):
            create_keystore(Path("/nonexistent/never-written.json"), PASSWORD, private_key=bad)


# --- reading keystores of other tools -----------------------------------------------------------------------


@pytest.mark.parametrize("kdf", ["pbkdf2", "scrypt"])
def test_spec_test_vectors_unlock(tmp_path: Path, kdf: str) -> None:
    path = write_json(tmp_path / f"{kdf}.json", SPEC_VECTORS[kdf], 0o600)
    info = keystore_info(path)
    assert info.kdf == kdf and info.address is None and not info.too_open  # the vectors record no address
    assert load_signer(path, "testpassword").address == SPEC_ADDRESS


def test_foreign_keystore_loads_imports_and_warns_when_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = foreign_keystore(tmp_path)
    info = keystore_info(src)
    assert (info.address, info.kdf, info.mode, info.too_open) == (ADDRESS, "pbkdf2", 0o644, True)
    with caplog.at_level(logging.WARNING, logger="node.chain.keys"):
        assert load_signer(src, PASSWORD).address == ADDRESS
    assert "chmod 600" in caplog.text and str(src) in caplog.text
    dest = tmp_path / "node" / "keystore.json"
    assert import_keystore(src, dest, PASSWORD) == ADDRESS
    assert dest.read_bytes() == src.read_bytes()
    assert mode(dest) == 0o600 and mode(dest.parent) == 0o700


def test_capitalised_crypto_of_old_geth_files(tmp_path: Path) -> None:
    document = Account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1000)
    document["Crypto"] = document.pop("crypto")
    path = write_json(tmp_path / "old.json", document)
    assert keystore_info(path).kdf == "pbkdf2"
    assert load_signer(path, PASSWORD).address == ADDRESS


def test_wrong_password(tmp_path: Path) -> None:
    src = foreign_keystore(tmp_path)
    with pytest.raises(KeystoreError) as exc:
        load_signer(src, "not the password")
    assert str(exc.value) == f"wrong password for {src}"
    assert "not the password" not in str(exc.value)
    dest = tmp_path / "dest.json"
    with pytest.raises(KeystoreError, match="wrong password for"):
        import_keystore(src, dest, "not the password")
    assert not dest.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"version": 1, "crypto": {}}', "version must be 3"),
        ('{"version": 3}', 'no "crypto" object'),
        ('{"version": 3, "crypto": {"cipher": "aes-128-cbc"}}', "cipher must be aes-128-ctr"),
        ('{"version": 3, "crypto": {"cipher": "aes-128-ctr", "kdf": "argon2"}}', "kdf must be one of"),
    ],
)
def test_malformed_keystore_names_file_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KeystoreError, match=problem) as exc:
        keystore_info(path)
    assert str(exc.value).startswith(str(path))
    with pytest.raises(KeystoreError, match="cannot read keystore .*missing.json"):
        keystore_info(tmp_path / "missing.json")


def test_tampered_fields(tmp_path: Path) -> None:
    document = Account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1000)
    path = write_json(tmp_path / "a.json", {**document, "address": "12" * 20})
    with pytest.raises(KeystoreError, match="records address 0x1212.* but holds the key of " + ADDRESS):
        load_signer(path, PASSWORD)
    path = write_json(tmp_path / "b.json", {**document, "address": "zz"})
    with pytest.raises(KeystoreError, match='"address" must be 40 hex digits'):
        keystore_info(path)
    broken = copy.deepcopy(document)
    del broken["crypto"]["kdfparams"]["salt"]
    path = write_json(tmp_path / "c.json", broken)
    with pytest.raises(KeystoreError, match=r"cannot decrypt .*c.json: malformed keystore \(KeyError\)"):
        load_signer(path, PASSWORD)


# --- the signer and secrecy ----------------------------------------------------------------------------------


def test_signer_signs(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSWORD, private_key=KEY, **CHEAP)
    signer = load_signer(path, PASSWORD)
    signed = signer.sign_message(encode_defunct(text="hello"))
    assert Account.recover_message(encode_defunct(text="hello"), signature=signed.signature) == ADDRESS
    tx = {"chainId": 31337, "nonce": 0, "to": "0x" + "11" * 20, "value": 1, "gas": 21000,
          "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 10**9}
    assert Account.recover_transaction(signer.sign_transaction(tx).raw_transaction) == ADDRESS
    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}], "Ping": [{"name": "n", "type": "uint256"}]},
        "primaryType": "Ping", "domain": {"name": "gpunode"}, "message": {"n": 7},
    }
    assert signer.sign_typed_data(full_message=typed).signature == Account.sign_typed_data(
        KEY, full_message=typed).signature


def test_secrets_stay_out_of_repr_logs_errors_and_pickles(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "k.json"
    create_keystore(path, PASSWORD, private_key=KEY, **CHEAP)
    signer = load_signer(path, PASSWORD)
    import_keystore(path, tmp_path / "copy.json", PASSWORD)
    assert repr(signer) == str(signer) == f"Signer({ADDRESS})" and f"{signer}" == f"Signer({ADDRESS})"
    assert not hasattr(signer, "__dict__") and not hasattr(signer, "key")
    for dump in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            dump(signer)
    messages = []
    for call in (lambda: load_signer(path, PASSWORD + "x"),
                 lambda: create_keystore(path, PASSWORD, private_key=KEY),
                 lambda: parse_private_key(KEY_HEX[:-1]),
                 lambda: parse_private_key(KEY_HEX[:-1] + "g"),
                 lambda: parse_private_key(PASSWORD)):
        with pytest.raises(KeystoreError) as exc:
            call()
        messages.append(str(exc.value) + repr(exc.value))
    out, err = capsys.readouterr()
    assert_no_secret(caplog.text, out, err, *messages, *(repr(r.args) for r in caplog.records))


def test_parse_private_key() -> None:
    assert parse_private_key(KEY_HEX) == KEY
    assert parse_private_key(f"  0x{KEY_HEX.upper()}\n") == KEY
    assert parse_private_key((SECP256K1_N - 1).to_bytes(32, "big").hex()) == (SECP256K1_N - 1).to_bytes(32, "big")
    with pytest.raises(KeystoreError, match="64 hex digits"):
        parse_private_key("0x" + KEY_HEX + "00")
    for value in (0, SECP256K1_N, 2**256 - 1):
        with pytest.raises(KeystoreError, match="outside the secp256k1 range"):
            parse_private_key(value.to_bytes(32, "big").hex())


# --- passwords ---------------------------------------------------------------------------------------------


def no_prompt(_: str) -> str:
    raise AssertionError("must not prompt")


def answers(*replies: str):
    queue = list(replies)
    return lambda _: queue.pop(0)


def settings_with(tmp_path: Path, password_file: str | None = None):
    text = "[wallet]\npassword_env = 'MY_NODE_PASSWORD'\n"
    if password_file is not None:
        (tmp_path / "pw.txt").write_text(password_file + "\n")
        text += "password_file = 'pw.txt'\n"
    (tmp_path / "config.toml").write_text(text)
    return load_settings(tmp_path / "config.toml", env={})


def test_password_precedence_env_then_file_then_prompt(tmp_path: Path) -> None:
    s = settings_with(tmp_path, password_file="from-file")
    env = {"MY_NODE_PASSWORD": "from-env", "GPUNODE_WALLET_PASSWORD": "ignored"}
    assert resolve_password(s, confirm=True, env=env, prompt=no_prompt) == "from-env"
    assert resolve_password(s, confirm=True, env={}, prompt=no_prompt) == "from-file"
    s = settings_with(tmp_path)
    tty = {"stdin_isatty": lambda: True}
    assert resolve_password(s, confirm=False, env={"GPUNODE_WALLET_PASSWORD": "x"}, prompt=answers("typed"),
                            **tty) == "typed"
    assert resolve_password(s, confirm=True, env={}, prompt=answers("twice", "twice"), **tty) == "twice"
    with pytest.raises(KeystoreError, match="the passwords do not match") as exc:
        resolve_password(s, confirm=True, env={}, prompt=answers("one", "other"), **tty)
    assert "one" not in str(exc.value) and "other" not in str(exc.value)
    with pytest.raises(KeystoreError, match="refusing an empty keystore password"):
        resolve_password(s, confirm=True, env={}, prompt=answers(""), **tty)
    assert resolve_password(s, confirm=False, env={}, prompt=answers(""), **tty) == ""  # unlocking may need it


def test_no_terminal_and_no_source_says_how_to_supply_it(tmp_path: Path) -> None:
    s = settings_with(tmp_path)
    with pytest.raises(KeystoreError) as exc:
        resolve_password(s, confirm=False, env={}, prompt=no_prompt, stdin_isatty=lambda: False)
    assert "not a terminal" in str(exc.value) and "$MY_NODE_PASSWORD" in str(exc.value)
    assert "wallet.password_file" in str(exc.value)
    with pytest.raises(KeystoreError, match="refusing an empty"):
        resolve_password(s, confirm=True, env={"MY_NODE_PASSWORD": ""}, prompt=no_prompt)


def test_unreadable_password_file(tmp_path: Path) -> None:
    s = settings_with(tmp_path, password_file="x")
    (tmp_path / "pw.txt").unlink()
    with pytest.raises(KeystoreError, match="pw.txt: wallet.password_file: cannot read"):
        resolve_password(s, confirm=False, env={}, prompt=no_prompt)


def test_default_keystore_path(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[node]\ndata_dir = 'data'\n")
    assert default_keystore_path(load_settings(tmp_path / "config.toml", env={})) == tmp_path / "data/keystore.json"
    (tmp_path / "config.toml").write_text("[wallet]\nkeystore = 'k/node.json'\n")
    assert default_keystore_path(load_settings(tmp_path / "config.toml", env={})) == tmp_path / "k/node.json"


def test_signer_from_account_shows_only_address() -> None:
    signer = Signer(Account.from_key(KEY))
    assert repr(signer) == f"Signer({ADDRESS})"
