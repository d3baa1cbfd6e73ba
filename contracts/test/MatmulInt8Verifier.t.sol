// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {MatmulInt8Verifier} from "../src/MatmulInt8Verifier.sol";
import {Int8Generator} from "../src/lib/Int8Generator.sol";
import {MerkleRfc6962} from "../src/lib/MerkleRfc6962.sol";

/// @dev Real results: the tests compute C (or the elements they need) with the generator, lay it out as the
///      node does (int32 little-endian, row-major, 4 KiB chunks) and commit its RFC 6962 root on the market.
contract MatmulInt8VerifierTest is MarketFixture {
    MatmulInt8Verifier internal verifier;
    address internal challenger = address(0xC4A1);
    uint256 internal constant BOND = 10 ether;
    uint256 internal constant PROVIDER_BOND = 100 ether;
    uint256 internal constant PAYMENT = 50 ether;
    uint64 internal constant REVEAL = 1 hours;
    bytes32 internal constant SECRET = keccak256("requester audit secret");

    function setUp() public override {
        super.setUp();
        verifier = new MatmulInt8Verifier(market, BOND, REVEAL, owner);
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(verifier));
        vm.prank(owner);
        token.mint(challenger, 1_000 ether);
        vm.prank(challenger);
        token.approve(address(verifier), type(uint256).max);
    }

    // ---------------------------------------------------------------- helpers

    function seedParams(uint32 m, uint32 k, uint32 n, uint64 seed)
        internal
        pure
        returns (MatmulInt8Verifier.MatmulParams memory)
    {
        return MatmulInt8Verifier.MatmulParams(m, k, n, false, seed, bytes32(0), bytes32(0));
    }

    function noInputs() internal pure returns (MatmulInt8Verifier.SuppliedInputs memory s) {}

    function le32(int256 v) internal pure returns (bytes memory b) {
        uint32 u = uint32(int32(v));
        b = new bytes(4);
        for (uint256 t = 0; t < 4; ++t) {
            b[t] = bytes1(uint8(u >> (8 * t)));
        }
    }

    /// @dev The whole honest output of a small seeded job.
    function honestOutput(MatmulInt8Verifier.MatmulParams memory p) internal pure returns (bytes memory out) {
        for (uint256 i = 0; i < p.m; ++i) {
            for (uint256 j = 0; j < p.n; ++j) {
                out = bytes.concat(out, le32(Int8Generator.seededDot(p.seed, i, j, p.k, p.n)));
            }
        }
    }

    function setElement(bytes memory out, uint256 n, uint256 i, uint256 j, int256 v) internal pure {
        bytes memory b = le32(v);
        uint256 o = 4 * (i * n + j);
        for (uint256 t = 0; t < 4; ++t) {
            out[o + t] = b[t];
        }
    }

    function chunkOf(bytes memory out, uint256 index) internal pure returns (bytes memory c) {
        uint256 start = index * 4096;
        uint256 end = start + 4096 > out.length ? out.length : start + 4096;
        c = new bytes(end - start);
        for (uint256 t = 0; t < c.length; ++t) {
            c[t] = out[start + t];
        }
    }

    /// @dev Root and proof for trees of 1, 2 or 4 leaves (all the tests need).
    function rootAndProof(bytes32[] memory leaves, uint256 index)
        internal
        pure
        returns (bytes32 root, bytes32[] memory proof)
    {
        if (leaves.length == 1) return (leaves[0], new bytes32[](0));
        if (leaves.length == 2) {
            proof = new bytes32[](1);
            proof[0] = leaves[1 - index];
            return (MerkleRfc6962.nodeHash(leaves[0], leaves[1]), proof);
        }
        require(leaves.length == 4, "test helper: 1, 2 or 4 leaves");
        bytes32 left = MerkleRfc6962.nodeHash(leaves[0], leaves[1]);
        bytes32 right = MerkleRfc6962.nodeHash(leaves[2], leaves[3]);
        proof = new bytes32[](2);
        proof[0] = leaves[index ^ 1];
        proof[1] = index < 2 ? right : left;
        root = MerkleRfc6962.nodeHash(left, right);
    }

    function commitOutput(bytes memory out, uint256 index)
        internal
        pure
        returns (bytes32 root, bytes32[] memory proof)
    {
        uint256 chunks = (out.length + 4095) / 4096;
        bytes32[] memory leaves = new bytes32[](chunks);
        for (uint256 c = 0; c < chunks; ++c) {
            leaves[c] = MerkleRfc6962.leafHash(chunkOf(out, c));
        }
        return rootAndProof(leaves, index);
    }

    function submittedJob(MatmulInt8Verifier.MatmulParams memory p, bytes32 root)
        internal
        returns (bytes32 id, JobMarket.JobOffer memory o)
    {
        params = verifier.encodeParams(p);
        (id, o) = postAndClaim(PAYMENT, PROVIDER_BOND);
        vm.prank(provider);
        market.submitResult(id, root, uint64(4) * p.m * p.n, "https://node.example:8600/results/x");
    }

    function challengeAs(
        JobMarket.JobOffer memory o,
        MatmulInt8Verifier.MatmulParams memory p,
        uint256 i,
        uint256 j,
        bytes memory chunk,
        bytes32[] memory proof
    ) internal returns (bool) {
        vm.prank(challenger);
        return verifier.challenge(o, p, i, j, noInputs(), chunk, proof);
    }

    // ---------------------------------------------------------------- generator

    function test_generatorMatchesSharedVectors() public view {
        string memory json = vm.readFile(string.concat(vm.projectRoot(), "/test/vectors/int8_generator.json"));
        uint256[] memory seeds = vm.parseJsonUintArray(json, ".seed");
        uint256[] memory tags = vm.parseJsonUintArray(json, ".tag");
        uint256[] memory rows = vm.parseJsonUintArray(json, ".row");
        uint256[] memory cols = vm.parseJsonUintArray(json, ".col");
        uint256[] memory ncols = vm.parseJsonUintArray(json, ".cols");
        int256[] memory values = vm.parseJsonIntArray(json, ".value");
        assertGe(values.length, 40);
        for (uint256 t = 0; t < values.length; ++t) {
            assertEq(Int8Generator.element(uint64(seeds[t]), tags[t], rows[t], cols[t], ncols[t]), values[t]);
        }
    }

    function testFuzz_seededDotIsTheSumOfGeneratedProducts(uint64 seed, uint8 i, uint8 j, uint8 k8, uint8 n8)
        public
        pure
    {
        uint256 k = uint256(k8) % 40 + 1;
        uint256 n = uint256(n8) + 1;
        uint256 col = uint256(j) % n;
        int256 want;
        for (uint256 t = 0; t < k; ++t) {
            want += Int8Generator.element(seed, 1, i, t, k) * Int8Generator.element(seed, 2, t, col, n);
        }
        assertEq(Int8Generator.seededDot(seed, i, col, k, n), want);
    }

    function testFuzz_bytesDot(bytes32 a, bytes32 b) public view {
        int256 want;
        for (uint256 t = 0; t < 32; ++t) {
            want += int256(int8(uint8(a[t]))) * int256(int8(uint8(b[t])));
        }
        assertEq(this.dotOf(abi.encodePacked(a), abi.encodePacked(b)), want);
    }

    function dotOf(bytes calldata a, bytes calldata b) external pure returns (int256) {
        return Int8Generator.bytesDot(a, b);
    }

    // ---------------------------------------------------------------- params

    function test_encodeParamsIsTheCanonicalJson() public view {
        assertEq(
            string(verifier.encodeParams(seedParams(2, 3, 4, 18446744073709551615))),
            '{"m":2,"k":3,"n":4,"seed":18446744073709551615}'
        );
        MatmulInt8Verifier.MatmulParams memory p =
            MatmulInt8Verifier.MatmulParams(5, 6, 7, true, 0, bytes32(uint256(0xab)), bytes32(uint256(1) << 255));
        assertEq(
            string(verifier.encodeParams(p)),
            string.concat(
                '{"m":5,"k":6,"n":7,"input":"safetensors","ab_root":"0x',
                "00000000000000000000000000000000000000000000000000000000000000ab",
                '","audit":"0x8000000000000000000000000000000000000000000000000000000000000000"}'
            )
        );
    }

    // ---------------------------------------------------------------- challenge

    function test_challengeProvesAWrongElementAndSlashes() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(3, 5, 4, 7);
        bytes memory out = honestOutput(p);
        int256 right = Int8Generator.seededDot(7, 2, 1, 5, 4);
        setElement(out, 4, 2, 1, right + 1);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);

        uint256 before = token.balanceOf(challenger);
        vm.prank(challenger);
        vm.expectEmit(address(verifier));
        emit MatmulInt8Verifier.Challenged(id, challenger, 2, 1, right + 1, right, true);
        assertTrue(verifier.challenge(o, p, 2, 1, noInputs(), out, proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
        assertEq(token.balanceOf(challenger), before, "bond returned");
        assertEq(market.balanceOf(challenger), PROVIDER_BOND / 2);
        assertEq(market.balanceOf(treasury), PROVIDER_BOND - PROVIDER_BOND / 2);
        assertEq(market.balanceOf(requester), PAYMENT);
        assertEq(token.balanceOf(address(verifier)), 0);
    }

    function test_challengeOfARightElementCostsTheBondAndLeavesTheJob() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(3, 5, 4, 7);
        bytes memory out = honestOutput(p);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);
        uint256 due = market.getJob(id).due;

        assertFalse(challengeAs(o, p, 1, 3, out, proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Submitted));
        assertEq(market.getJob(id).due, due, "original window kept");
        assertEq(token.balanceOf(payout), BOND, "bond to the provider's payout address");
        vm.warp(due);
        market.finalize(id);
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Finalized));
    }

    function test_challengeInALaterChunkOfAMultiChunkResult() public {
        // 64 x 64 int32 = 16 KiB = 4 chunks; only the challenged element matters, the rest stays zero.
        // Element (40, 17) sits at byte 4 * (40 * 64 + 17) = 10308: chunk 2.
        MatmulInt8Verifier.MatmulParams memory p = seedParams(64, 16, 64, 99);
        bytes memory out = new bytes(4 * 64 * 64);
        setElement(out, 64, 40, 17, Int8Generator.seededDot(99, 40, 17, 16, 64));
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 2);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);

        assertFalse(challengeAs(o, p, 40, 17, chunkOf(out, 2), proof));
        // a neighbour in the same chunk was committed as 0, which is wrong unless it happens to be 0
        vm.assume(Int8Generator.seededDot(99, 40, 18, 16, 64) != 0);
        assertTrue(challengeAs(o, p, 40, 18, chunkOf(out, 2), proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
    }

    function test_challengeRefusesBadEvidence() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(64, 4, 64, 1);
        bytes memory out = new bytes(4 * 64 * 64);
        for (uint256 t = 0; t < out.length; t += 4096) {
            out[t + 5] = bytes1(uint8(t / 4096 + 1)); // distinct chunks
        }
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 1);
        (, JobMarket.JobOffer memory o) = submittedJob(p, root);
        bytes memory chunk = chunkOf(out, 1);

        vm.startPrank(challenger);
        // chunk 1 proven, but the element (0, 0) lives in chunk 0: the proof does not fit that leaf
        vm.expectRevert(MatmulInt8Verifier.BadResultProof.selector);
        verifier.challenge(o, p, 0, 0, noInputs(), chunk, proof);
        // a changed chunk
        bytes memory forged = chunkOf(out, 1);
        forged[0] = 0x09;
        vm.expectRevert(MatmulInt8Verifier.BadResultProof.selector);
        verifier.challenge(o, p, 16, 0, noInputs(), forged, proof);
        // a short chunk
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.BadChunkLength.selector, 4096, 4));
        verifier.challenge(o, p, 16, 0, noInputs(), hex"00000000", proof);
        // out of range
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.IndexOutOfRange.selector, 64, 0));
        verifier.challenge(o, p, 64, 0, noInputs(), chunk, proof);
        // params that are not the job's
        MatmulInt8Verifier.MatmulParams memory other = seedParams(64, 4, 64, 2);
        vm.expectRevert(
            abi.encodeWithSelector(
                MatmulInt8Verifier.ParamsMismatch.selector, o.paramsHash, keccak256(verifier.encodeParams(other))
            )
        );
        verifier.challenge(o, other, 16, 0, noInputs(), chunk, proof);
        vm.stopPrank();
        // nothing moved
        assertEq(token.balanceOf(address(verifier)), 0);
    }

    function test_challengeOutsideTheWindowIsRefused() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(2, 2, 2, 3);
        bytes memory out = honestOutput(p);
        setElement(out, 2, 0, 0, 12345);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);
        uint64 due = market.getJob(id).due;
        vm.warp(due);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ChallengeWindowClosed.selector, due));
        verifier.challenge(o, p, 0, 0, noInputs(), out, proof);
    }

    function test_wrongWorkloadIsRefused() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(2, 2, 2, 3);
        JobMarket.JobOffer memory o = makeOffer(1 ether, 0);
        o.workload = keccak256("torch-export/v1");
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.WrongWorkload.selector, o.workload));
        verifier.challenge(o, p, 0, 0, noInputs(), hex"", new bytes32[](0));
    }

    // ---------------------------------------------------------------- supplied inputs

    /// @dev A = [[1, -2, 3], [4, 5, -128]], B = [[1, 2], [3, 4], [-5, 127]]; leaves: rows of A, columns of B.
    function suppliedJob()
        internal
        pure
        returns (MatmulInt8Verifier.MatmulParams memory p, MatmulInt8Verifier.SuppliedInputs memory inputs)
    {
        bytes32[] memory leaves = new bytes32[](4);
        leaves[0] = MerkleRfc6962.leafHash(hex"01fe03");
        leaves[1] = MerkleRfc6962.leafHash(hex"040580");
        leaves[2] = MerkleRfc6962.leafHash(hex"0103fb");
        leaves[3] = MerkleRfc6962.leafHash(hex"02047f");
        (bytes32 abRoot, bytes32[] memory rowProof) = rootAndProof(leaves, 1);
        (, bytes32[] memory colProof) = rootAndProof(leaves, 3);
        p = MatmulInt8Verifier.MatmulParams(2, 3, 2, true, 0, abRoot, bytes32(0));
        inputs = MatmulInt8Verifier.SuppliedInputs(hex"040580", rowProof, hex"02047f", colProof);
    }

    function test_suppliedInputsAreProvenAgainstAbRoot() public {
        (MatmulInt8Verifier.MatmulParams memory p, MatmulInt8Verifier.SuppliedInputs memory inputs) = suppliedJob();
        int256 c11 = 4 * 2 + 5 * 4 + (-128) * 127;
        assertEq(verifier.expectedElement(p, 1, 1, inputs), c11);

        bytes memory out = abi.encodePacked(le32(0), le32(0), le32(0), le32(c11 + 7));
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);
        vm.prank(challenger);
        assertTrue(verifier.challenge(o, p, 1, 1, inputs, out, proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
    }

    function test_suppliedInputsThatAreNotTheJobsAreRefused() public {
        (MatmulInt8Verifier.MatmulParams memory p, MatmulInt8Verifier.SuppliedInputs memory inputs) = suppliedJob();
        inputs.row = hex"7f7f7f";
        vm.expectRevert(MatmulInt8Verifier.BadInputProof.selector);
        verifier.expectedElement(p, 1, 1, inputs);
        inputs.row = hex"0405";
        vm.expectRevert(MatmulInt8Verifier.BadInputLength.selector);
        verifier.expectedElement(p, 1, 1, inputs);
    }

    // ---------------------------------------------------------------- reveal demands and audits

    function test_demandAnsweredWithTheRightChunkClearsTheProvider() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(3, 5, 4, 11);
        bytes memory out = honestOutput(p);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);

        vm.prank(challenger);
        vm.expectEmit(address(verifier));
        emit MatmulInt8Verifier.RevealDemanded(id, provider, challenger, 2, 3, 0, uint64(block.timestamp) + REVEAL);
        verifier.demandReveal(o, p, 2, 3, noInputs());
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Challenged));
        assertEq(token.balanceOf(address(verifier)), BOND);

        vm.prank(provider);
        assertFalse(verifier.reveal(o, out, proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Submitted));
        assertEq(token.balanceOf(payout), BOND);
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.NoDemand.selector, id));
        verifier.reveal(o, out, proof);
    }

    function test_demandAnsweredWithAWrongChunkSlashes() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(3, 5, 4, 11);
        bytes memory out = honestOutput(p);
        setElement(out, 4, 0, 2, -1);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);
        vm.assume(Int8Generator.seededDot(11, 0, 2, 5, 4) != -1);
        vm.prank(challenger);
        verifier.demandReveal(o, p, 0, 2, noInputs());
        assertTrue(verifier.reveal(o, out, proof));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
        assertEq(token.balanceOf(challenger), 1_000 ether);
    }

    function test_unansweredDemandSlashesAfterTheDeadlineOnly() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(3, 5, 4, 11);
        bytes memory out = honestOutput(p);
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);
        vm.prank(challenger);
        verifier.demandReveal(o, p, 1, 1, noInputs());
        uint64 deadline = uint64(block.timestamp) + REVEAL;

        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.RevealWindowOpen.selector, deadline));
        verifier.revealTimeout(o);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.RevealWindowClosed.selector, deadline));
        verifier.reveal(o, out, proof);
        verifier.revealTimeout(o);
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
        assertEq(token.balanceOf(challenger), 1_000 ether, "bond back");
        assertEq(market.balanceOf(challenger), PROVIDER_BOND / 2);
        assertEq(token.balanceOf(address(verifier)), 0);
    }

    function test_auditDemandsThePositionDrawnFromTheSecret() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(8, 3, 8, 5);
        p.audit = keccak256(abi.encode(SECRET));
        bytes memory out = honestOutput(p);
        (bytes32 root,) = commitOutput(out, 0);
        (bytes32 id, JobMarket.JobOffer memory o) = submittedJob(p, root);

        vm.startPrank(requester);
        token.approve(address(verifier), type(uint256).max);
        vm.expectRevert(MatmulInt8Verifier.BadAuditSecret.selector);
        verifier.audit(o, p, keccak256("guess"), noInputs());
        (uint256 i, uint256 j) = verifier.audit(o, p, SECRET, noInputs());
        vm.stopPrank();
        uint256 idx = uint256(keccak256(abi.encode(SECRET, root))) % 64;
        assertEq(i, idx / 8);
        assertEq(j, idx % 8);
        (address who,, uint32 di, uint32 dj, int64 expected,,,) = verifier.demands(id);
        assertEq(who, requester);
        assertEq(di, i);
        assertEq(dj, j);
        assertEq(expected, Int8Generator.seededDot(5, i, j, 3, 8));
    }

    function test_auditNeedsACommitment() public {
        MatmulInt8Verifier.MatmulParams memory p = seedParams(2, 2, 2, 5);
        (, JobMarket.JobOffer memory o) = submittedJob(p, keccak256("root"));
        vm.expectRevert(MatmulInt8Verifier.NoAuditCommitment.selector);
        verifier.audit(o, p, SECRET, noInputs());
    }

    // ---------------------------------------------------------------- owner

    function test_ownerSettings() public {
        vm.expectRevert();
        verifier.setChallengeBond(1);
        vm.startPrank(owner);
        verifier.setChallengeBond(1);
        assertEq(verifier.challengeBond(), 1);
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.InvalidRevealWindow.selector, 59));
        verifier.setRevealWindow(59);
        vm.expectRevert(abi.encodeWithSelector(MatmulInt8Verifier.BondTooLarge.selector, uint256(1) << 96));
        verifier.setChallengeBond(uint256(1) << 96);
        vm.stopPrank();
        assertEq(verifier.workload(), WORKLOAD);
    }

    // ---------------------------------------------------------------- gas

    function _gasOfChallenge(uint32 k) internal returns (uint256 used) {
        // 64 x 64 output, 4 chunks; the challenged element sits in chunk 3 (a full-depth proof).
        MatmulInt8Verifier.MatmulParams memory p = seedParams(64, k, 64, 0xDEADBEEF);
        bytes memory out = new bytes(4 * 64 * 64);
        for (uint256 t = 0; t < out.length; ++t) {
            out[t] = bytes1(uint8(t * 7 + 1)); // non-zero bytes, like a real result's calldata
        }
        (bytes32 root, bytes32[] memory proof) = commitOutput(out, 3);
        (, JobMarket.JobOffer memory o) = submittedJob(p, root);
        bytes memory chunk = chunkOf(out, 3);
        vm.prank(challenger);
        uint256 before = gasleft();
        verifier.challenge(o, p, 63, 63, noInputs(), chunk, proof);
        used = before - gasleft();
    }

    function test_gas_challengeK1024() public {
        uint256 used = _gasOfChallenge(1024);
        emit log_named_uint("challenge execution gas, k = 1024", used);
    }

    function test_gas_challengeK4096() public {
        uint256 used = _gasOfChallenge(4096);
        emit log_named_uint("challenge execution gas, k = 4096", used);
    }
}
