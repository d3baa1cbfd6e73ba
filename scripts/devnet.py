"""Starts a local devnet: anvil on a free loopback port, the protocol deployed, funded accounts.

Behind ``make devnet``. Writes deployments/<chainId>.json and keeps anvil running until Ctrl-C.
The printed keys are anvil's public development keys: never send real funds to them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from web3 import Web3

from node.chain.deploy import ProtocolParams, deploy_protocol
from node.chain.deployments import Deployment, default_path, save_deployment
from node.chain.devnet import Anvil, dev_keys
from node.chain.protocol import Protocol

TOKEN = 10**18


def start_devnet(anvil: Anvil, accounts: int, mint_tokens: int, params: ProtocolParams,
                 deployments_dir: Path | None, log=print) -> tuple[Deployment, list[str]]:
    """Deploys into a started anvil and funds the first `accounts` dev accounts with tokens.
    Account 0 deploys and owns the contracts; every funded account gets `mint_tokens` GPU."""
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    keys = dev_keys(max(accounts, 1))
    dep = deploy_protocol(w3, keys[0], params, progress=lambda step, r: log(f"  {step:<32} gas {r['gasUsed']:>9,}"))
    proto = Protocol(w3, dep)
    for key in keys[:accounts]:
        proto.mint(keys[0], proto.account(key).address, mint_tokens * TOKEN)
    if deployments_dir is not None:
        path = default_path(dep.chain_id, deployments_dir)
        save_deployment(dep, path)
        log(f"  wrote {path}")
    return dep, keys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    ap.add_argument("--chain-id", type=int, default=31337)
    ap.add_argument("--accounts", type=int, default=4, help="dev accounts to fund (default 4)")
    ap.add_argument("--mint", type=int, default=1_000_000, help="GPU tokens minted to each account")
    ap.add_argument("--block-time", type=float, default=None, help="seconds per block (default: automine)")
    ap.add_argument("--challenge-window", type=int, default=3600, help="seconds")
    ap.add_argument("--fee-bps", type=int, default=250)
    ap.add_argument("--deployments-dir", type=Path, default=Path("deployments"))
    args = ap.parse_args(argv)
    if not 1 <= args.accounts <= 100:
        ap.error("--accounts must be in 1..100")

    anvil = Anvil(chain_id=args.chain_id, accounts=max(args.accounts, 10), block_time=args.block_time,
                  port=args.port)
    with anvil:
        print(f"anvil running at {anvil.url} (chain id {args.chain_id})")
        params = ProtocolParams(fee_bps=args.fee_bps, challenge_window_s=args.challenge_window)
        dep, keys = start_devnet(anvil, args.accounts, args.mint, params, args.deployments_dir)
        print(f"\n  token     {dep.token}\n  registry  {dep.registry}\n  market    {dep.market}\n")
        for i, key in enumerate(keys[: args.accounts]):
            role = "deployer/owner" if i == 0 else "dev account"
            print(f"  #{i} {Protocol.account(key).address}  key {key}  ({role})")
        print("\nDevnet keys are public; Ctrl-C stops anvil.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        print("stopping anvil")
    return 0


if __name__ == "__main__":
    sys.exit(main())
