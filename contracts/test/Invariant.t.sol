// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {Test} from "./utils/Test.sol";
import {GpuToken} from "../src/GpuToken.sol";
import {JobMarket} from "../src/JobMarket.sol";

/// @dev Drives the market through random sequences of every state-changing action, including ones that
///      must fail (finalizing twice, expiring early), and keeps ghost books of what should have happened.
contract MarketHandler is Test {
    JobMarket public market;
    GpuToken public token;
    uint256 internal requesterKey;
    address public requester;
    address public provider;
    address public payout;
    address public treasury;
    address public arbiter;
    bytes internal params = hex"01";

    bytes32[] public jobs;
    mapping(bytes32 => uint256) public timesPaid;
    uint256 public ghostNetPaid; // what the payout address should have been credited
    uint256 public withdrawnByPayout;
    uint256 internal nonce = 1_000;

    constructor(JobMarket m, GpuToken t, uint256 key, address prov, address pay, address tre, address arb) {
        market = m;
        token = t;
        requesterKey = key;
        requester = vm.addr(key);
        provider = prov;
        payout = pay;
        treasury = tre;
        arbiter = arb;
    }

    function jobCount() external view returns (uint256) {
        return jobs.length;
    }

    function _job(uint256 seed) internal view returns (bytes32) {
        return jobs.length == 0 ? bytes32(0) : jobs[seed % jobs.length];
    }

    function post(uint256 payment, uint256 bond, uint64 duration, bool addressed) external {
        payment = bound(payment, 1, 1_000 ether);
        bond = bound(bond, 0, 50 ether);
        JobMarket.JobOffer memory o = JobMarket.JobOffer({
            requester: requester,
            provider: addressed ? provider : address(0),
            workload: keccak256("matmul-int8/v1"),
            paramsHash: keccak256(params),
            inputHash: bytes32(0),
            inputURI: "",
            payment: payment,
            providerBond: bond,
            maxDuration: uint64(bound(duration, 1, 2 days)),
            expiry: uint64(block.timestamp + 1 days),
            nonce: nonce++
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(requesterKey, market.hashOffer(o));
        jobs.push(market.postOffer(o, params, abi.encodePacked(r, s, v)));
    }

    function claim(uint256 seed) external {
        vm.prank(provider);
        try market.claim(_job(seed)) {} catch {}
    }

    function submit(uint256 seed) external {
        vm.prank(provider);
        try market.submitResult(_job(seed), keccak256(abi.encode(seed)), 4096, "") {} catch {}
    }

    function finalize(uint256 seed) external {
        bytes32 id = _job(seed);
        try market.finalize(id) {
            _paid(id, 0);
        } catch {}
    }

    function finalizeMany(uint256 a, uint256 b) external {
        bytes32[] memory ids = new bytes32[](3);
        ids[0] = _job(a);
        ids[1] = _job(b);
        ids[2] = _job(a); // a duplicate in the batch must not pay twice
        bool[3] memory wasFinal;
        for (uint256 i = 0; i < 3; ++i) {
            wasFinal[i] = market.getJob(ids[i]).state == JobMarket.JobState.Finalized;
        }
        market.finalizeMany(ids);
        for (uint256 i = 0; i < 2; ++i) {
            if (i == 1 && ids[1] == ids[0]) continue;
            if (!wasFinal[i] && market.getJob(ids[i]).state == JobMarket.JobState.Finalized) _paid(ids[i], 0);
        }
    }

    function accept(uint256 seed) external {
        bytes32 id = _job(seed);
        vm.prank(requester);
        try market.accept(id) {
            _paid(id, 0);
        } catch {}
    }

    function cancel(uint256 seed) external {
        vm.prank(requester);
        try market.cancelOffer(_job(seed)) {} catch {}
    }

    function expire(uint256 seed) external {
        try market.expire(_job(seed)) {} catch {}
    }

    function dispute(uint256 seed) external {
        vm.prank(requester);
        try market.dispute(_job(seed)) {} catch {}
    }

    function resolve(uint256 seed, bool providerWasRight) external {
        bytes32 id = _job(seed);
        uint256 bond = market.disputeBondOf(id);
        vm.prank(arbiter);
        try market.resolve(id, providerWasRight) {
            if (providerWasRight) _paid(id, bond);
        } catch {}
    }

    function withdraw(uint256 who) external {
        address[3] memory actors = [requester, payout, treasury];
        address a = actors[who % 3];
        uint256 amount = market.balanceOf(a);
        vm.prank(a);
        try market.withdraw() {
            if (a == payout) withdrawnByPayout += amount;
        } catch {}
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 1, 3 days));
    }

    /// @dev Books what the payout address should have received: the job's payment less the fee
    ///      snapshot, plus any extra (the requester's dispute bond when the provider was right).
    function _paid(bytes32 id, uint256 extra) internal {
        JobMarket.Job memory j = market.getJob(id);
        timesPaid[id] += 1;
        ghostNetPaid += j.payment - uint256(j.payment) * j.feeBps / 10_000 + extra;
    }
}

contract MarketInvariantTest is MarketFixture {
    MarketHandler handler;

    function setUp() public override {
        super.setUp();
        vm.prank(owner);
        market.setDisputeBond(1 ether);
        handler = new MarketHandler(market, token, requesterKey, provider, payout, treasury, arbiter);
        vm.prank(requester);
        token.approve(address(market), type(uint256).max);
        targetContract(address(handler));
    }

    /// Every token the market holds is owed to someone: escrow of live jobs, dispute bonds, or balances
    /// (which include unpaid fees, credited to the treasury).
    function invariant_marketBalanceIsFullyAccounted() public view {
        uint256 owed = market.balanceOf(requester) + market.balanceOf(payout) + market.balanceOf(treasury);
        uint256 n = handler.jobCount();
        for (uint256 i = 0; i < n; ++i) {
            bytes32 id = handler.jobs(i);
            JobMarket.Job memory j = market.getJob(id);
            if (
                j.state == JobMarket.JobState.Open || j.state == JobMarket.JobState.Claimed
                    || j.state == JobMarket.JobState.Submitted || j.state == JobMarket.JobState.Disputed
            ) owed += j.payment;
            if (j.state == JobMarket.JobState.Disputed) owed += market.disputeBondOf(id);
        }
        assertEq(token.balanceOf(address(market)), owed, "market balance == escrow + withdrawable");
    }

    function invariant_noJobIsPaidTwice() public view {
        uint256 n = handler.jobCount();
        for (uint256 i = 0; i < n; ++i) {
            assertLe(handler.timesPaid(handler.jobs(i)), 1, "a job was paid twice");
        }
        assertEq(
            market.balanceOf(payout) + handler.withdrawnByPayout(),
            handler.ghostNetPaid(),
            "payout address received exactly the net payments of finished jobs (plus dispute bonds)"
        );
    }

    /// Locked stake always equals the bonds of jobs that are still at risk.
    function invariant_lockedStakeMatchesLiveBonds() public view {
        uint256 live;
        uint256 n = handler.jobCount();
        for (uint256 i = 0; i < n; ++i) {
            JobMarket.Job memory j = market.getJob(handler.jobs(i));
            if (
                j.state == JobMarket.JobState.Claimed || j.state == JobMarket.JobState.Submitted
                    || j.state == JobMarket.JobState.Disputed
            ) live += j.providerBond;
        }
        assertEq(registry.getProvider(provider).locked, live, "locked == live bonds");
    }
}
