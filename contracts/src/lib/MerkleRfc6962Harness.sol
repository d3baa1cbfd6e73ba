// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleRfc6962} from "./MerkleRfc6962.sol";

/// @dev Exposes MerkleRfc6962 to the Python tests (through anvil), which check that proofs made off-chain
///      verify on-chain. Test-only: never deployed by the protocol.
contract MerkleRfc6962Harness {
    function leafHash(bytes calldata chunk) external pure returns (bytes32) {
        return MerkleRfc6962.leafHash(chunk);
    }

    function nodeHash(bytes32 left, bytes32 right) external pure returns (bytes32) {
        return MerkleRfc6962.nodeHash(left, right);
    }

    function verifyInclusion(bytes32 leaf, uint256 index, uint256 treeSize, bytes32[] calldata proof, bytes32 root)
        external
        pure
        returns (bool)
    {
        return MerkleRfc6962.verifyInclusion(leaf, index, treeSize, proof, root);
    }
}
