"""Deploys the protocol contracts to any RPC URL with a key from an encrypted keystore file.

Refuses a chain that already has a deployments file unless --force, so a second run cannot silently
orphan a live market. Prints every address and the gas each step used.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from eth_account import Account
from web3 import Web3

from node.chain.deploy import DeployError, ProtocolParams, deploy_protocol
from node.chain.deployments import default_path, save_deployment

PASSWORD_ENV = "GPUNODE_WALLET_PASSWORD"


def read_key(keystore: Path, password_file: Path | None) -> bytes:
    """Decrypts the keystore; the password comes from a file, $GPUNODE_WALLET_PASSWORD or a prompt."""
    try:
        encrypted = json.loads(keystore.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read keystore {keystore}: {exc}") from None
    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").rstrip("\n")
    elif PASSWORD_ENV in os.environ:
        password = os.environ[PASSWORD_ENV]
    else:
        password = getpass.getpass(f"password for {keystore}: ")
    try:
        return Account.decrypt(encrypted, password)
    except ValueError:
        raise SystemExit(f"error: wrong password for keystore {keystore}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rpc-url", required=True)
    ap.add_argument("--keystore", type=Path, required=True, help="encrypted JSON keystore of the deployer")
    ap.add_argument("--password-file", type=Path, help=f"else ${PASSWORD_ENV}, else a prompt")
    ap.add_argument("--deployments-dir", type=Path, default=Path("deployments"))
    ap.add_argument("--force", action="store_true", help="overwrite an existing deployments file")
    ap.add_argument("--fee-bps", type=int, default=250, help="protocol fee, basis points (max 1000)")
    ap.add_argument("--challenge-window", type=int, default=3600, help="seconds (60 .. 30 days)")
    ap.add_argument("--unbonding-delay", type=int, default=7 * 24 * 3600, help="seconds")
    ap.add_argument("--treasury", help="fee recipient (default: deployer)")
    ap.add_argument("--arbiter", help="dispute arbiter (default: deployer; replaced by --mediator)")
    ap.add_argument("--mediator", action="append", default=[], metavar="ADDR",
                    help="a mediator of the M-of-N panel that becomes the arbiter (repeat for each)")
    ap.add_argument("--mediator-threshold", type=int, default=0, metavar="M",
                    help="signatures a ruling needs (default: a majority of the mediators)")
    ap.add_argument("--challenge-bond", type=int, default=10 * 10**18,
                    help="matmul-int8 fraud proofs: what a challenger risks, in token base units (default 10 tokens)")
    ap.add_argument("--reveal-window", type=int, default=3600,
                    help="seconds a provider has to answer a reveal demand (60 .. 7 days)")
    ap.add_argument("--owner", help="hand ownership to this address after deploying (it must accept)")
    args = ap.parse_args(argv)

    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    try:
        chain_id = w3.eth.chain_id
    except Exception as exc:  # any transport error: report it plainly
        print(f"error: cannot reach {args.rpc_url}: {exc}", file=sys.stderr)
        return 2
    path = default_path(chain_id, args.deployments_dir)
    if path.exists() and not args.force:
        print(f"error: {path} exists: chain {chain_id} already has a deployment (use --force to replace it)",
              file=sys.stderr)
        return 2
    key = read_key(args.keystore, args.password_file)
    deployer = Account.from_key(key).address
    print(f"deploying to chain {chain_id} from {deployer}")
    params = ProtocolParams(fee_bps=args.fee_bps, challenge_window_s=args.challenge_window,
                            unbonding_delay_s=args.unbonding_delay, treasury=args.treasury,
                            arbiter=args.arbiter, owner=args.owner, challenge_bond=args.challenge_bond,
                            reveal_window_s=args.reveal_window, mediators=tuple(args.mediator),
                            mediator_threshold=args.mediator_threshold)
    total = 0

    def progress(step: str, receipt: dict) -> None:
        nonlocal total
        total += receipt["gasUsed"]
        where = f" at {receipt['contractAddress']}" if receipt.get("contractAddress") else ""
        print(f"  {step:<34} gas {receipt['gasUsed']:>10,}{where}")

    try:
        dep = deploy_protocol(w3, key, params, progress=progress)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_deployment(dep, path)
    print(f"total gas {total:,}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
