// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title RFC 6962 Merkle tree hashing and inclusion proofs
/// @notice Checks a chunk of a committed result against the root a provider posted. The off-chain side
///         (node/compute/commitment.py) builds the same trees: SHA-256, leaf = H(0x00 || chunk),
///         node = H(0x01 || left || right), split at the largest power of two below the size. Keeping
///         RFC 6962 unchanged means any Certificate Transparency verifier agrees with this one.
library MerkleRfc6962 {
    /// @notice RFC 6962 leaf hash of a chunk; the 0x00 prefix keeps a leaf from passing as a node.
    function leafHash(bytes memory chunk) internal pure returns (bytes32) {
        return sha256(bytes.concat(bytes1(0x00), chunk));
    }

    /// @notice RFC 6962 interior node hash.
    function nodeHash(bytes32 left, bytes32 right) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x01), left, right));
    }

    /// @notice RFC 9162 §2.1.3.2: whether `proof` shows the leaf with hash `leaf` at `index` in the tree
    ///         of `treeSize` leaves whose root is `root`. Anything malformed (index past the end, a proof
    ///         too short or too long for the tree) is simply false, never a revert, so a caller may feed
    ///         it untrusted input. Gas is bounded by the proof length, which can usefully be at most 256.
    function verifyInclusion(bytes32 leaf, uint256 index, uint256 treeSize, bytes32[] memory proof, bytes32 root)
        internal
        pure
        returns (bool)
    {
        if (index >= treeSize) return false;
        uint256 fn = index;
        uint256 sn = treeSize - 1;
        bytes32 r = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false;
            if (fn & 1 == 1 || fn == sn) {
                r = nodeHash(proof[i], r);
                // At the right edge of a ragged tree the path skips levels with no right sibling.
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = nodeHash(r, proof[i]);
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }
}
