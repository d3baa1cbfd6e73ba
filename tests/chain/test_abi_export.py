"""The ABIs shipped in the package must be exactly what the contract sources compile to."""

from __future__ import annotations

import json

from node.chain.contracts import EXPORTED_CONTRACTS, FORGE_OUT, decode_revert, load_abi
from scripts.export_abi import ABI_DIR, main, render_abi


def test_exported_abis_match_forge_build():
    assert (FORGE_OUT / "JobMarket.sol" / "JobMarket.json").exists(), "forge build must run before pytest"
    for name in EXPORTED_CONTRACTS:
        shipped = (ABI_DIR / f"{name}.json").read_text(encoding="utf-8")
        assert shipped == render_abi(name), f"{name}.json drifted from contracts/src: run `make contracts`"


def test_check_mode_detects_drift(tmp_path, monkeypatch):
    import scripts.export_abi as export

    for name in EXPORTED_CONTRACTS:
        (tmp_path / f"{name}.json").write_text((ABI_DIR / f"{name}.json").read_text())
    monkeypatch.setattr(export, "ABI_DIR", tmp_path)
    assert main(["--check"]) == 0
    abi = json.loads((tmp_path / "JobMarket.json").read_text())
    (tmp_path / "JobMarket.json").write_text(json.dumps(abi[:-1], indent=1, sort_keys=True) + "\n")
    assert main(["--check"]) == 1


def test_abis_carry_custom_errors_for_decoding():
    names = {i["name"] for i in load_abi("JobMarket") if i["type"] == "error"}
    assert {"InvalidState", "NonceUsed", "InvalidSignature", "ChallengeWindowOpen"} <= names
    from eth_utils import function_signature_to_4byte_selector as sel

    raw = sel("NonceUsed(address,uint256)") + bytes(12) + b"\x11" * 20 + (5).to_bytes(32, "big")
    assert decode_revert(raw) == "NonceUsed(0x1111111111111111111111111111111111111111, 5)"
    assert decode_revert("0xdeadbeef") == "0xdeadbeef"
