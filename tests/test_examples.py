"""The network profiles in examples/ load as real configurations, for the chain their name promises, with the
settings a public network needs (and the confirmations the smoke test recommends for it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load_settings, raw_defaults
from scripts.smoke_testnet import NETWORKS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHAIN_IDS = {"sepolia": 11155111, "base-sepolia": 84532}


def test_every_profile_is_known():
    assert sorted(p.stem for p in EXAMPLES.glob("*.toml")) == sorted(CHAIN_IDS)


@pytest.mark.parametrize("name", sorted(CHAIN_IDS))
def test_profile_loads_for_its_chain(name):
    path = EXAMPLES / f"{name}.toml"
    settings = load_settings(path, env={})  # the environment of the test run must not leak in
    chain_id = CHAIN_IDS[name]
    assert settings.chain.chain_id == chain_id
    assert settings.chain.deployments == EXAMPLES / "deployments" / f"{chain_id}.json"
    assert all(url.startswith("https://") for url in settings.chain.rpc_urls)
    assert settings.chain.confirmations == NETWORKS[chain_id].confirmations >= 2
    assert settings.chain.priority_fee_gwei <= settings.chain.max_fee_gwei
    assert not settings.policy.allow_private_inputs and not settings.policy.allow_file_inputs
    assert name in str(settings.node.data_dir)  # one data dir per network: journals are per chain
    # A full profile: every section of the configuration is there, so nothing is left to a devnet default.
    text = path.read_text()
    assert all(f"[{section}]" in text for section in raw_defaults())
