from __future__ import annotations

import json

import pytest

from node.chain.deployments import Deployment, DeploymentError, load_deployment, save_deployment

GOOD = {"chain_id": 31337, "token": "0x" + "aa" * 20, "registry": "0x" + "bb" * 20,
        "market": "0x" + "cc" * 20, "deploy_block": 3}


def test_round_trip(tmp_path):
    dep = Deployment(**GOOD)
    path = tmp_path / "d" / "31337.json"
    save_deployment(dep, path)
    loaded = load_deployment(path, expected_chain_id=31337)
    assert loaded.market.lower() == GOOD["market"] and loaded.deploy_block == 3
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


@pytest.mark.parametrize("patch,needle", [
    ({"market": "0x1234"}, "market"),
    ({"chain_id": -1}, "chain_id"),
    ({"deploy_block": True}, "deploy_block"),
    ({"extra": 1}, "unknown keys"),
])
def test_malformed_files_name_the_key(tmp_path, patch, needle):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({**GOOD, **patch}))
    with pytest.raises(DeploymentError, match=needle):
        load_deployment(path)


def test_wrong_chain_and_missing_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(DeploymentError, match="chain 31337, but chain 1 was expected"):
        load_deployment(path, expected_chain_id=1)
    with pytest.raises(DeploymentError, match="not found"):
        load_deployment(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeploymentError, match="unreadable"):
        load_deployment(tmp_path / "bad.json")
