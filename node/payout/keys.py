"""Which key sends the payout transactions, and whose jobs they settle.

``finalizeMany`` and ``withdrawFor`` are open to anyone, so the operator key (which controls the stake) need
not be online for them: a separate hot payout key (payout.keystore) sends them, and when that key is itself
the registered payout address it can also sweep the earnings on to a cold address. Without a payout
keystore the operator key settles and withdraws, and nothing is swept: the operator can never be its own
payout address, so it never holds the earnings.

A dry run only needs addresses, which keystores record in the clear, so it asks for no password.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from node.chain.keys import Signer, default_keystore_path, keystore_address, load_signer, password_or_prompt
from node.chain.provider import OperatorError, operator_signer
from node.config import Settings


@dataclass(frozen=True)
class PayoutKeys:
    provider: str  # the operator whose submitted jobs are settled
    sender: str  # the address that sends (and pays gas for) every payout transaction
    hot: bool  # the sender is the dedicated payout key, not the operator key
    signer: Signer | None  # None in a dry run: nothing is signed


def provider_address(settings: Settings, override: str | None) -> str:
    """--provider, else the address recorded in the node's keystore (read without its password)."""
    if override:
        return Web3.to_checksum_address(override)
    path = default_keystore_path(settings)
    if not path.exists():
        raise OperatorError(f"no operator keystore at {path} to take the provider address from; pass --provider ADDR "
                            "or set wallet.keystore")
    address = keystore_address(path)
    if address is None:
        raise OperatorError(f"{path} does not record its address; pass --provider ADDR")
    return address


def read_payout_password(settings: Settings) -> str:
    """$<payout.password_env>, else payout.password_file, else a prompt when a human is at a terminal."""
    return password_or_prompt(settings.payout.password_env, settings.payout.password_file, "payout.password_file",
                              what="payout keystore password",
                              hint=f"set ${settings.payout.password_env} or payout.password_file (a timer or cron "
                                   "has no terminal to ask on)")


def _address_of(path: Path, settings: Settings, unlock: bool) -> tuple[str, Signer | None]:
    if not path.exists():
        raise OperatorError(f"no payout keystore at {path} (payout.keystore)")
    if not unlock:
        address = keystore_address(path)
        if address is not None:
            return address, None
    signer = load_signer(path, read_payout_password(settings))
    return signer.address, signer if unlock else None


def payout_keys(settings: Settings, *, provider: str | None, unlock: bool) -> PayoutKeys:
    """The provider and the sending key; `unlock` False (a dry run) avoids passwords where it can."""
    operator = provider_address(settings, provider)
    if settings.payout.keystore is not None:
        sender, signer = _address_of(settings.payout.keystore, settings, unlock)
        return PayoutKeys(operator, sender, True, signer)
    if unlock:
        signer = operator_signer(settings)
        return PayoutKeys(operator, signer.address, False, signer)
    path = default_keystore_path(settings)
    address = keystore_address(path) if path.exists() else None
    if address is None:
        raise OperatorError(f"no readable operator keystore at {path} to send with; set payout.keystore")
    return PayoutKeys(operator, address, False, None)
