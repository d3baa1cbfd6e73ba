// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {Test} from "./utils/Test.sol";
import {GpuToken} from "../src/GpuToken.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {MatmulInt8Verifier} from "../src/MatmulInt8Verifier.sol";
import {Int8Generator} from "../src/lib/Int8Generator.sol";
import {MerkleRfc6962} from "../src/lib/MerkleRfc6962.sol";

/// @dev Random sequences of challenges, reveal demands, reveals, timeouts, bond changes and time on real
///      1 x 2 x 2 seeded jobs (one 8-byte chunk each), some with a wrong element. The handler is the challenger.
contract VerifierHandler is Test {
    JobMarket public market;
    GpuToken public token;
    MatmulInt8Verifier public verifier;
    uint256 internal requesterKey;
    address public provider;
    address public owner;

    JobMarket.JobOffer[] internal offers;
    MatmulInt8Verifier.MatmulParams[] internal ps;
    bytes[] internal outputs;
    bytes32[] public jobs;
    mapping(bytes32 => bool) public honest;
    mapping(bytes32 => bool) public timedOut;
    uint256 internal nonce = 5_000;

    constructor(MatmulInt8Verifier v, uint256 key, address prov, address own) {
        verifier = v;
        market = v.market();
        token = GpuToken(address(v.token()));
        requesterKey = key;
        provider = prov;
        owner = own;
    }

    function jobCount() external view returns (uint256) {
        return jobs.length;
    }

    function newJob(uint64 seed, bool correct) external {
        if (jobs.length >= 8) return;
        MatmulInt8Verifier.MatmulParams memory p =
            MatmulInt8Verifier.MatmulParams(1, 2, 2, false, seed, bytes32(0), bytes32(0));
        bytes memory params = verifier.encodeParams(p);
        JobMarket.JobOffer memory o = JobMarket.JobOffer({
            requester: vm.addr(requesterKey),
            provider: address(0),
            workload: keccak256("matmul-int8/v1"),
            paramsHash: keccak256(params),
            inputHash: bytes32(0),
            inputURI: "",
            payment: 10 ether,
            providerBond: 20 ether,
            maxDuration: 1 hours,
            expiry: uint64(block.timestamp + 1 days),
            nonce: nonce++
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(requesterKey, market.hashOffer(o));
        bytes32 id = market.postOffer(o, params, abi.encodePacked(r, s, v));
        int256 c1 = Int8Generator.seededDot(seed, 0, 1, 2, 2) + (correct ? int256(0) : int256(1));
        bytes memory out = abi.encodePacked(_le32(Int8Generator.seededDot(seed, 0, 0, 2, 2)), _le32(c1));
        vm.startPrank(provider);
        market.claim(id);
        market.submitResult(id, MerkleRfc6962.leafHash(out), 8, "");
        vm.stopPrank();
        jobs.push(id);
        offers.push(o);
        ps.push(p);
        outputs.push(out);
        honest[id] = correct;
    }

    function challenge(uint256 which, uint256 j) external {
        if (jobs.length == 0) return;
        uint256 x = which % jobs.length;
        try verifier.challenge(offers[x], ps[x], 0, j % 2, _none(), outputs[x], new bytes32[](0)) {} catch {}
    }

    function demand(uint256 which, uint256 j) external {
        if (jobs.length == 0) return;
        uint256 x = which % jobs.length;
        try verifier.demandReveal(offers[x], ps[x], 0, j % 2, _none()) {} catch {}
    }

    function reveal(uint256 which) external {
        if (jobs.length == 0) return;
        uint256 x = which % jobs.length;
        vm.prank(provider);
        try verifier.reveal(offers[x], outputs[x], new bytes32[](0)) {} catch {}
    }

    function revealTimeout(uint256 which) external {
        if (jobs.length == 0) return;
        uint256 x = which % jobs.length;
        try verifier.revealTimeout(offers[x]) {
            timedOut[jobs[x]] = true;
        } catch {}
    }

    function setBond(uint256 bond) external {
        vm.prank(owner);
        verifier.setChallengeBond(bound(bond, 0, 50 ether));
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 1, 2 hours));
    }

    function _none() internal pure returns (MatmulInt8Verifier.SuppliedInputs memory s) {}

    function _le32(int256 v) internal pure returns (bytes4) {
        uint32 u = uint32(int32(v));
        return bytes4(uint32((u & 0xff) << 24 | (u & 0xff00) << 8 | (u & 0xff0000) >> 8 | u >> 24));
    }
}

contract VerifierInvariantTest is MarketFixture {
    VerifierHandler internal handler;
    MatmulInt8Verifier internal verifier;

    function setUp() public override {
        super.setUp();
        verifier = new MatmulInt8Verifier(market, 5 ether, 1 hours, owner);
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(verifier));
        handler = new VerifierHandler(verifier, requesterKey, provider, owner);
        vm.prank(owner);
        token.mint(address(handler), 1_000_000 ether);
        vm.prank(address(handler));
        token.approve(address(verifier), type(uint256).max);
        targetContract(address(handler));
    }

    /// The verifier holds exactly the bonds of open reveal demands, and a job is frozen exactly while one is open.
    function invariant_verifierHoldsExactlyTheOpenDemandBonds() public view {
        uint256 held;
        uint256 n = handler.jobCount();
        for (uint256 x = 0; x < n; ++x) {
            bytes32 id = handler.jobs(x);
            (address challenger,,,,, uint96 bond,,) = verifier.demands(id);
            bool open = challenger != address(0);
            if (open) held += bond;
            assertEq(market.getJob(id).state == JobMarket.JobState.Challenged, open, "Challenged iff a demand is open");
        }
        assertEq(token.balanceOf(address(verifier)), held, "verifier balance == open demand bonds");
    }

    /// The handler's jobs and proofs are real: a demand on a wrong element is answered into a slash, a right one
    /// clears the job, an unanswered one times out (so the invariants above are not vacuous).
    function test_handlerActionsTakeEffect() public {
        handler.newJob(1, false);
        handler.newJob(2, true);
        handler.demand(0, 1);
        handler.demand(1, 0);
        assertEq(token.balanceOf(address(verifier)), 10 ether, "two demand bonds held");
        handler.reveal(0);
        assertTrue(market.getJob(handler.jobs(0)).state == JobMarket.JobState.Slashed, "wrong element slashed");
        handler.warp(2 hours);
        handler.revealTimeout(1);
        assertTrue(handler.timedOut(handler.jobs(1)), "timed out");
        handler.newJob(3, true);
        handler.challenge(2, 1);
        assertTrue(market.getJob(handler.jobs(2)).state == JobMarket.JobState.Submitted, "honest job survives");
        assertEq(token.balanceOf(payout), 5 ether, "failed challenge paid the provider");
        assertEq(token.balanceOf(address(verifier)), 0, "nothing left in the verifier");
    }

    /// An honest result is slashed only when a reveal demand went unanswered.
    function invariant_honestResultsAreOnlySlashedByTimeouts() public view {
        uint256 n = handler.jobCount();
        for (uint256 x = 0; x < n; ++x) {
            bytes32 id = handler.jobs(x);
            if (handler.honest(id) && market.getJob(id).state == JobMarket.JobState.Slashed) {
                assertTrue(handler.timedOut(id), "honest result slashed without a timeout");
            }
        }
    }
}
