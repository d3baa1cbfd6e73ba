// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {MerkleRfc6962} from "../src/lib/MerkleRfc6962.sol";
import {MerkleRfc6962Harness} from "../src/lib/MerkleRfc6962Harness.sol";

/// @dev Test vectors are the RFC 6962 reference tree from Google's certificate-transparency project, as
///      carried on in github.com/transparency-dev/merkle, proof/verify_test.go (`leaves`, `roots`,
///      `inclusionProofs`; that file numbers leaves from 1, here indices start at 0). The negative cases
///      follow that file's `corruptInclusionProof`.
contract MerkleRfc6962Test is Test {
    bytes32 constant EMPTY_ROOT = 0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855;
    bytes32 constant SOME_HASH = 0xabacaba000000000000000000000000000000000000000000060061e00123456;

    bytes[8] leaves;
    bytes32[8] roots;

    function setUp() public {
        leaves[0] = hex"";
        leaves[1] = hex"00";
        leaves[2] = hex"10";
        leaves[3] = hex"2021";
        leaves[4] = hex"3031";
        leaves[5] = hex"40414243";
        leaves[6] = hex"5051525354555657";
        leaves[7] = hex"606162636465666768696a6b6c6d6e6f";
        roots[0] = 0x6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d;
        roots[1] = 0xfac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125;
        roots[2] = 0xaeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77;
        roots[3] = 0xd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7;
        roots[4] = 0x4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4;
        roots[5] = 0x76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef;
        roots[6] = 0xddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c;
        roots[7] = 0x5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328;
    }

    // ---- reference implementation (recursive RFC 6962 MTH / PATH; fine for the small trees here) ----

    function _split(uint256 n) internal pure returns (uint256 k) {
        k = 1;
        while (k << 1 < n) k <<= 1;
    }

    function _mth(bytes32[] memory h, uint256 lo, uint256 hi) internal pure returns (bytes32) {
        if (hi == lo) return EMPTY_ROOT;
        if (hi - lo == 1) return h[lo];
        uint256 k = _split(hi - lo);
        return MerkleRfc6962.nodeHash(_mth(h, lo, lo + k), _mth(h, lo + k, hi));
    }

    function _path(bytes32[] memory h, uint256 m, uint256 lo, uint256 hi) internal pure returns (bytes32[] memory) {
        if (hi - lo <= 1) return new bytes32[](0);
        uint256 k = _split(hi - lo);
        bytes32[] memory sub;
        bytes32 sibling;
        if (m < k) {
            sub = _path(h, m, lo, lo + k);
            sibling = _mth(h, lo + k, hi);
        } else {
            sub = _path(h, m - k, lo + k, hi);
            sibling = _mth(h, lo, lo + k);
        }
        bytes32[] memory out = new bytes32[](sub.length + 1);
        for (uint256 i = 0; i < sub.length; ++i) {
            out[i] = sub[i];
        }
        out[sub.length] = sibling;
        return out;
    }

    function _leafHashes(uint256 n) internal view returns (bytes32[] memory h) {
        h = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            h[i] = MerkleRfc6962.leafHash(leaves[i]);
        }
    }

    function _proof3(bytes32 a, bytes32 b, bytes32 c) internal pure returns (bytes32[] memory p) {
        p = new bytes32[](3);
        (p[0], p[1], p[2]) = (a, b, c);
    }

    function _with(bytes32[] memory p, uint256 at, bytes32 extra) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length + 1);
        for (uint256 i = 0; i < q.length; ++i) {
            q[i] = i < at ? p[i] : i == at ? extra : p[i - 1];
        }
    }

    function _verify(bytes32 leaf, uint256 index, uint256 size, bytes32[] memory proof, bytes32 root)
        internal
        pure
        returns (bool)
    {
        return MerkleRfc6962.verifyInclusion(leaf, index, size, proof, root);
    }

    /// @dev The known-good proof verifies, and every corruption of it from transparency-dev's suite fails.
    function _checkVector(uint256 index, uint256 size, bytes32[] memory proof) internal view {
        bytes32 leaf = MerkleRfc6962.leafHash(leaves[index]);
        bytes32 root = roots[size - 1];
        assertTrue(_verify(leaf, index, size, proof, root), "reference proof");
        unchecked {
            assertFalse(_verify(leaf, index - 1, size, proof, root), "index - 1");
        }
        assertFalse(_verify(leaf, index + 1, size, proof, root), "index + 1");
        assertFalse(_verify(leaf, index ^ 2, size, proof, root), "index ^ 2");
        assertFalse(_verify(leaf, index, size * 2, proof, root), "size * 2");
        assertFalse(_verify(leaf, index, size / 2, proof, root), "size / 2");
        assertFalse(_verify(keccak256("WrongLeaf"), index, size, proof, root), "wrong leaf");
        assertFalse(_verify(leaf, index, size, proof, EMPTY_ROOT), "empty root");
        assertFalse(_verify(leaf, index, size, proof, SOME_HASH), "random root");
        assertFalse(_verify(leaf, index, size, _with(proof, proof.length, bytes32(0)), root), "trailing zero");
        assertFalse(_verify(leaf, index, size, _with(proof, proof.length, root), root), "trailing root");
        assertFalse(_verify(leaf, index, size, _with(proof, 0, bytes32(0)), root), "preceding zero");
        assertFalse(_verify(leaf, index, size, _with(proof, 0, root), root), "preceding root");
        for (uint256 i = 0; i < proof.length; ++i) {
            bytes32 saved = proof[i];
            proof[i] = saved ^ bytes32(uint256(8) << 248);
            assertFalse(_verify(leaf, index, size, proof, root), "flipped bit in proof");
            proof[i] = saved;
        }
        if (proof.length > 0) {
            bytes32[] memory shorter = new bytes32[](proof.length - 1);
            for (uint256 i = 0; i < shorter.length; ++i) {
                shorter[i] = proof[i];
            }
            assertFalse(_verify(leaf, index, size, shorter, root), "removed component");
        }
        if (proof.length > 1) {
            assertFalse(_verify(leaf, index, size, _with(proof, 1, SOME_HASH), root), "inserted component");
        }
        assertTrue(_verify(leaf, index, size, proof, root), "proof restored");
    }

    // ---- tests ----

    function test_hashesMatchRfcDefinition() public pure {
        assertEq(MerkleRfc6962.leafHash(""), sha256(hex"00"), "leaf hash of empty data");
        assertEq(MerkleRfc6962.leafHash(""), 0x6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d, "v");
        assertEq(
            MerkleRfc6962.nodeHash(bytes32(uint256(1)), bytes32(uint256(2))),
            sha256(abi.encodePacked(uint8(1), uint256(1), uint256(2))),
            "node hash is H(0x01 || l || r)"
        );
    }

    function test_rootsMatchReferenceTree() public view {
        bytes32[] memory h = _leafHashes(8);
        assertEq(_mth(h, 0, 0), EMPTY_ROOT, "empty tree");
        for (uint256 n = 1; n <= 8; ++n) {
            assertEq(_mth(h, 0, n), roots[n - 1], "root of the first n reference leaves");
        }
    }

    function test_referenceInclusionProofs() public view {
        _checkVector(
            0,
            8,
            _proof3(
                0x96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7,
                0x5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,
                0x6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4
            )
        );
        _checkVector(
            5,
            8,
            _proof3(
                0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b,
                0xca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0,
                0xd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7
            )
        );
        bytes32[] memory p = new bytes32[](1);
        p[0] = 0xfac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125;
        _checkVector(2, 3, p);
        _checkVector(
            1,
            5,
            _proof3(
                0x6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d,
                0x5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,
                0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b
            )
        );
        _checkVector(0, 1, new bytes32[](0));
    }

    function test_referencePathsMatchOurPathBuilder() public view {
        bytes32[] memory h = _leafHashes(8);
        bytes32[] memory p = _path(h, 5, 0, 8);
        assertEq(p.length, 3, "path length");
        assertEq(p[0], 0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b, "p0");
        assertEq(p[2], roots[3], "top sibling is the root of the left half");
    }

    function test_degenerateInputsAreRejected() public pure {
        bytes32[] memory none = new bytes32[](0);
        bytes32 x = SOME_HASH;
        assertTrue(_verify(x, 0, 1, none, x), "single leaf: root is the leaf hash, proof empty");
        assertFalse(_verify(x, 0, 0, none, x), "empty tree has no leaves");
        assertFalse(_verify(x, 0, 0, none, EMPTY_ROOT), "not even against the empty root");
        assertFalse(_verify(x, 1, 1, none, x), "index == size");
        assertFalse(_verify(x, 2, 1, none, x), "index > size");
        assertFalse(_verify(x, type(uint256).max, type(uint256).max, none, x), "huge index, empty proof");
        assertFalse(_verify(x, 0, 2, none, x), "proof too short");
        bytes32[] memory one = new bytes32[](1);
        one[0] = x;
        assertFalse(_verify(x, 0, 1, one, MerkleRfc6962.nodeHash(x, x)), "proof too long");
    }

    /// @dev An inclusion proof authenticates the leaf's position, not the tree size: wherever two sizes
    ///      give the leaf the same path shape, one proof serves both. So whoever stores a root must store
    ///      the size (the chunk count) beside it and pass that, never a size the prover supplies.
    function test_proofDoesNotBindTreeSize() public view {
        bytes32[] memory h = _leafHashes(5);
        bytes32[] memory p = _path(h, 0, 0, 5);
        bytes32 root = roots[4];
        for (uint256 s = 6; s <= 8; ++s) {
            assertTrue(_verify(h[0], 0, s, p, root), "same shape for leaf 0 in sizes 5..8");
        }
        assertFalse(_verify(h[0], 0, 4, p, root), "size 4: one level fewer");
        assertFalse(_verify(h[0], 0, 9, p, root), "size 9: one level more");
    }

    function test_longProofIsRejectedCheaply() public view {
        bytes32[] memory junk = new bytes32[](1000);
        uint256 before = gasleft();
        assertFalse(_verify(SOME_HASH, 0, type(uint256).max, junk, SOME_HASH), "1000-element proof");
        assertLe(before - gasleft(), 2_000_000, "bounded by the 256 levels a uint256 index allows");
    }

    function test_harnessMatchesLibrary() public {
        MerkleRfc6962Harness harness = new MerkleRfc6962Harness();
        bytes memory chunk = new bytes(4096);
        for (uint256 i = 0; i < chunk.length; ++i) {
            chunk[i] = bytes1(uint8(i * 7));
        }
        assertEq(harness.leafHash(chunk), sha256(bytes.concat(hex"00", chunk)), "leaf hash of a full chunk");
        bytes32[] memory h = _leafHashes(8);
        assertTrue(harness.verifyInclusion(h[6], 6, 7, _path(h, 6, 0, 7), roots[6]), "harness verifies");
        assertFalse(harness.verifyInclusion(h[6], 5, 7, _path(h, 6, 0, 7), roots[6]), "harness rejects");
    }

    /// @dev Random small trees: every leaf's path verifies; the same path fails for a neighbour's leaf,
    ///      at a neighbouring index, in a tree twice the size, or with one bit of it flipped.
    function testFuzz_everyPathOfARandomTreeVerifies(bytes32 seed, uint8 n) public pure {
        uint256 size = bound(n, 1, 40);
        bytes32[] memory h = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            h[i] = keccak256(abi.encode(seed, i));
        }
        bytes32 root = _mth(h, 0, size);
        for (uint256 i = 0; i < size; ++i) {
            bytes32[] memory p = _path(h, i, 0, size);
            assertTrue(_verify(h[i], i, size, p, root), "path verifies");
            assertFalse(_verify(h[i], i, size * 2, p, root), "doubled size (always one level deeper)");
            if (size > 1) {
                uint256 j = (i + 1) % size;
                assertFalse(_verify(h[j], i, size, p, root), "wrong leaf");
                assertFalse(_verify(h[i], j, size, p, root), "wrong index");
                uint256 k = uint256(seed) % p.length;
                p[k] ^= bytes32(uint256(1) << (uint256(seed) % 256));
                assertFalse(_verify(h[i], i, size, p, root), "flipped bit");
            }
        }
    }
}
